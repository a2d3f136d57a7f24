"""Thin routers: households (API and pages), teams, away periods, the watcher's home page."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import FormData

from mimamori.app.auth import service as auth_service
from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.db import ClockDep, Conn
from mimamori.app.households import chain_form, service
from mimamori.app.households.heatmap import heatmap_svg
from mimamori.app.households.models import AwayIn, HouseholdDetail, HouseholdIn, HouseholdSummary, TeamMemberIn
from mimamori.app.i18n import request_locale, translate
from mimamori.app.incidents import service as incidents
from mimamori.app.models import ID_PATTERN
from mimamori.app.templating import render
from mimamori.kernel.access import may_manage_household, require_manager
from mimamori.kernel.errors import InvalidInput

api = APIRouter(prefix="/api/households", tags=["households"])
pages = APIRouter(include_in_schema=False)
HouseholdId = Annotated[str, Path(pattern=ID_PATTERN)]
ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}}


@api.get("", response_model=list[HouseholdSummary], responses={401: {}})
def api_list(person: CurrentPerson, conn: Conn, clock: ClockDep) -> list[dict[str, Any]]:
    return service.list_households(conn, clock, person, what="api /api/households (list)")


@api.post("", status_code=201, responses={**ERRORS, 409: {}})
def api_create(body: HouseholdIn, person: CurrentPerson, conn: Conn, clock: ClockDep) -> dict[str, str]:
    hid = service.create_household(conn, clock, person, display_name=body.display_name, area=body.area,
                                   household_id=body.household_id, address=body.address, phone=body.phone,
                                   paper_consent=body.paper_consent)
    return {"household_id": hid}


@api.get("/{household_id}", response_model=HouseholdDetail, responses=ERRORS)
def api_get(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep) -> dict[str, Any]:
    return service.get_household(conn, clock, person, household_id, what="api")


@api.get("/{household_id}/team", responses=ERRORS)
def api_team(household_id: HouseholdId, person: CurrentPerson, conn: Conn) -> list[dict[str, Any]]:
    return service.team(conn, person, household_id)


@api.post("/{household_id}/team", status_code=204, responses={**ERRORS, 422: {}})
def api_team_add(household_id: HouseholdId, body: TeamMemberIn, person: CurrentPerson, conn: Conn,
                 clock: ClockDep) -> Response:
    service.add_to_team(conn, clock, person, household_id, body.person_id, tier=body.tier, relation=body.relation)
    return Response(status_code=204)


@api.delete("/{household_id}/team/{person_id}", status_code=204, responses=ERRORS)
def api_team_remove(household_id: HouseholdId, person_id: Annotated[str, Path(pattern=ID_PATTERN)],
                    person: CurrentPerson, conn: Conn) -> Response:
    service.remove_from_team(conn, person, household_id, person_id)
    return Response(status_code=204)


@api.post("/{household_id}/away", status_code=201, responses={**ERRORS, 422: {}})
def api_away(household_id: HouseholdId, body: AwayIn, person: CurrentPerson, conn: Conn,
             clock: ClockDep) -> dict[str, int]:
    return {"away_id": service.set_away(conn, clock, person, household_id, body.until, body.note)}


@api.delete("/{household_id}/away", status_code=204, responses=ERRORS)
def api_away_end(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    service.end_away(conn, clock, person, household_id)
    return Response(status_code=204)


# --- pages --------------------------------------------------------------------------------------


def _home_context(conn: Any, clock: Any, person: Any) -> dict[str, Any]:
    return {"households": service.list_households(conn, clock, person, what="page / (list)"),
            "incidents": incidents.list_incidents(conn, person),
            "notifications": incidents.unread_notifications(conn, person)}


@pages.get("/")
def home(request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    if person.role == "resident" and person.household_id:
        return RedirectResponse("/me", status_code=303)
    return render(request, "home.html", **_home_context(conn, clock, person))


@pages.get("/partials/home")
def home_partial(request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep) -> HTMLResponse:
    return render(request, "_home_list.html", **_home_context(conn, clock, person))


def _chain_text(conn: Any, person: Any, household_id: str) -> str:
    steps, _source = incidents.get_chain(conn, person, household_id)
    return json.dumps(steps, ensure_ascii=False, indent=1)


def _tier_options(team: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tiers the editor offers: the team's (with who is on each), 1–3 always, and any a step names."""
    tiers = {1, 2, 3} | {int(m["tier"]) for m in team if m.get("tier")}
    tiers |= {int(t) for r in rows for t in r.get("tiers", []) if str(t).isdigit() and int(t) in chain_form.TIERS}
    return [{"tier": t, "names": [m["display_name"] for m in team if m.get("tier") == t]} for t in sorted(tiers)]


