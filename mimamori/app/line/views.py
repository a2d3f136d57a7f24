"""LINE routes: ``POST /line/webhook`` (LINE calls it; signed, no session) and ``/api/me/line`` (a signed-in
person links or unlinks their LINE account with a one-time code)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from mimamori.alerts import line_accounts
from mimamori.alerts.line_settings import line_settings
from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.db import ClockDep, Conn
from mimamori.app.line.service import Handled, handle
from mimamori.kernel.errors import InvalidInput

log = logging.getLogger(__name__)
api = APIRouter()
MAX_WEBHOOK_BYTES = 256 * 1024  # LINE sends a few events per request


@api.post("/line/webhook", include_in_schema=False)
async def webhook(request: Request) -> Response:
    settings = line_settings(request.app.state.settings)
    if settings is None:
        return Response(status_code=404)
    from linebot.v3.exceptions import InvalidSignatureError  # LINE's SDK only when LINE calls

    from mimamori.alerts.line import parse_webhook

    body = await request.body()
    if len(body) > MAX_WEBHOOK_BYTES:
        return Response("too large", status_code=413)
    try:
        events = parse_webhook(body.decode("utf-8", "replace"), request.headers.get("x-line-signature", ""),
                               settings.channel_secret)
    except (InvalidSignatureError, ValueError):
        log.warning("line webhook: a request with a wrong signature was refused")
        return Response("bad signature", status_code=400)
    handled = await run_in_threadpool(_handle_all, request, events)
    replies = [h for h in handled if h.reply and h.reply_token]
    if replies:
        await run_in_threadpool(_reply_all, settings, replies)
    return Response(status_code=200)


def _handle_all(request: Request, events: list[Any]) -> list[Handled]:
    with request.app.state.pool.connection() as conn:
        conn.autocommit = True
        results = []
        for event in events:
            try:
                results.append(handle(conn, event, clock=request.app.state.clock))
            except Exception:  # one bad event must not lose the others (LINE would redeliver them all)
                log.exception("line webhook: an event failed")
        return results


def _reply_all(settings: Any, handled: list[Handled]) -> None:
    from mimamori.alerts.line import LineClient, LineError, text_message

    with LineClient(settings) as client:
        for h in handled:
            try:
                client.reply(str(h.reply_token), [text_message(str(h.reply))])
            except LineError as exc:  # the action stands; only the chat answer is lost
                log.warning("line reply failed: %s", exc)


@api.get("/api/me/line")
def my_line(person: CurrentPerson, conn: Conn, request: Request) -> dict[str, Any]:
    return {"configured": line_settings(request.app.state.settings) is not None,
            "linked": line_accounts.line_user_for(conn, person.person_id) is not None}


@api.post("/api/me/line/code")
def new_link_code(person: CurrentPerson, conn: Conn, clock: ClockDep, request: Request) -> dict[str, Any]:
    """A six-digit code to send to the bot from LINE (ten minutes, once); earlier codes stop working."""
    if line_settings(request.app.state.settings) is None:
        raise InvalidInput("LINE is not set up for this service")
    code = line_accounts.issue_link_code(conn, person.person_id, clock.now())
    return {"code": code, "expires_in_s": int(line_accounts.LINK_CODE_TTL.total_seconds())}


@api.delete("/api/me/line")
def unlink_line(person: CurrentPerson, conn: Conn) -> dict[str, Any]:
    return {"unlinked": line_accounts.unlink(conn, person.person_id)}
