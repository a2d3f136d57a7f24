"""Durable outbox: every event is in SQLite before ``submit`` returns; it leaves the pending set
only after the broker's PUBACK, then stays in a replay window to serve ``resend`` commands.

One SQLite file per gateway, WAL mode. ``synchronous``:

- ``NORMAL`` (default): a commit survives a crash or kill of the process (what ``Gateway.kill``
  simulates); after a power cut of the *host* the last few commits may be lost. Each commit costs
  tens of microseconds, so a simulator can drive hundreds of outboxes in one process.
- ``FULL``: each commit is fsynced; survives host power loss. Costs one fsync per commit (one per
  batch with ``submit_many``). ``run_gateway`` (a real home gateway) uses it.

Sequence numbers: a reading without a ``seq`` gets ``last_seq + 1`` of its device (persisted in
the same transaction as the event). A ``heartbeat`` does not consume a seq: it carries the
device's latest seq, so the service can spot events it never received (see ``mimamori.kernel.protocol``).

Bound: at most ``max_rows`` rows (pending + replay window). When full, room is made in this order,
each eviction counted (``stats["evicted_*"]``, persisted) and logged at WARNING, never silent:
1. the oldest rows of the replay window (already delivered);
2. the oldest pending heartbeats (superseded by newer ones);
3. the oldest pending events (the newest activity is the most valuable for watching over a
   resident now; the service sees the seq gap).

The replay window keeps acknowledged events (never heartbeats) for ``window_s`` seconds of the
clock and at most ``window_rows_per_device`` per device, pruned by ``prune``.

Unconfirmed range (``unconfirmed``/``set_unconfirmed``/``clear_unconfirmed``, ``rows_between``): the
row ids a ``Gateway`` published within its settling window after a reconnect, to re-publish although
PUBACKed (see ``gateway.service``); one row, so it survives a stop or kill of the process.

Thread safety: all methods take one lock; the connection is shared between the caller's thread
(``submit``) and the gateway's network thread (``pending``/``ack``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, Literal, Self

from mimamori.kernel.clock import Clock
from mimamori.kernel.protocol import EVENT_KINDS, Event, check_id

from .adapters import Reading

log = logging.getLogger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS device (
    device_id TEXT PRIMARY KEY,
    last_seq  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event (
    id        INTEGER PRIMARY KEY,        -- submission order
    device_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    ts_ms     INTEGER NOT NULL,           -- device time
    kind      TEXT    NOT NULL,
    value     REAL,
    acked_at  REAL                        -- NULL: pending; else in the replay window since then
);
CREATE INDEX IF NOT EXISTS event_pending ON event (id) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS event_device_seq ON event (device_id, seq);
CREATE TABLE IF NOT EXISTS memory (   -- adapter last-state memory, see gateway.adapters
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counter (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unconfirmed (  -- rows PUBACKed while the broker may have had no subscriber
    one INTEGER PRIMARY KEY CHECK (one = 1),
    lo  INTEGER NOT NULL,                 -- row ids lo..hi are to be re-published
    hi  INTEGER                           -- NULL: up to the newest row (the range was still growing)
);
"""

#: A row to publish: (outbox row id, event).
Row = tuple[int, Event]


class OutboxError(RuntimeError):
    pass


