"""The detector's view of the fleet: which households, devices and gateways it scores (``load_fleet``),
the shard it owns (``Shard``, held through ``ShardLease``), and the wake-up when the fleet changes
(``FleetListener`` on the contract's ``mimamori_fleet`` channel).
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import zlib
from dataclasses import dataclass, field

import numpy as np
import psycopg

from mimamori.detector import model as m
from mimamori.kernel import contract

log = logging.getLogger("mimamori.detector.service")



_DEV = {"bulb": m.DEV_BULB, "motion": m.DEV_MOTION, "door": m.DEV_DOOR, "plug": m.DEV_PLUG}


_TZ_OFFSETS = {"Asia/Tokyo": 9 * 3600, "UTC": 0}


@dataclass
class Fleet:
    households: list[str]
    areas: list[str | None]
    device_index: dict[str, tuple[int, int]]  # device_id -> (household row, column)
    devices: list[list[str]]  # per household, device ids by column
    gateway_of: dict[str, list[int]]  # gateway_id -> household rows
    row_of: dict[str, int] = field(default_factory=dict)  # household_id -> row
    #: per household, what its model row was learned with (time zone, devices and kinds by column):
    #: a saved or kept row is used only while this is unchanged.
    layouts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the households whose area (or, without one, household id) hashes to it."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"a shard looks like 0/1 or 2/4, got {text!r}") from None
        if not 0 <= i < n:
            raise ValueError(f"shard index must be in 0..{n - 1}, got {text!r}")
        return cls(i, n)

    @property
    def key(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, household_id: str, area: str | None) -> bool:
        return self.count == 1 or zlib.crc32((area or household_id).encode()) % self.count == self.index


#: The one shard of an unsharded detector.
WHOLE_FLEET = Shard()


def load_fleet(conn: psycopg.Connection, shard: Shard = WHOLE_FLEET) -> tuple[Fleet, np.ndarray, np.ndarray, np.ndarray]:
    hh_rows = [r for r in conn.execute("SELECT household_id, area, timezone FROM households ORDER BY household_id").fetchall()
               if shard.owns(r[0], r[1])]
    households = [r[0] for r in hh_rows]
    row_of = {h: i for i, h in enumerate(households)}
    area_names = sorted({r[1] for r in hh_rows if r[1] is not None})
    area_idx = np.array([area_names.index(r[1]) + 1 if r[1] is not None else 0 for r in hh_rows], np.int32)
    tz = np.array([_TZ_OFFSETS.get(r[2], 9 * 3600) for r in hh_rows], np.int32)
    kinds = np.full((len(households), m.MAX_DEVICES), m.DEV_NONE, np.int8)
    devices: list[list[str]] = [[] for _ in households]
    device_index: dict[str, tuple[int, int]] = {}
    for device_id, household_id, kind in conn.execute(
        "SELECT device_id, household_id, kind FROM devices WHERE household_id IS NOT NULL AND kind IS NOT NULL ORDER BY device_id"
    ):
        r = row_of.get(household_id)
        if r is None or len(devices[r]) >= m.MAX_DEVICES:
            continue
        c = len(devices[r])
        devices[r].append(device_id)
        kinds[r, c] = _DEV[kind]
        device_index[device_id] = (r, c)
    gateway_of: dict[str, list[int]] = {}
    for gateway_id, household_id in conn.execute("SELECT gateway_id, household_id FROM gateways"):
        if household_id in row_of:
            gateway_of.setdefault(gateway_id, []).append(row_of[household_id])
    layouts = [f"{tz[r]}|" + ",".join(f"{d}:{int(kinds[r, c])}" for c, d in enumerate(devices[r])) for r in range(len(households))]
    fleet = Fleet(households, [r[1] for r in hh_rows], device_index, devices, gateway_of, row_of, layouts)
    return fleet, kinds, area_idx, tz


#: What the model's layout depends on: households (area, time zone), paired devices, gateways. A
#: change means a rebuild; an unchanged fleet never needs one (the model is updated online).
FLEET_FINGERPRINT_SQL = """
SELECT (SELECT count(*) || ':' || coalesce(sum(hashtext(household_id || '|' || coalesce(area, '') || '|' || coalesce(timezone, ''))), 0)
        FROM households),
       (SELECT count(*) || ':' || coalesce(sum(hashtext(device_id || '|' || household_id || '|' || kind)), 0)
        FROM devices WHERE household_id IS NOT NULL AND kind IS NOT NULL),
       (SELECT count(*) || ':' || coalesce(sum(hashtext(gateway_id || '|' || coalesce(household_id, ''))), 0) FROM gateways)
"""


def fleet_fingerprint(conn: psycopg.Connection) -> tuple[str, ...]:
    return tuple(conn.execute(FLEET_FINGERPRINT_SQL).fetchone())  # type: ignore[arg-type]


class ShardLease:
    """One process per shard: a session advisory lock on a connection of its own. A second process
    for the same shard waits (a standby); the lock goes with the holder's connection, so a killed
    holder frees it at once.
    """

    def __init__(self, database_url: str, shard: Shard) -> None:
        self.url = database_url
        self.key = zlib.crc32(f"mimamori-detector-{shard.key}".encode())
        self.shard = shard
        self.conn: psycopg.Connection | None = None

    def acquire(self, stop: threading.Event, *, poll_s: float = 1.0) -> bool:
        waited = False
        while not stop.is_set():
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                if self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:  # type: ignore[index]
                    if waited:
                        log.info("detector: shard %s taken over", self.shard.key)
                    return True
                if not waited:
                    log.info("detector: shard %s is held by another process; waiting as a standby", self.shard.key)
                    waited = True
            except psycopg.OperationalError:
                log.warning("detector: database unavailable; retrying in 2 s")
                self.release()
                stop.wait(2.0)
                continue
            stop.wait(poll_s)
        return False

    def held(self) -> bool:
        try:
            return self.conn is not None and not self.conn.closed and self.conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None


class FleetListener:
    """Wakes the loop when households, paired devices or gateways change (migration 0047's triggers)."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.conn.execute(f"LISTEN {contract.CHANNEL_FLEET}")

    def wait(self, timeout_s: float) -> bool:
        """True when a change was notified within ``timeout_s`` real seconds (all pending ones consumed)."""
        got = False
        ready, _, _ = select.select([self.conn.fileno()], [], [], max(0.0, timeout_s))
        if ready:
            for _ in self.conn.notifies(timeout=0.0):
                got = True
        return got

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
