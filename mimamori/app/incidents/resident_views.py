"""The resident's answer page: the link in the message a resident check sends (no login; the link is
the key, single use). Three big buttons: "I'm fine", "I'm out" (with the day they will be back), "Please
help". All rules are in ``alerts.resident``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from mimamori.alerts import resident
from mimamori.alerts.models import AlertError, Conflict, InvalidInput
from mimamori.app.db import ClockDep, Conn
from mimamori.app.templating import render

pages = APIRouter(include_in_schema=False)
TEMPLATE = "resident_answer.html"


def _expired(request: Request, token: str | None) -> Response:
    # an expired link still lets the resident ask for help
    return render(request, TEMPLATE, status_code=410, error_key="rc_link_expired", token=token, help_only=True, info=None)


def _used(request: Request) -> Response:
    return render(request, TEMPLATE, status_code=409, error_key="rc_link_used", info=None)


def _error(request: Request, exc: AlertError, token: str | None = None, conn: Conn | None = None,
           clock: ClockDep | None = None) -> Response:
    if isinstance(exc, resident.LinkGone):
        return _expired(request, token)
    if isinstance(exc, InvalidInput) and token and conn is not None and clock is not None:
        # the form again, with what was wrong (e.g. a return day in the past)
        return render(request, TEMPLATE, status_code=422, error_key="rc_invalid", reason=str(exc), token=token,
                      info=resident.link_info(conn, token, clock=clock))
    if isinstance(exc, Conflict):
        return _used(request)
    return render(request, TEMPLATE, status_code=404, error_key="rc_link_invalid", info=None)


@pages.get(f"{resident.LINK_PATH}{{token}}")
def answer_page(token: str, request: Request, conn: Conn, clock: ClockDep) -> Response:
    try:
        info = resident.link_info(conn, token, clock=clock)
    except AlertError as exc:
        return _error(request, exc)
    request.state.locale = info["locale"]  # the page in the resident's language
    if info["used"]:
        return _used(request)
    if info["expired"]:
        return _expired(request, token)
    return render(request, TEMPLATE, info=info, token=token)


@pages.post(f"{resident.LINK_PATH}{{token}}")
def answer_submit(token: str, request: Request, conn: Conn, clock: ClockDep,
                  answer: Annotated[str, Form(max_length=10)],
                  back_on: Annotated[str | None, Form(max_length=10)] = None) -> Response:
    try:
        request.state.locale = resident.link_info(conn, token, clock=clock)["locale"]
        result = resident.answer(conn, token, answer, clock=clock, back_on=back_on)
    except AlertError as exc:
        return _error(request, exc, token, conn, clock)
    until = datetime.fromtimestamp(result["away_until"], UTC) if result["away_until"] else None
    return render(request, TEMPLATE, done=result["answer"], until=until, info=None)
