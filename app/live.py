"""Server-Sent Events: tell a signed-in page that what it shows has changed.

The stream sends ``event: change`` whenever a fingerprint of the person's visible alerts, team
timelines, away periods and in-app notifications (written by the alerts engine) changes (polled once a second in a worker thread; the pool connection is
held only for the query). Pages then fetch their fragment again (app.js). Streams end after a while
and the browser's EventSource reconnects, so a restart or deploy never strands a client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth.deps import CurrentPerson, session_token
from app.auth.service import session_person
from app.incidents.service import _incident_scope
from app.people import Person
from app.scope import household_scope_sql

router = APIRouter(tags=["live"])
POLL_S = 1.0
STREAM_S = 300.0
KEEPALIVE_S = 15.0


def fingerprint(conn: object, person: Person) -> str:
    iwhere, iparams = _incident_scope(person)
    hwhere, hparams = household_scope_sql(person)
    row = conn.execute(  # type: ignore[attr-defined]
        f"""SELECT md5(concat_ws('|',
              (SELECT string_agg(i.incident_id || ':' || i.status || ':' || i.updated_at, ',' ORDER BY i.incident_id)
                 FROM incidents i LEFT JOIN households h USING (household_id) WHERE {iwhere} AND (i.status IN ('open', 'claimed') OR i.closed_at IS NOT NULL)),
              (SELECT max(t.entry_id) FROM incident_timeline t JOIN incidents i USING (incident_id)
                 LEFT JOIN households h ON h.household_id = i.household_id WHERE {iwhere}),
              (SELECT max(a.id) || ':' || max(a.until) FROM away_periods a JOIN households h USING (household_id)
                 WHERE {hwhere}),
              (SELECT max(n.notification_id) FROM notifications n WHERE n.person_id = %(live_person)s)))""",
        {**iparams, **hparams, "live_person": person.person_id},
    ).fetchone()
    return row[0]


@router.get("/live", include_in_schema=False)
async def live(request: Request, person: CurrentPerson) -> StreamingResponse:
    app = request.app

    token, _bearer = session_token(request)

    def current() -> str | None:
        """The fingerprint, or None once the session has ended (signed out everywhere)."""
        with app.state.pool.connection() as conn:
            conn.autocommit = True
            if session_person(conn, app.state.clock, token or "") is None:
                return None
            return fingerprint(conn, person)

    async def stream() -> AsyncIterator[str]:
        # Real time here, not the service clock: this paces network polling, not the domain.
        started = last_sent = time.monotonic()
        seen = await run_in_threadpool(current)
        if seen is None:
            return
        yield f"retry: 2000\nevent: hello\ndata: {seen}\n\n"
        while not app.state.stopping.is_set() and time.monotonic() - started < STREAM_S:
            await asyncio.sleep(POLL_S)
            if await request.is_disconnected():
                return
            now_fp = await run_in_threadpool(current)
            if now_fp is None:
                yield "event: signed_out\ndata: \n\n"
                return
            if now_fp != seen:
                seen = now_fp
                last_sent = time.monotonic()
                yield f"event: change\ndata: {now_fp}\n\n"
            elif time.monotonic() - last_sent > KEEPALIVE_S:
                last_sent = time.monotonic()
                yield ": keepalive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})
