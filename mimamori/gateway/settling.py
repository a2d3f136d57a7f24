"""The settling window after a reconnect: which outbox rows count as unconfirmed although PUBACKed.

A PUBACK only says the broker took a message. Mosquitto 2.0.11 does not restore shared subscriptions
after a restart, so until the ingest has subscribed again it PUBACKs and drops what the gateways
publish (found by ``mimamori chaos --faults broker_restart``: a third of the events published then
were lost). So after a connection that follows a *lost* one, every row published during the first
``settle_s`` real seconds counts as unconfirmed: the rows ``lo..hi`` (``lo`` = the oldest row pending
at the reconnect, ``hi`` = the newest row published during the window) are re-published from the
outbox once the window has passed, as resends (negative row ids, like the ``resend`` command).

The state is two row ids and a cursor, and the range is recorded in the outbox, so a broker that
restarts again during the window widens the range, and a stop or kill during it does not forget it:
a graceful stop re-publishes the range at once (best effort) and the next start re-publishes it again.
Only the gateway's own thread touches a ``SettlingWindow``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mimamori.kernel.protocol import Event

from .outbox import Outbox

log = logging.getLogger(__name__)


class SettlingWindow:
    """Rows ``lo..hi`` are unconfirmed while ``until`` (monotonic) has not passed; afterwards they are
    re-published from ``cursor`` (exclusive) up to ``replay_hi``.
    """

    def __init__(self, outbox: Outbox, settle_s: float, gateway_id: str) -> None:
        self.outbox = outbox
        self.settle_s = max(0.0, settle_s)
        self.gateway_id = gateway_id
        self.until = 0.0
        self.lo = 0
        self.hi = 0
        self.cursor = 0
        self.replay_hi = 0
        recorded = outbox.unconfirmed()
        if recorded is not None:  # a stop or kill during a window: re-publish once connected
            lo, hi = recorded
            self.cursor, self.replay_hi = lo - 1, outbox.last_id if hi is None else hi

    @property
    def settling(self) -> bool:
        return bool(self.until)

    @property
    def replay_pending(self) -> bool:
        return self.cursor < self.replay_hi

    @property
    def idle(self) -> bool:
        """Neither settling nor holding a range to re-publish."""
        return not self.until and not self.replay_hi

    def passed(self) -> bool:
        return bool(self.until) and time.monotonic() >= self.until

    def open(self) -> None:
        """A reconnect: what is published from now until ``settle_s`` has passed may be PUBACKed and
        dropped by a broker that lost the service's subscriptions. Widen the unconfirmed range to
        the oldest pending row (republished right away) and any replay not finished yet.
        """
        if self.settle_s <= 0:
            return
        first_pending = self.outbox.first_pending_id()
        lo = self.outbox.last_id + 1 if first_pending is None else first_pending
        hi = 0
        if self.until:  # the broker went away again during the window
            lo, hi = min(lo, self.lo), self.hi
        if self.cursor < self.replay_hi:  # a replay cut short: do it again after this window
            lo, hi = min(lo, self.cursor + 1), max(hi, self.replay_hi)
        self.cursor = self.replay_hi = 0
        self.lo, self.hi = lo, hi
        self.until = time.monotonic() + self.settle_s
        self.outbox.set_unconfirmed(lo, None)
        log.info("gateway %s: settling for %.0fs; rows from %d count as unconfirmed", self.gateway_id, self.settle_s, lo)

    def published_up_to(self, row_id: int) -> None:
        """Pending rows up to ``row_id`` went out; while settling they widen the range."""
        if self.until:
            self.hi = max(self.hi, row_id)

    def close(self, last_published_id: int) -> None:
        """The window has passed (or we stop): schedule the re-publication of ``lo..hi``."""
        hi = max(self.hi, last_published_id)
        self.until = 0.0
        if hi >= self.lo:
            self.cursor, self.replay_hi = self.lo - 1, hi
            self.outbox.set_unconfirmed(self.lo, hi)
            log.info("gateway %s: re-publishing rows %d..%d sent while settling", self.gateway_id, self.lo, hi)
        else:
            self.outbox.clear_unconfirmed()

    def replay(self, publish: Callable[[int, Event], bool], room: int, *, final: bool = False) -> tuple[int, int]:
        """Publish the next unconfirmed rows as resends through ``publish`` (False: the connection is
        going down), within ``room``; returns ``(room left, rows re-published)``. When the range is
        done it is forgotten, except on the way out (``final``): the next start re-publishes it once
        more, since this stop may still fall within the window.
        """
        sent = 0
        while room > 0 and self.cursor < self.replay_hi:
            rows = self.outbox.rows_between(self.cursor, self.replay_hi, min(room, 1000))
            if not rows:
                self.cursor = self.replay_hi
                break
            for row_id, event in rows:
                # Negative row ids mark resends: their PUBACK still acks the row if it was pending.
                if not publish(-row_id, event):
                    return 0, sent  # the connection is going down; this row is redone after the next window
                self.cursor = row_id
                sent += 1
                room -= 1
        if self.replay_hi and self.cursor >= self.replay_hi and not final:
            self.cursor = self.replay_hi = 0
            self.outbox.clear_unconfirmed()
        return room, sent
