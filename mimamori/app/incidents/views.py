"""The alert pages as watchers see them: detail with the team timeline in words, and the big
"I'll go" / "All fine" / "Needs help" actions. The JSON API of the same actions is the alert engine's
(``alerts.views``, ``/api/alerts``): one API per action.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.db import ClockDep, Conn
from mimamori.app.incidents import service
from mimamori.app.templating import render
from mimamori.kernel.errors import Conflict

#: Marking in-app notifications read sits beside the engine's own list (``/api/alerts/notifications``)
#: and the app's stream of them (``app.live.views``).
notifications = APIRouter(prefix="/api/alerts/notifications", tags=["alerts"])
pages = APIRouter(include_in_schema=False)
ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 409: {}}
IncidentId = Annotated[int, Field(ge=1, le=2**62)]



class ReadIn(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=2**62)]] | None = Field(default=None, max_length=1000)


@notifications.post("/read", responses={401: {}})
def api_notifications_read(body: ReadIn, person: CurrentPerson, conn: Conn, clock: ClockDep) -> dict[str, int]:
    return {"marked": service.mark_notifications_read(conn, clock, person, body.ids)}


# --- pages --------------------------------------------------------------------------------------


def _can_act(person: Any) -> bool:
    return person.role in ("watcher", "coordinator", "operator")


@pages.get("/alerts/{incident_id}")
def alert_page(incident_id: IncidentId, request: Request, person: CurrentPerson, conn: Conn,
               clock: ClockDep) -> Response:
    incident = service.get_incident(conn, clock, person, incident_id)
    return render(request, "alert.html", incident=incident, can_act=_can_act(person))


@pages.get("/partials/alerts/{incident_id}")
def alert_partial(incident_id: IncidentId, request: Request, person: CurrentPerson, conn: Conn,
                  clock: ClockDep) -> Response:
    incident = service.get_incident(conn, clock, person, incident_id)
    return render(request, "_alert_body.html", incident=incident, can_act=_can_act(person))


@pages.post("/alerts/{incident_id}/claim")
def claim_submit(incident_id: IncidentId, person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    try:
        service.claim(conn, clock, person, incident_id)
    except Conflict:  # someone else was quicker: show the alert as it is now
        return RedirectResponse(f"/alerts/{incident_id}?msg=err_conflict", status_code=303)
    return RedirectResponse(f"/alerts/{incident_id}", status_code=303)


@pages.post("/alerts/{incident_id}/resolve")
def resolve_submit(incident_id: IncidentId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                   outcome: Annotated[str, Form()], note: Annotated[str, Form(max_length=2000)] = "") -> Response:
    try:
        service.resolve(conn, clock, person, incident_id, outcome=outcome, note=note.strip() or None)
    except Conflict:
        return RedirectResponse(f"/alerts/{incident_id}?msg=err_conflict", status_code=303)
    return RedirectResponse(f"/alerts/{incident_id}", status_code=303)


@pages.post("/alerts/{incident_id}/comment")
def comment_submit(incident_id: IncidentId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                   body: Annotated[str, Form(min_length=1, max_length=2000)]) -> Response:
    service.comment(conn, clock, person, incident_id, body)
    return RedirectResponse(f"/alerts/{incident_id}", status_code=303)


@pages.post("/notifications/read")
def notifications_read_submit(person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    service.mark_notifications_read(conn, clock, person)
    return RedirectResponse("/", status_code=303)
