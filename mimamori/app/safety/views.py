"""The safety check's pages: the list and start form, the live board (its fragment refetched when
the app's live stream reports a change in the check — migration 0041 — with a 30 s fallback poll in
``/safety/static/safety.js``), a household's page (claim, on-behalf answer, timeline), and
the no-login answer page of a signed link. All rules are in ``safety.service``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

import mimamori.safety.views as api
from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.db import ClockDep, Conn
from mimamori.app.incidents.service import timeline as incident_timeline
from mimamori.app.incidents.timeline import visible_names
from mimamori.app.templating import render
from mimamori.kernel.errors import Conflict
from mimamori.safety import service
from mimamori.safety.models import BOARD_STATES, SafetyError, SafetySettings

pages = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"


def _error_page(request: Request, exc: SafetyError) -> Response:
    key = {409: "safety_link_used", 410: "safety_link_closed"}.get(exc.status_code, "safety_link_invalid")
    return render(request, "safety_answer.html", status_code=exc.status_code, info=None, error_key=key, reason=exc.message)


def _links(request: Request) -> service.Links:
    return api.safety_links(request)


def _filters(state: str | None, alone: str | None, q: str | None) -> dict[str, Any]:
    return {"state": state if state in BOARD_STATES else None, "lives_alone": True if alone == "1" else None,
            "q": (q or "").strip()[:100] or None}


@pages.get("/safety/static/safety.js")
def script() -> FileResponse:
    return FileResponse(STATIC / "safety.js", media_type="text/javascript")


@pages.get("/safety/static/safety.css")
def style() -> FileResponse:
    return FileResponse(STATIC / "safety.css", media_type="text/css")


@pages.get("/safety")
def index(request: Request, person: CurrentPerson, conn: Conn) -> Response:
    checks = service.list_checks(conn, person)
    mine: dict[int, dict[str, Any]] = {}
    if person.role == "resident" and person.household_id:
        for c in checks:
            if c["open"]:
                row = service.board(conn, person, c["check_id"])["households"]
                if row:
                    mine[c["check_id"]] = row[0]
    return render(request, "safety_index.html", checks=checks, mine=mine)


@pages.post("/safety/start")
def start(request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep,
          message: Annotated[str, Form(max_length=1000)], area: Annotated[str, Form(max_length=200)] = "",
          household_ids: Annotated[str, Form(max_length=100_000)] = "") -> Response:
    ids = [h.strip() for h in household_ids.replace("\n", ",").split(",") if h.strip()]
    chosen_area = None if ids else (area.strip() or person.area)
    check_id = service.start_check(conn, person, message=message, area=chosen_area, household_ids=ids or None,
                                   clock=clock, links=_links(request), blinks=SafetySettings().blinks)
    return RedirectResponse(f"/safety/{check_id}", status_code=303)


def _board_ctx(conn: Any, person: Any, check_id: int, state: str | None, alone: str | None, q: str | None,
               now: float | None = None) -> dict[str, Any]:
    data = service.board(conn, person, check_id, **_filters(state, alone, q), now=now)
    return {"board": data, "check": data["check"], "states": BOARD_STATES,
            "filter_state": state if state in BOARD_STATES else "", "filter_alone": alone == "1", "filter_q": q or ""}


@pages.get("/safety/{check_id}")
def board_page(check_id: api.CheckId, request: Request, person: CurrentPerson, conn: Conn, state: str | None = None,
               alone: str | None = None, q: str | None = None) -> Response:
    ctx = _board_ctx(conn, person, check_id, state, alone, q, now=request.app.state.clock.now())
    query = request.url.query
    return render(request, "safety_board.html", **ctx,
                  fragment_url=f"/partials/safety/{check_id}" + (f"?{query}" if query else ""))


@pages.get("/partials/safety/{check_id}")
def board_fragment(check_id: api.CheckId, request: Request, person: CurrentPerson, conn: Conn, state: str | None = None,
                   alone: str | None = None, q: str | None = None) -> Response:
    return render(request, "safety_board_fragment.html",
                  **_board_ctx(conn, person, check_id, state, alone, q, now=request.app.state.clock.now()))


@pages.get("/safety/{check_id}/h/{household_id}")
def household_page(check_id: api.CheckId, household_id: api.HouseholdId, request: Request, person: CurrentPerson,
                   conn: Conn) -> Response:
    check = service.get_check(conn, person, check_id)
    detail = service.household_detail(conn, person, check_id, household_id)
    if detail["timeline"] and detail.get("incident_id"):  # the viewer may see the team timeline: in words
        detail["timeline"] = incident_timeline(conn, detail["incident_id"])
        detail["names"] = visible_names(conn, person, household_id, detail.get("area"), detail["timeline"])
    return render(request, "safety_household.html", check=check, h=detail)


@pages.post("/safety/{check_id}/h/{household_id}/claim")
def claim_submit(check_id: api.CheckId, household_id: api.HouseholdId, person: CurrentPerson, conn: Conn,
                 clock: ClockDep) -> Response:
    try:
        service.claim(conn, person, check_id, household_id, clock=clock)
    except Conflict:  # someone was quicker: show the household as it is now
        return RedirectResponse(f"/safety/{check_id}/h/{household_id}?msg=err_conflict", status_code=303)
    return RedirectResponse(f"/safety/{check_id}/h/{household_id}", status_code=303)


@pages.post("/safety/{check_id}/h/{household_id}/escalate")
def escalate_submit(check_id: api.CheckId, household_id: api.HouseholdId, person: CurrentPerson, conn: Conn,
                    clock: ClockDep) -> Response:
    service.escalate(conn, person, check_id, household_id, clock=clock)
    return RedirectResponse(f"/safety/{check_id}/h/{household_id}?msg=safety_team_asked", status_code=303)


@pages.post("/safety/{check_id}/h/{household_id}/answer")
def answer_submit(check_id: api.CheckId, household_id: api.HouseholdId, person: CurrentPerson, conn: Conn,
                  clock: ClockDep, answer: Annotated[str, Form(max_length=20)],
                  note: Annotated[str, Form(max_length=2000)] = "", back: Annotated[str, Form(max_length=10)] = "") -> Response:
    service.answer_in_app(conn, person, check_id, household_id, answer, note=note, clock=clock)
    target = "/safety" if back == "index" else f"/safety/{check_id}/h/{household_id}"
    return RedirectResponse(target, status_code=303)


@pages.post("/safety/{check_id}/close")
def close_submit(check_id: api.CheckId, person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    service.close_check(conn, person, check_id, clock=clock)
    return RedirectResponse(f"/safety/{check_id}", status_code=303)


# --- the no-login answer page ------------------------------------------------------------------


@pages.get("/safety/a/{token}")
def answer_page(token: str, request: Request, conn: Conn) -> Response:
    try:
        info = service.link_info(conn, _links(request), token)
    except SafetyError as exc:
        return _error_page(request, exc)
    request.state.locale = info["locale"]  # the page in the resident's language
    if info["closed"]:
        return render(request, "safety_answer.html", status_code=410, info=info, error_key="safety_link_closed", reason="")
    if info["used"]:
        return render(request, "safety_answer.html", status_code=409, info=info, error_key="safety_link_used", reason="")
    return render(request, "safety_answer.html", info=info, token=token, error_key=None)


@pages.post("/safety/a/{token}")
def answer_link_submit(token: str, request: Request, conn: Conn, clock: ClockDep,
                       answer: Annotated[str, Form(max_length=20)],
                       check_id: Annotated[int | None, Form(ge=1, le=2**62)] = None,
                       household_id: Annotated[str | None, Form(max_length=64)] = None) -> Response:
    try:
        request.state.locale = service.link_info(conn, _links(request), token)["locale"]
        result = service.answer_by_link(conn, _links(request), token, answer, clock=clock, check_id=check_id,
                                        household_id=household_id)
    except SafetyError as exc:
        return _error_page(request, exc)
    return render(request, "safety_answer.html", info=None, done=result["state"], error_key=None)