def _people_options(team: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The team's people, then anyone a step names who is no longer on the team (shown by id)."""
    people = [{"person_id": m["person_id"], "name": m["display_name"]} for m in team]
    known = {p["person_id"] for p in people}
    for r in rows:
        for pid in r.get("people", []):
            if pid not in known:
                known.add(pid)
                people.append({"person_id": pid, "name": pid})
    return people


def _household_page(request: Request, person: Any, conn: Any, clock: Any, household_id: str, *,
                    chain_rows: list[dict[str, Any]] | None = None, chain_errors: list[Any] | None = None,
                    status_code: int = 200) -> Response:
    h = service.get_household(conn, clock, person, household_id)
    locale = request_locale(request)
    svg = heatmap_svg(h["heatmap"], title=translate(locale, "heatmap_title"))
    # Manage controls only for whoever manages this household (a coordinator on another area's team sees
    # it as a team member: no team, chain or device controls).
    can_manage = may_manage_household(conn, person, household_id)
    extra: dict[str, Any] = {"chain": None, "watchers": [], "can_manage": can_manage}
    if can_manage:
        extra["watchers"] = service.area_watchers(conn, person)
        extra["residents"] = service.residents(conn, person, household_id)
        extra["chain"] = _chain_text(conn, person, household_id)
        extra["chain_steps"] = json.loads(extra["chain"])
        rows = chain_rows if chain_rows is not None else chain_form.rows_from_steps(extra["chain_steps"])
        errors = chain_errors or []
        extra["chain_editor"] = {
            "rows": rows, "kinds": chain_form.STEP_KINDS, "numbers": chain_form.NUMBER_FIELDS,
            "defaults": chain_form.NEW_STEP_DEFAULTS,
            "tiers": _tier_options(h["team"], rows), "people": _people_options(h["team"], rows),
            "errors": {e.index: translate(locale, e.key, step=e.index + 1, **e.values) for e in errors if e.index is not None},
            "general_errors": [translate(locale, e.key, **e.values) for e in errors if e.index is None],
            "unsaved": chain_rows is not None,
        }
    return render(request, "household.html", status_code=status_code, h=h, heatmap_svg=svg, **extra)


@pages.get("/households/{household_id}")
def household_page(household_id: HouseholdId, request: Request, person: CurrentPerson, conn: Conn,
                   clock: ClockDep) -> Response:
    return _household_page(request, person, conn, clock, household_id)


@pages.post("/households/{household_id}/team")
def team_add_submit(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                    person_id: Annotated[str, Form(pattern=ID_PATTERN)], tier: Annotated[int, Form(ge=1, le=9)] = 1,
                    relation: Annotated[str, Form(max_length=100)] = "") -> Response:
    service.add_to_team(conn, clock, person, household_id, person_id, tier=tier, relation=relation or None)
    return RedirectResponse(f"/households/{household_id}?msg=saved", status_code=303)


@pages.post("/households/{household_id}/team/{member_id}/remove")
def team_remove_submit(household_id: HouseholdId, member_id: Annotated[str, Path(pattern=ID_PATTERN)],
                       person: CurrentPerson, conn: Conn) -> Response:
    service.remove_from_team(conn, person, household_id, member_id)
    return RedirectResponse(f"/households/{household_id}?msg=saved", status_code=303)


async def _posted_form(request: Request) -> FormData:
    return await request.form()  # the CSRF check has read (and cached) it already


PostedForm = Annotated[FormData, Depends(_posted_form)]


@pages.post("/households/{household_id}/chain")
def chain_submit(household_id: HouseholdId, request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep,
                 form: PostedForm) -> Response:
    """The chain editor: the structured form (its edit buttons re-render without saving; "save"
    validates and saves), or the advanced JSON text (field ``steps``), as before.
    """
    if "steps" in form:
        text = str(form["steps"])
        if len(text) > 20000:
            raise InvalidInput("the steps are too long")
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise InvalidInput("the steps are not valid JSON") from exc
        incidents.set_chain(conn, clock, person, household_id, parsed)
        return RedirectResponse(f"/households/{household_id}?msg=saved", status_code=303)
    require_manager(person)
    rows = chain_form.rows_from_form(form)
    op = str(form.get("op") or "save")
    if op != "save":
        rows = chain_form.apply_edit(rows, op, str(form.get("new_kind") or "wait"))
        return _household_page(request, person, conn, clock, household_id, chain_rows=rows)
    steps, errors = chain_form.steps_from_rows(rows)
    if errors:
        return _household_page(request, person, conn, clock, household_id, chain_rows=rows, chain_errors=errors,
                               status_code=422)
    incidents.set_chain(conn, clock, person, household_id, steps)
    return RedirectResponse(f"/households/{household_id}?msg=saved#chain-editor", status_code=303)


def _back(person: Any, household_id: str) -> str:
    return "/me?msg=saved" if person.role == "resident" else f"/households/{household_id}?msg=saved"


@pages.post("/households/{household_id}/away")
def away_submit(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                until: Annotated[date, Form()]) -> Response:
    service.set_away(conn, clock, person, household_id, until)
    return RedirectResponse(_back(person, household_id), status_code=303)


@pages.post("/households/{household_id}/away/end")
def away_end_submit(household_id: HouseholdId, person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    service.end_away(conn, clock, person, household_id)
    return RedirectResponse(_back(person, household_id), status_code=303)


@pages.post("/households/{household_id}/invite")
def household_invite_submit(household_id: HouseholdId, request: Request, person: CurrentPerson, conn: Conn,
                            clock: ClockDep, role: Annotated[str, Form()],
                            display_name: Annotated[str, Form(min_length=1, max_length=200)]) -> Response:
    token, _ = auth_service.create_invitation(conn, clock, person, role=role, display_name=display_name,
                                              household_id=household_id)
    return _coord_page(request, person, conn, clock, invitation_url=str(request.url_for("invite_page", token=token)))


@pages.get("/coord")
def coord_page(request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    return _coord_page(request, person, conn, clock)


def _coord_page(request: Request, person: Any, conn: Any, clock: Any, **extra: Any) -> Response:
    from mimamori.app.devices import service as devices
    require_manager(person)
    return render(request, "coord.html", households=service.list_households(conn, clock, person, what="page /coord (list)"),
                  incidents=incidents.list_incidents(conn, person), problems=devices.device_problems(conn, clock, person),
                  notice_version=auth_service.NOTICE_VERSION, **extra)


@pages.post("/coord/households")
def coord_create_household(person: CurrentPerson, conn: Conn, clock: ClockDep,
                           display_name: Annotated[str, Form(min_length=1, max_length=200)],
                           area: Annotated[str, Form(max_length=200)] = "",
                           address: Annotated[str, Form(max_length=500)] = "",
                           phone: Annotated[str, Form(max_length=50)] = "",
                           paper_consent: Annotated[str, Form()] = "") -> Response:
    hid = service.create_household(conn, clock, person, display_name=display_name, area=area or None,
                                   address=address or None, phone=phone or None, paper_consent=bool(paper_consent))
    return RedirectResponse(f"/households/{hid}?msg=saved", status_code=303)


@pages.post("/coord/invite")
def coord_invite(request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep,
                 role: Annotated[str, Form()], display_name: Annotated[str, Form(min_length=1, max_length=200)],
                 area: Annotated[str, Form(max_length=200)] = "") -> Response:
    token, _ = auth_service.create_invitation(conn, clock, person, role=role, display_name=display_name,
                                              area=area or person.area)
    return _coord_page(request, person, conn, clock, invitation_url=str(request.url_for("invite_page", token=token)))
