"""Thin FastAPI routers over ``safety.service`` (JSON API under ``/api/safety``).

Wiring (the app does it, as for ``alerts.views``): include ``safety_api`` behind the app's
authentication (which puts the signed-in person on ``request.state.person``, read by
``current_person``) and ``answer_api`` as is (no login: a signed single-use link is the credential).
``safety_connection`` / ``safety_clock`` / ``safety_links`` use ``request.app.state.pool`` / ``.clock`` /
``.settings``.

Errors (kinds of ``mimamori.kernel.errors``, answered by the host's one handler): 400 bad link, 403 forbidden
(or a link of another check/household), 404 not found (or not in scope), 409 conflict (link already
used, already claimed/closed), 410 gone (check closed, link expired), 422 invalid input — with ``detail``
saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FPath
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mimamori.kernel.clock import Clock
from mimamori.kernel.errors import NotAuthenticated
from mimamori.kernel.signing import signer
from mimamori.safety import links as answer_links
from mimamori.safety import records, service
from mimamori.safety.models import SafetySettings


def current_person(request: Request) -> Any:
    """The signed-in person, as the host put it on ``request.state.person`` (the app authenticates every
    request to ``safety_api`` before it runs); nobody there: 401."""
    person = getattr(request.state, "person", None)
    if person is None:
        raise NotAuthenticated("sign in first")
    return person


def safety_connection(request: Request) -> Iterator[psycopg.Connection]:
    with request.app.state.pool.connection() as conn:
        conn.autocommit = True
        yield conn


def safety_clock(request: Request) -> Clock:
    return request.app.state.clock  # type: ignore[no-any-return]


def safety_links(request: Request) -> records.Links:
    settings = request.app.state.settings
    base = settings.public_url or str(request.base_url)
    return records.Links(signer(settings, "safety-answer"), base, SafetySettings().link_max_age_s)


Actor = Annotated[Any, Depends(current_person)]
Conn = Annotated[psycopg.Connection, Depends(safety_connection)]
ClockDep = Annotated[Clock, Depends(safety_clock)]
LinksDep = Annotated[records.Links, Depends(safety_links)]
CheckId = Annotated[int, FPath(ge=1, le=2**62)]
HouseholdId = Annotated[str, FPath(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
NO_NUL = r"^[^\x00]*$"
ERRORS: dict[int | str, dict[str, Any]] = {400: {}, 403: {}, 404: {}, 409: {}, 410: {}, 422: {}}


class StartIn(BaseModel):
    message: str = Field(min_length=1, max_length=1000, pattern=NO_NUL)
    area: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    household_ids: list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]] | None = \
        Field(default=None, max_length=records.MAX_HOUSEHOLDS)


class OnBehalfIn(BaseModel):
    answer: Literal["safe", "needs_help", "sign_of_life"]
    note: str | None = Field(default=None, max_length=records.MAX_NOTE, pattern=NO_NUL)


class CommentIn(BaseModel):
    text: str = Field(min_length=1, max_length=records.MAX_NOTE, pattern=NO_NUL)


class LinkAnswerIn(BaseModel):
    token: str = Field(min_length=1, max_length=1000, pattern=r"^[A-Za-z0-9_.-]+$")
    answer: Literal["safe", "needs_help"]
    #: what the client believes it answers for; a link of another check/household is refused
    check_id: int | None = Field(default=None, ge=1, le=2**62)
    household_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class LivesAloneIn(BaseModel):
    lives_alone: bool


safety_api = APIRouter(prefix="/api/safety", tags=["safety"])
answer_api = APIRouter(prefix="/api/safety/answer", tags=["safety"])


@safety_api.post("/checks", status_code=201, responses=ERRORS)
def start(body: StartIn, actor: Actor, conn: Conn, clock: ClockDep, links: LinksDep) -> dict[str, Any]:
    """Start a safety check of an area or a list of households (coordinator, operator)."""
    check_id = service.start_check(conn, actor, message=body.message, area=body.area,
                                   household_ids=body.household_ids, clock=clock, links=links,
                                   blinks=SafetySettings().blinks)
    return jsonable_encoder(service.get_check(conn, actor, check_id))


@safety_api.get("/checks", responses=ERRORS)
def list_checks(actor: Actor, conn: Conn) -> list[dict[str, Any]]:
    return jsonable_encoder(service.list_checks(conn, actor))


@safety_api.get("/checks/{check_id}", responses=ERRORS)
def get_check(check_id: CheckId, actor: Actor, conn: Conn) -> dict[str, Any]:
    return jsonable_encoder(service.get_check(conn, actor, check_id))


@safety_api.get("/checks/{check_id}/board", responses=ERRORS)
def get_board(check_id: CheckId, actor: Actor, conn: Conn, clock: ClockDep,
              state: Annotated[Literal["needs_help", "no_answer", "unreachable", "sign_of_life", "safe"] | None, Query()] = None,
              lives_alone: bool | None = None,
              q: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None) -> dict[str, Any]:
    """Counts per state and the households ordered by risk (filterable)."""
    return jsonable_encoder(service.board(conn, actor, check_id, state=state, lives_alone=lives_alone, q=q,
                                          now=clock.now()))


@safety_api.get("/checks/{check_id}/households/{household_id}", responses=ERRORS)
def get_household(check_id: CheckId, household_id: HouseholdId, actor: Actor, conn: Conn) -> dict[str, Any]:
    return jsonable_encoder(service.household_detail(conn, actor, check_id, household_id))


@safety_api.post("/checks/{check_id}/households/{household_id}/answer", responses=ERRORS)
def answer(check_id: CheckId, household_id: HouseholdId, body: OnBehalfIn, actor: Actor, conn: Conn,
           clock: ClockDep) -> dict[str, Any]:
    """A resident answers for their household; a team member or coordinator on its behalf, with a note."""
    return service.answer_in_app(conn, actor, check_id, household_id, body.answer, note=body.note, clock=clock,
                                 channel="api")


@safety_api.post("/checks/{check_id}/households/{household_id}/claim", responses=ERRORS)
def claim(check_id: CheckId, household_id: HouseholdId, actor: Actor, conn: Conn, clock: ClockDep) -> dict[str, Any]:
    """"I'll go": claims the household's safety-check incident (alert engine's claim and timeline)."""
    return service.claim(conn, actor, check_id, household_id, clock=clock, channel="api")


@safety_api.post("/checks/{check_id}/households/{household_id}/escalate", responses=ERRORS)
def escalate(check_id: CheckId, household_id: HouseholdId, actor: Actor, conn: Conn, clock: ClockDep) -> dict[str, Any]:
    """Ask the household's team to go and see (coordinator, operator)."""
    return service.escalate(conn, actor, check_id, household_id, clock=clock, channel="api")


