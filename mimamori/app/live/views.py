"""Server-Sent Events: tell a signed-in page that what it shows has changed.

Nothing is polled: the stream waits for the process's live hub (app.live.hub), which listens for
PostgreSQL NOTIFY and hands each stream only the changes its person may see. Pages then fetch their
fragment again (app.js). Streams end after a while and the browser's EventSource reconnects (and
refreshes on ``hello``), so a restart or deploy never strands a client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from mimamori.alerts import service as alerts_service
from mimamori.app.auth.deps import CurrentPerson, session_token
from mimamori.app.auth.service import session_person
from mimamori.app.live.hub import BYE, SIGNED_OUT

router = APIRouter(tags=["live"])
STREAM_S = 300.0
KEEPALIVE_S = 15.0


@router.get("/live", include_in_schema=False)
async def live(request: Request, person: CurrentPerson) -> StreamingResponse:
    app = request.app
    token, _bearer = session_token(request)

    def session_alive() -> bool:
        # Also catches sessions that simply expired (no NOTIFY for those).
        with app.state.pool.connection() as conn:
            conn.autocommit = True
            return session_person(conn, app.state.clock, token or "") is not None

    async def stream() -> AsyncIterator[str]:
        sub = app.state.live.subscribe(person, token or "")
        try:
            yield "retry: 2000\nevent: hello\ndata: \n\n"
            # Real time here, not the service clock: this paces a network stream, not the domain.
            started = time.monotonic()
            while not app.state.stopping.is_set() and time.monotonic() - started < STREAM_S:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    if not await run_in_threadpool(session_alive):
                        yield "event: signed_out\ndata: \n\n"
                        return
                    yield ": keepalive\n\n"
                    continue
                if event == BYE:
                    return
                if event == SIGNED_OUT:
                    yield "event: signed_out\ndata: \n\n"
                    return
                while not sub.queue.empty():  # several changes queued: one refresh covers them
                    queued = sub.queue.get_nowait()
                    if queued == BYE:
                        return
                    if queued == SIGNED_OUT:
                        yield "event: signed_out\ndata: \n\n"
                        return
                yield "event: change\ndata: \n\n"
        finally:
            app.state.live.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


def _event_id(value: str | None) -> int:
    """A Last-Event-ID header as a notification id; anything else (a 5,000-digit number, text) is 0."""
    if value and value.isdigit() and len(value) <= 18:
        return int(value)
    return 0


@router.get("/api/alerts/notifications/stream", tags=["alerts"], responses={401: {}})
async def notifications_stream(request: Request, person: CurrentPerson,
                               last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Server-Sent Events of the person's in-app notifications (SSE id = notification id, so a
    reconnecting browser resumes with Last-Event-ID).

    Issue 17: every stream shares the process's one LISTEN connection (the live hub) instead of
    opening its own (85 streams from one resident exhausted PostgreSQL's connections), and each
    fetch re-checks the session: sign-out (here or everywhere) or expiry ends the stream with
    ``signed_out`` and nothing more is delivered.
    """
    app = request.app
    token, _bearer = session_token(request)
    after = _event_id(last_event_id)

    def fetch(last: int) -> list[dict[str, Any]] | None:
        with app.state.pool.connection() as conn:
            conn.autocommit = True
            if session_person(conn, app.state.clock, token or "") is None:
                return None
            return [asdict(n) for n in alerts_service.list_notifications(conn, person, after_id=last)]

    async def stream() -> AsyncIterator[str]:
        sub = app.state.live.subscribe(person, token or "")
        last = after
        try:
            started = time.monotonic()
            while not app.state.stopping.is_set() and time.monotonic() - started < STREAM_S:
                rows = await run_in_threadpool(fetch, last)
                if rows is None:
                    yield "event: signed_out\ndata: \n\n"
                    return
                for row in rows:
                    last = row["notification_id"]
                    yield f"id: {last}\nevent: notification\ndata: {json.dumps(row, default=str)}\n\n"
                try:
                    event = await asyncio.wait_for(sub.queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"  # the next fetch checks the session (expiry sends no NOTIFY)
                    continue
                if event == BYE:
                    return
                if event == SIGNED_OUT:
                    yield "event: signed_out\ndata: \n\n"
                    return
        finally:
            app.state.live.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})
