"""One LISTEN connection per app process, fanned out to the Server-Sent-Events clients.

A thread holds its own connection (not a pool one) listening on ``mimamori_app_live``. When payloads
arrive it waits a moment for more (a transaction often fires several), folds them, and asks, once
per connected person, whether the batch touches anything that person may see
(:func:`app.live.service.touches`, the service layer's scope). Each interested stream gets a
``change``; a person whose session ended gets ``signed_out``. If the database drops, the thread
reconnects with backoff and then tells every stream to refresh (it may have missed changes).

Streams live on the event loop; the thread hands them events with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import ConnectionPool

from mimamori.app import metrics
from mimamori.app.auth.service import session_person
from mimamori.app.live.service import CHANNEL, Changes, touches
from mimamori.app.people import Person
from mimamori.kernel.clock import Clock

log = logging.getLogger(__name__)

APPLICATION_NAME = "mimamori-app-live"
#: How long one wait for notifications blocks (bounds how fast ``stop`` is noticed).
WAIT_S = 0.25
#: After the first payload, how long to keep collecting before fanning out.
BATCH_S = 0.05
#: With nothing heard for this long, the listener checks its connection with a query.
IDLE_CHECK_S = 30.0
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 5.0

CHANGE = "change"
SIGNED_OUT = "signed_out"
BYE = "bye"


@dataclass(eq=False)
class Subscription:
    person: Person
    session_token: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=4))

    def deliver(self, event: str) -> None:
        def put() -> None:
            with contextlib.suppress(asyncio.QueueFull):  # it already has changes waiting: one refresh covers them all
                self.queue.put_nowait(event)

        with contextlib.suppress(RuntimeError):  # its loop is closed: the stream is gone
            self.loop.call_soon_threadsafe(put)


class LiveHub:
    def __init__(self, database_url: str, pool: ConnectionPool, clock: Clock) -> None:
        self._url = database_url
        self._pool = pool
        self._clock = clock
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        #: called with each folded batch after fan-out (tests and diagnostics)
        self.on_batch: Callable[[Changes], None] | None = None

    # --- streams -------------------------------------------------------------------------------

    def subscribe(self, person: Person, session_token: str) -> Subscription:
        sub = Subscription(person, session_token, asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
            if self._thread is None and not self._stop.is_set():
                # Started on the first stream, so an app that never streams holds no extra connection.
                self._thread = threading.Thread(target=self._run, name="app-live-listener", daemon=True)
                self._thread.start()
        metrics.SSE_CLIENTS.inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub not in self._subs:
                return
            self._subs.discard(sub)
        metrics.SSE_CLIENTS.dec()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._subs)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            subs = list(self._subs)
            thread = self._thread
        for sub in subs:
            sub.deliver(BYE)
        if thread is not None:
            thread.join(timeout=5)

    # --- the listener thread -----------------------------------------------------------------------

    def _run(self) -> None:
        delay = RECONNECT_MIN_S
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, application_name=APPLICATION_NAME,
                                     connect_timeout=5, keepalives=1, keepalives_idle=10,
                                     keepalives_interval=5, keepalives_count=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    metrics.LIVE_CONNECTED.set(1)
                    if not first:
                        log.info("live listener connected again")
                        metrics.LIVE_RECONNECTS.inc()
                        self._fan_out(Changes(resync=True))
                    first = False
                    delay = RECONNECT_MIN_S
                    self._listen(conn)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                log.warning("live listener lost the database (%s); reconnecting in %.1f s", exc, delay)
            finally:
                self.listening.clear()
                metrics.LIVE_CONNECTED.set(0)
            self._stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _listen(self, conn: psycopg.Connection) -> None:
        # Real time: this paces a socket wait, not the service's domain clock.
        quiet_since = time.monotonic()
        while not self._stop.is_set():
            payloads = [n.payload for n in conn.notifies(timeout=WAIT_S, stop_after=1)]
            if not payloads:
                if time.monotonic() - quiet_since > IDLE_CHECK_S:
                    conn.execute("SELECT 1")  # a dead peer shows up here rather than never
                    quiet_since = time.monotonic()
                continue
            payloads += [n.payload for n in conn.notifies(timeout=BATCH_S)]
            quiet_since = time.monotonic()
            metrics.LIVE_NOTIFICATIONS.inc(len(payloads))
            changes = Changes()
            for payload in payloads:
                changes.add(payload)
            if changes:
                self._fan_out(changes)

    def _fan_out(self, changes: Changes) -> None:
        with self._lock:
            subs = list(self._subs)
        if subs:
            try:
                self._deliver(subs, changes)
            except psycopg.Error:
                # The app's pool cannot answer who may see what: refresh everyone rather than nobody.
                log.warning("live fan-out could not check scope; refreshing every stream", exc_info=True)
                for sub in subs:
                    sub.deliver(CHANGE)
        if self.on_batch is not None:
            self.on_batch(changes)

    def _deliver(self, subs: list[Subscription], changes: Changes) -> None:
        by_person: dict[str, list[Subscription]] = {}
        for sub in subs:
            by_person.setdefault(sub.person.person_id, []).append(sub)
        with self._pool.connection() as conn:
            conn.autocommit = True
            for person_id, group in by_person.items():
                live = group
                if person_id in changes.session_people:
                    live = []
                    for sub in group:
                        if session_person(conn, self._clock, sub.session_token) is None:
                            sub.deliver(SIGNED_OUT)
                        else:
                            live.append(sub)
                if live and touches(conn, live[0].person, changes):
                    for sub in live:
                        sub.deliver(CHANGE)
