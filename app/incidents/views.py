"""Thin routers for alerts as watchers see them: list, detail with the team timeline, and the big
"I'll go" / "All fine" / "Needs help" actions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from app.auth.deps import CurrentPerson
from app.db import ClockDep, Conn
from app.errors import Conflict
from app.incidents import service
from app.models import Text
from app.templating import render

api = APIRouter(prefix="/api/incidents", tags=["incidents"])
notifications = APIRouter(prefix="/api/notifications", tags=["notifications"])
pages = APIRouter(include_in_schema=False)
ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 409: {}}
IncidentId = Annotated[int, Field(ge=1, le=2**62)]


class ResolveIn(BaseModel):
    outcome: Literal["fine", "needed_help", "emergency_services", "away", "device_problem", "false_alarm"]
    note: Text | None = None


class CommentIn(BaseModel):
    body: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^[^\x00]*\S[^\x00]*$")]


@api.get("", responses={401: {}})
def api_list(person: CurrentPerson, conn: Conn, active_only: bool = True) -> list[dict[str, Any]]:
    return service.list_incidents(conn, person, active_only=active_only)


@api.get("/{incident_id}", responses=ERRORS)
def api_get(incident_id: IncidentId, person: CurrentPerson, conn: Conn, clock: ClockDep) -> dict[str, Any]:
    incident = service.get_incident(conn, clock, person, incident_id)
    # The engines' raw data (chain snapshots, worker ids, person ids) stays out of the API.
    incident.pop("names", None)
    for entry in incident["timeline"]:
        entry.pop("data", None)
    return incident


@api.post("/{incident_id}/claim", status_code=204, responses=ERRORS)
def api_claim(incident_id: IncidentId, person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    service.claim(conn, clock, person, incident_id, channel="api")
    return Response(status_code=204)


@api.post("/{incident_id}/resolve", status_code=204, responses=ERRORS)
def api_resolve(incident_id: IncidentId, body: ResolveIn, person: CurrentPerson, conn: Conn,
                clock: ClockDep) -> Response:
    service.resolve(conn, clock, person, incident_id, outcome=body.outcome, note=body.note, channel="api")
    return Response(status_code=204)


@api.post("/{incident_id}/comment", status_code=204, responses=ERRORS)
def api_comment(incident_id: IncidentId, body: CommentIn, person: CurrentPerson, conn: Conn,
                clock: ClockDep) -> Response:
    service.comment(conn, clock, person, incident_id, body.body, channel="api")
    return Response(status_code=204)


class ReadIn(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=2**62)]] | None = Field(default=None, max_length=1000)


@notifications.get("/unread", responses={401: {}})
def api_notifications(person: CurrentPerson, conn: Conn) -> list[dict[str, Any]]:
    return service.unread_notifications(conn, person, limit=100)


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
