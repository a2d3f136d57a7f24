"""Server-Sent Events: tell a signed-in page that what it shows has changed.

Nothing is polled: the stream waits for the process's live hub (app.live.hub), which listens for
PostgreSQL NOTIFY and hands each stream only the changes its person may see. Pages then fetch their
fragment again (app.js). Streams end after a while and the browser's EventSource reconnects (and
refreshes on ``hello``), so a restart or deploy never strands a client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth.deps import CurrentPerson, session_token
from app.auth.service import session_person
from app.live.hub import BYE, SIGNED_OUT

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