@safety_api.post("/checks/{check_id}/households/{household_id}/comment", status_code=204, responses=ERRORS)
def comment(check_id: CheckId, household_id: HouseholdId, body: CommentIn, actor: Actor, conn: Conn,
            clock: ClockDep) -> Response:
    service.comment(conn, actor, check_id, household_id, body.text, clock=clock, channel="api")
    return Response(status_code=204)


@safety_api.post("/checks/{check_id}/households/{household_id}/link", status_code=201, responses=ERRORS)
def new_link(check_id: CheckId, household_id: HouseholdId, actor: Actor, conn: Conn, clock: ClockDep,
             links: LinksDep) -> dict[str, str]:
    """A fresh single-use answer link for the household (to print, or send by hand)."""
    return {"url": answer_links.issue_link(conn, actor, check_id, household_id, clock=clock, links=links)}


@safety_api.post("/checks/{check_id}/close", responses=ERRORS)
def close(check_id: CheckId, actor: Actor, conn: Conn, clock: ClockDep) -> dict[str, Any]:
    return service.close_check(conn, actor, check_id, clock=clock)


@safety_api.get("/checks/{check_id}/export.csv", responses={**ERRORS, 200: {"content": {"text/csv": {}}}})
def export(check_id: CheckId, actor: Actor, conn: Conn, clock: ClockDep) -> Response:
    text = service.export_csv(conn, actor, check_id, clock=clock)
    return Response(text.encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="safety-check-{check_id}.csv"'})


@safety_api.put("/households/{household_id}/lives-alone", status_code=204, responses=ERRORS)
def lives_alone(household_id: HouseholdId, body: LivesAloneIn, actor: Actor, conn: Conn, clock: ClockDep) -> Response:
    service.set_lives_alone(conn, actor, household_id, body.lives_alone, clock=clock)
    return Response(status_code=204)


@answer_api.post("", responses=ERRORS)
def answer_by_link(body: LinkAnswerIn, conn: Conn, clock: ClockDep, links: LinksDep) -> dict[str, Any]:
    """No login: a resident's answer through their signed single-use link."""
    return answer_links.answer_by_link(conn, links, body.token, body.answer, clock=clock, check_id=body.check_id,
                                  household_id=body.household_id)
