"""Gap sweeper: find events that never arrived and ask the gateways to resend them.

The broker's PUBACK to a gateway is not the end of the road (a broker may drop queued messages),
so "nothing lost" is made end to end: every ``interval_s`` one ingest process (a PostgreSQL
advisory lock decides which) runs ``gaps.sql`` and publishes a ``resend`` command per hole to
``protocol.command_topic(gateway, device)``. The same hole is asked for again only after
``repeat_after_s`` (the gateway may be offline, or the events may be gone from its replay window).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources

import psycopg

from mimamori.kernel import protocol
from mimamori.kernel.clock import Clock, as_datetime

log = logging.getLogger(__name__)

GAPS_SQL = resources.files(__package__).joinpath("gaps.sql").read_text(encoding="utf-8")
#: pg_try_advisory_xact_lock key: "ingest-gaps" (one sweeper at a time across processes).
SWEEP_LOCK_KEY = 0x696E67657374_6770

#: (device_id, from_seq, to_seq)
Hole = tuple[str, int, int]


@dataclass
class ResendPlanner:
    """Pure rate limiting of resend requests: each hole at most once per ``repeat_after_s``."""

    repeat_after_s: float = 120.0
    asked: dict[Hole, float] = field(default_factory=dict)

    def plan(self, rows: list[tuple[str, str, int, int]], now: float) -> list[tuple[str, str, protocol.Command]]:
        """``rows`` of (device, gateway, from_seq, to_seq) -> (gateway, device, Command) to send now."""
        for hole, at in list(self.asked.items()):
            if now - at >= self.repeat_after_s:
                del self.asked[hole]
        out = []
        for device_id, gateway_id, lo, hi in rows:
            hole = (device_id, lo, hi)
            if hole in self.asked or hi < lo:
                continue
            self.asked[hole] = now
            out.append((gateway_id, device_id, protocol.Command("resend", {"from_seq": lo, "to_seq": hi})))
        return out


@dataclass
class GapSweeper:
    clock: Clock
    interval_s: float = 30.0
    window_s: float = 3600.0  # devices whose state changed this recently (reception time) are checked
    depth: int = 1000  # newest events per device looked at
    grace_s: float = 10.0  # a gap must be this old before it is reported
    max_range: int = 1000
    limit: int = 500
    planner: ResendPlanner = field(default_factory=ResendPlanner)
    next_at: float | None = None

    def due(self) -> bool:
        now = self.clock.now()
        if self.next_at is None:
            self.next_at = now + self.interval_s
        return now >= self.next_at

    def sweep(self, conn: psycopg.Connection) -> list[tuple[str, bytes]]:
        """Return (topic, payload) resend commands to publish (QoS 1). Commits its transaction."""
        now = self.clock.now()
        self.next_at = now + self.interval_s
        params = {
            "since": as_datetime(now) - timedelta(seconds=self.window_s),
            "settled": as_datetime(now) - timedelta(seconds=self.grace_s),
            "depth": self.depth,
            "max_range": self.max_range,
            "limit": self.limit,
        }
        with conn.transaction():
            locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SWEEP_LOCK_KEY,)).fetchone()
            if not locked or not locked[0]:
                return []
            rows = conn.execute(GAPS_SQL, params).fetchall()
        commands = self.planner.plan([tuple(r) for r in rows], now)  # type: ignore[misc]
        if commands:
            log.info("gap sweep: %d resend requests", len(commands))
        return [(protocol.command_topic(gw, dev), protocol.encode_command(cmd)) for gw, dev, cmd in commands]
