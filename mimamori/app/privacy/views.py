"""Thin routers: view log, export (JSON/CSV), deletion on request, the resident's own page."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.db import ClockDep, Conn
from mimamori.app.households import service as households
from mimamori.app.households.heatmap import heatmap_svg
from mimamori.app.i18n import request_locale, translate
from mimamori.app.incidents import service as incidents
from mimamori.app.models import ID_PATTERN
from mimamori.app.privacy import service
from mimamori.app.templating import render
from mimamori.kernel.errors import Forbidden
from mimamori.kernel.outbox import LinkSealer
from mimamori.kernel.signing import secret_key

api = APIRouter(prefix="/api/households", tags=["privacy"])
pages = APIRouter(include_in_schema=False)
HouseholdId = Annotated[str, Path(pattern=ID_PATTERN)]
ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}}
#: Which request of the resident an export answers (required unless the resident exports their own).
RequestNote = Annotated[str | None, Query(max_length=service.REQUEST_NOTE_MAX, pattern=r"^[^\x00]*$",
                                         description="the resident's request this export answers, e.g. "
                                                     "'asked by phone on 21 Jan'; not needed for the resident")]


class DeleteIn(BaseModel):
    confirm_name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]


def _json_response(data: Any, filename: str) -> Response:
    body = json.dumps(data, ensure_ascii=False, default=str, indent=1)
    return Response(body, media_type="application/json",
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


def _csv_response(text: str, filename: str) -> Response:
    return Response("\ufeff" + text, media_type="text/csv; charset=utf-8",  # BOM: Excel reads UTF-8
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


@api.get("/{household_id}/views", responses=ERRORS)
def api_views(household_id: HouseholdId, person: CurrentPerson, conn: Conn) -> list[dict[str, Any]]:
    return service.view_log(conn, person, household_id)


@api.get("/{household_id}/consents", responses=ERRORS)
def api_consents(household_id: HouseholdId, person: CurrentPerson, conn: Conn) -> list[dict[str, Any]]:
    return service.consent_of(conn, person, household_id)


@api.get("/{household_id}/export", responses={**ERRORS, 422: {}})
def api_export(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep,
               request_note: RequestNote = None) -> Response:
    data = service.export_household(conn, clock, person, household_id, request_note=request_note)
    return _json_response(data, f"{household_id}.json")


@api.get("/{household_id}/export.csv", responses={**ERRORS, 422: {}})
def api_export_csv(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                   request_note: RequestNote = None) -> Response:
    data = service.export_household(conn, clock, person, household_id, fmt="csv", request_note=request_note)
    return _csv_response(service.export_csv(data), f"{household_id}.csv")


@api.post("/{household_id}/delete", responses={**ERRORS, 422: {}})
def api_delete(household_id: HouseholdId, body: DeleteIn, person: CurrentPerson, conn: Conn,
               clock: ClockDep) -> dict[str, int]:
    return service.delete_household(conn, clock, person, household_id, confirm_name=body.confirm_name)


# --- pages --------------------------------------------------------------------------------------


@pages.get("/households/{household_id}/export.json")
def export_json_page(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                     request_note: RequestNote = None) -> Response:
    data = service.export_household(conn, clock, person, household_id, request_note=request_note)
    return _json_response(data, f"{household_id}.json")


@pages.get("/households/{household_id}/export.csv")
def export_csv_page(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                    request_note: RequestNote = None) -> Response:
    data = service.export_household(conn, clock, person, household_id, fmt="csv", request_note=request_note)
    return _csv_response(service.export_csv(data), f"{household_id}.csv")


@pages.get("/households/{household_id}/views")
def views_page(household_id: HouseholdId, request: Request, person: CurrentPerson, conn: Conn) -> Response:
    return render(request, "views.html", views=service.view_log(conn, person, household_id), household_id=household_id)


@pages.post("/households/{household_id}/delete")
def delete_submit(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                  confirm_name: Annotated[str, Form(max_length=200)]) -> Response:
    service.delete_household(conn, clock, person, household_id, confirm_name=confirm_name)
    return RedirectResponse("/coord?msg=deleted", status_code=303)


@pages.get("/me")
def me_page(request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    if person.role != "resident" or not person.household_id:
        raise Forbidden("this page is for residents")
    h = households.get_household(conn, clock, person, person.household_id)
    locale = request_locale(request)
    svg = heatmap_svg(h["heatmap"], title=translate(locale, "heatmap_title"))
    # a resident check waiting for the resident's answer (its message carries their answer link)
    # (the answer link is stored sealed, issue 17: opened here for the resident it belongs to)
    sealer = LinkSealer(secret_key(request.app.state.settings))
    questions = [{**n, "data": {**n["data"], "url": sealer.open(n["data"]["sealed_link"])}}
                 for n in incidents.unread_notifications(conn, person, limit=20)
                 if n["notice"] == "resident_check" and n["data"].get("sealed_link")]
    return render(request, "me.html", household_id=person.household_id, h=h, heatmap_svg=svg, questions=questions,
                  views=service.view_log(conn, person, person.household_id),
                  consents=service.consent_of(conn, person, person.household_id))