class Outbox:
    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock,
        max_rows: int = 1_000_000,
        window_s: float = 24 * 3600.0,
        window_rows_per_device: int = 10_000,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if max_rows < 10:
            raise ValueError("max_rows must be at least 10")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.clock = clock
        self.max_rows = max_rows
        self.window_s = window_s
        self.window_rows_per_device = window_rows_per_device
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(f"BEGIN; {_SCHEMA} COMMIT;")  # one transaction: one sync, not six
        self._last_seq: dict[str, int] = dict(self._db.execute("SELECT device_id, last_seq FROM device"))
        self._pending = self._db.execute("SELECT count(*) FROM event WHERE acked_at IS NULL").fetchone()[0]
        self._window = self._db.execute("SELECT count(*) FROM event WHERE acked_at IS NOT NULL").fetchone()[0]
        self._counters: dict[str, int] = dict(self._db.execute("SELECT name, value FROM counter"))
        # Row ids only grow while this process runs (see submit_many); a new process starts its
        # uplink cursor from scratch, so ids reused across a restart are harmless.
        self._last_id: int = self._db.execute("SELECT coalesce(max(id), 0) FROM event").fetchone()[0]
        self._closed = False

    # -- writing ------------------------------------------------------------------------------

    def submit(self, reading: Reading, memory_updates: Mapping[str, str] | None = None) -> Event:
        return self.submit_many((reading,), memory_updates)[0]

    def submit_many(self, readings: Sequence[Reading], memory_updates: Mapping[str, str] | None = None) -> list[Event]:
        """Store readings (and adapter memory) in one transaction; return them as numbered events."""
        for r in readings:
            check_id(r.device_id, "device")
            if r.kind not in EVENT_KINDS:
                raise ValueError(f"unknown event kind {r.kind!r}")
        with self._lock:
            self._check_open()
            events: list[Event] = []
            seqs_touched: dict[str, int] = {}
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._make_room(len(readings))
                rows = []
                # Explicit ids, never reused in this process: SQLite would give a new row the id of
                # a deleted highest row (an acked heartbeat, a pruned one), and the uplink's
                # ``id > last published`` cursor would then never see it.
                next_id = self._last_id
                for r in readings:
                    last = seqs_touched.get(r.device_id, self._last_seq.get(r.device_id, 0))
                    if r.seq is not None:
                        seq = r.seq
                        last = max(last, seq)
                    elif r.kind == "heartbeat":
                        seq = last
                    else:
                        seq = last = last + 1
                    seqs_touched[r.device_id] = last
                    value = None if r.value is None else float(r.value)
                    event = Event(r.device_id, seq, int(r.ts_ms), r.kind, value)
                    events.append(event)
                    next_id += 1
                    rows.append((next_id, event.device_id, event.seq, event.ts_ms, event.kind, event.value))
                self._db.executemany("INSERT INTO event (id, device_id, seq, ts_ms, kind, value) VALUES (?,?,?,?,?,?)", rows)
                changed = [(d, s) for d, s in seqs_touched.items() if s != self._last_seq.get(d)]
                if changed:
                    self._db.executemany(
                        "INSERT INTO device (device_id, last_seq) VALUES (?,?) "
                        "ON CONFLICT (device_id) DO UPDATE SET last_seq = excluded.last_seq",
                        changed,
                    )
                if memory_updates:
                    self._db.executemany(
                        "INSERT INTO memory (key, value) VALUES (?,?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        memory_updates.items(),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._last_seq.update(seqs_touched)
            self._pending += len(rows)
            self._last_id = next_id
            return events

    def ack(self, row_ids: Iterable[int]) -> int:
        """PUBACK received for these rows: out of the pending set, into the replay window (heartbeats
        are deleted). Returns how many pending rows were acknowledged (repeats count once)."""
        ids = [(i,) for i in row_ids]
        if not ids:
            return 0
        with self._lock:
            self._check_open()
            now = self.clock.now()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany("DELETE FROM event WHERE id = ? AND acked_at IS NULL AND kind = 'heartbeat'", ids)
                deleted = self._db.total_changes - before
                self._db.executemany("UPDATE event SET acked_at = ? WHERE id = ? AND acked_at IS NULL", [(now, i) for (i,) in ids])
                moved = self._db.total_changes - before - deleted
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._pending -= deleted + moved
            self._window += moved
            return deleted + moved

    def prune(self) -> int:
        """Drop replay-window rows older than ``window_s`` or beyond the per-device bound."""
        with self._lock:
            self._check_open()
            cutoff = self.clock.now() - self.window_s
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute("DELETE FROM event WHERE acked_at IS NOT NULL AND acked_at < ?", (cutoff,))
                removed = cur.rowcount
                over = self._db.execute(
                    "SELECT device_id FROM event WHERE acked_at IS NOT NULL GROUP BY device_id HAVING count(*) > ?",
                    (self.window_rows_per_device,),
                ).fetchall()
                for (device_id,) in over:
                    cur = self._db.execute(
                        "DELETE FROM event WHERE id IN (SELECT id FROM event WHERE device_id = ? AND acked_at IS NOT NULL "
                        "ORDER BY id DESC LIMIT -1 OFFSET ?)",
                        (device_id, self.window_rows_per_device),
                    )
                    removed += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._window -= removed
            return removed

    def _make_room(self, incoming: int) -> None:
        """Called inside a transaction: evict per the documented policy so ``incoming`` rows fit."""
        excess = self._pending + self._window + incoming - self.max_rows
        if excess <= 0:
            return
        # Evict a little more than needed so a full outbox does not pay this on every submit.
        target = excess + max(1, self.max_rows // 100)
        for name, where in (
            ("evicted_window", "acked_at IS NOT NULL"),
            ("evicted_heartbeats", "acked_at IS NULL AND kind = 'heartbeat'"),
            ("evicted_pending", "acked_at IS NULL"),
        ):
            if target <= 0:
                break
            cur = self._db.execute(f"DELETE FROM event WHERE id IN (SELECT id FROM event WHERE {where} ORDER BY id LIMIT ?)", (target,))
            n = cur.rowcount
            if not n:
                continue
            target -= n
            if name == "evicted_window":
                self._window -= n
            else:
                self._pending -= n
            self._counters[name] = self._counters.get(name, 0) + n
            self._db.execute(
                "INSERT INTO counter (name, value) VALUES (?,?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, self._counters[name]),
            )
            level = logging.INFO if name == "evicted_window" else logging.WARNING
            log.log(level, "outbox %s full (%d rows): %s %d rows (total %d)", self.path.name, self.max_rows, name, n, self._counters[name])

    # -- reading ------------------------------------------------------------------------------

    def pending(self, limit: int, after_id: int = 0) -> list[Row]:
        """Pending rows in submission order, with row id greater than ``after_id``."""
        with self._lock:
            self._check_open()
            cur = self._db.execute(
                "SELECT id, device_id, seq, ts_ms, kind, value FROM event WHERE acked_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [(i, Event(d, s, t, k, v)) for i, d, s, t, k, v in cur]

    def replay(self, device_id: str, from_seq: int, to_seq: int, limit: int = 10_000) -> list[Row]:
        """Events of ``device_id`` with ``from_seq <= seq <= to_seq`` still held (sent or pending),
        heartbeats excluded, one row per seq."""
        with self._lock:
            self._check_open()
            cur = self._db.execute(
                "SELECT max(id), device_id, seq, ts_ms, kind, value FROM event "
                "WHERE device_id = ? AND seq BETWEEN ? AND ? AND kind != 'heartbeat' GROUP BY seq ORDER BY seq LIMIT ?",
                (device_id, from_seq, to_seq, limit),
            )
            return [(i, Event(d, s, t, k, v)) for i, d, s, t, k, v in cur]

    def rows_between(self, after_id: int, upto_id: int, limit: int) -> list[Row]:
        """Events (not heartbeats) still held, pending or in the replay window, with
        ``after_id < id <= upto_id``, in submission order."""
        with self._lock:
            self._check_open()
            cur = self._db.execute(
                "SELECT id, device_id, seq, ts_ms, kind, value FROM event "
                "WHERE id > ? AND id <= ? AND kind != 'heartbeat' ORDER BY id LIMIT ?",
                (after_id, upto_id, limit),
            )
            return [(i, Event(d, s, t, k, v)) for i, d, s, t, k, v in cur]

    def first_pending_id(self) -> int | None:
        """The oldest pending row's id (``None`` when nothing is pending)."""
        with self._lock:
            self._check_open()
            return self._db.execute("SELECT min(id) FROM event WHERE acked_at IS NULL").fetchone()[0]

    def unconfirmed(self) -> tuple[int, int | None] | None:
        """The recorded range of row ids to re-publish (see ``Gateway``'s settling window):
        ``(lo, hi)``, ``hi`` ``None`` when it was still growing; ``None`` when there is none."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT lo, hi FROM unconfirmed").fetchone()
            return None if row is None else (row[0], row[1])

    def set_unconfirmed(self, lo: int, hi: int | None) -> None:
        with self._lock:
            self._check_open()
            self._db.execute(
                "INSERT INTO unconfirmed (one, lo, hi) VALUES (1, ?, ?) ON CONFLICT (one) DO UPDATE SET lo = excluded.lo, hi = excluded.hi",
                (lo, hi),
            )

    def clear_unconfirmed(self) -> None:
        with self._lock:
            self._check_open()
            self._db.execute("DELETE FROM unconfirmed")

    def memory(self) -> dict[str, str]:
        with self._lock:
            self._check_open()
            return dict(self._db.execute("SELECT key, value FROM memory"))

    def last_seq(self, device_id: str) -> int:
        with self._lock:
            return self._last_seq.get(device_id, 0)

    @property
    def depth(self) -> int:
        """Events not yet acknowledged by the broker."""
        return self._pending

    @property
    def last_id(self) -> int:
        """The highest row id submitted: nothing newer to fetch when a reader has reached it."""
        return self._last_id

    @property
    def window_rows(self) -> int:
        return self._window

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    # -- lifecycle ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self.path} is closed")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
