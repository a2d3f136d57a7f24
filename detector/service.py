"""The detector service (``mimamori detector``, also inside ``serve``): I/O around the pure model.

Every tick (``tick_s`` of the given clock) it takes the events that arrived since the last tick
into the model, reads device health (``device_state``), gateway status (the MQTT last will, in
``gateways``) and away periods, scores every household, and opens / updates / closes incidents
(one open per household and kind; the area outage per area), with the evidence.

Restart-safe: the model is rebuilt from the last ``history_days`` of ``events`` on start, and
incident writes are idempotent (the partial unique indexes of 0004 + ON CONFLICT), so a crash
between two ticks loses nothing and duplicates nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg

from detector import metrics
from detector import model as m
from mimamori.clock import Clock
from mimamori.observability import register_readiness, unregister_readiness

log = logging.getLogger(__name__)

_DEV = {"bulb": m.DEV_BULB, "motion": m.DEV_MOTION, "door": m.DEV_DOOR, "plug": m.DEV_PLUG}
_KIND = {name: i for i, name in enumerate(m.EVENT_KINDS)}
WELFARE = ("inactivity", "long_on")
_TZ_OFFSETS = {"Asia/Tokyo": 9 * 3600, "UTC": 0}


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


@dataclass
class Fleet:
    households: list[str]
    areas: list[str | None]
    device_index: dict[str, tuple[int, int]]  # device_id -> (household row, column)
    devices: list[list[str]]  # per household, device ids by column
    gateway_of: dict[str, list[int]]  # gateway_id -> household rows
    row_of: dict[str, int] = field(default_factory=dict)  # household_id -> row


def load_fleet(conn: psycopg.Connection) -> tuple[Fleet, np.ndarray, np.ndarray, np.ndarray]:
    hh_rows = conn.execute("SELECT household_id, area, timezone FROM households ORDER BY household_id").fetchall()
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
    fleet = Fleet(households, [r[1] for r in hh_rows], device_index, devices, gateway_of, row_of)
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


class DetectorService:
    def __init__(self, database_url: str, clock: Clock, *, params: m.DetectorParams = m.DEFAULT_PARAMS,
                 history_days: float = 56.0, worker: str = "detector") -> None:
        self.url = database_url
        self.clock = clock
        self.params = params
        self.history_days = history_days
        self.worker = worker
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.cursor: datetime | None = None
        self._seen_recent: set[tuple[str, int]] = set()
        self._last_prior = 0.0
        self._health_cursor: datetime | None = None
        self.newest_event_time: float | None = None  # device time of the newest event seen (for the lag metric)
        self.last_tick_at: float | None = None  # the clock at the latest finished tick (readiness)
        self._asked_now = np.zeros(0, bool)  # homes asking their resident first, as of the latest tick
        self.rebuild()

    # -- model state ---------------------------------------------------------------------------
    def rebuild(self) -> None:
        """(Re)load households and devices and replay recent history into a fresh model."""
        now = self.clock.now()
        self.fleet, kinds, area, tz = load_fleet(self.conn)
        self.state = m.new_state(kinds, epoch=now - self.history_days * 86400, tz_offset_s=tz, area=area, params=self.params)
        since = _ts(now - self.history_days * 86400)
        self.cursor = None
        self._health_cursor = None
        self._take_events("time >= %s", (since,))
        # Homes with no activity in the history are watched from now (the hard cap), not from its start.
        self.state.resume_from[np.isnan(self.state.last_activity)] = now
        m.refresh_prior(self.state)
        self._last_prior = now
        self.conn.execute(
            """INSERT INTO detector_runs (worker, started_at, households) VALUES (%s, %s, %s)
               ON CONFLICT (worker) DO UPDATE SET started_at = EXCLUDED.started_at, households = EXCLUDED.households, updated_at = now()""",
            (self.worker, _ts(now), len(self.fleet.households)),
        )

    def _take_events(self, where: str, args: tuple[Any, ...]) -> int:
        rows = self.conn.execute(
            # least(time, received_at): a device clock never puts activity past its receipt (issue 17).
            f"""SELECT device_id, seq, extract(epoch FROM least(time, received_at)), kind, received_at FROM events
                WHERE household_id IS NOT NULL AND {where} ORDER BY time""",
            args,
        ).fetchall()
        hh, dev, t, kind = [], [], [], []
        newest = self.cursor
        seen_now: set[tuple[str, int]] = set()
        for device_id, seq, ts, k, received in rows:
            seen_now.add((device_id, seq))
            if (device_id, seq) in self._seen_recent:
                continue
            if newest is None or received > newest:
                newest = received
            pos = self.fleet.device_index.get(device_id)
            if pos is None:
                continue
            hh.append(pos[0])
            dev.append(pos[1])
            t.append(float(ts))
            if self.newest_event_time is None or float(ts) > self.newest_event_time:
                self.newest_event_time = float(ts)
            kind.append(_KIND[k])
        self._seen_recent = seen_now
        metrics.EVENTS_TAKEN.inc(len(hh))
        if hh:
            m.observe(self.state, np.array(hh), np.array(dev), np.array(t), np.array(kind), self.params)
        self.cursor = newest
        return len(hh)

    def _read_health(self, now: float) -> None:
        st = self.state
        # Only rows changed since the last read (ingest bumps updated_at), so a tick stays cheap.
        rows = self.conn.execute(
            """SELECT device_id, extract(epoch FROM last_seen_at), extract(epoch FROM last_heartbeat_at), updated_at
               FROM device_state WHERE %s::timestamptz IS NULL OR updated_at > %s""",
            (self._health_cursor, self._health_cursor),
        ).fetchall()
        for device_id, last_seen, last_hb, updated in rows:
            if self._health_cursor is None or updated > self._health_cursor:
                self._health_cursor = updated
            pos = self.fleet.device_index.get(device_id)
            if pos is None:
                continue
            if last_seen is not None:
                st.dev_last_seen[pos] = np.float32(max(float(last_seen) - st.epoch, np.nan_to_num(st.dev_last_seen[pos], nan=-1e9)))
            if last_hb is not None:
                st.dev_heartbeats[pos] = True
        st.gateway_offline_since[:] = np.nan
        for gateway_id, changed in self.conn.execute(
            "SELECT gateway_id, extract(epoch FROM status_changed_at) FROM gateways WHERE status = 'offline'"
        ):
            for r in self.fleet.gateway_of.get(gateway_id, []):
                # Clamped to now: a status stamped by a clock ahead of ours still waits out the grace.
                st.gateway_offline_since[r] = min(float(changed), now) if changed is not None else now

    def _away(self, now: float) -> np.ndarray:
        away = np.full(self.state.n, np.nan)
        rows = self.conn.execute(
            "SELECT household_id, max(extract(epoch FROM until)) FROM away_periods WHERE starts_at <= %s AND until > %s GROUP BY household_id",
            (_ts(now), _ts(now)),
        ).fetchall()
        for household_id, until in rows:
            if household_id in self.fleet.row_of:
                away[self.fleet.row_of[household_id]] = float(until)
        return away

    def _asked_first(self) -> np.ndarray:
        """Homes whose alerts ask the resident before the team (view ``households_asked_first``)."""
        asked = np.zeros(self.state.n, bool)
        for (household_id,) in self.conn.execute("SELECT household_id FROM households_asked_first"):
            if household_id in self.fleet.row_of:
                asked[self.fleet.row_of[household_id]] = True
        return asked

    # -- one tick ----------------------------------------------------------------------------
    def tick(self) -> dict[str, int]:
        started = time.perf_counter()
        now = self.clock.now()
        if self.cursor is None:
            self._take_events("time <= %s", (_ts(now),))
        else:
            # Re-read a short overlap: rows committed late with an earlier received_at are not missed;
            # (device_id, seq) already taken are skipped.
            self._take_events("received_at > %s", (self.cursor - timedelta(seconds=30),))
        if now - self._last_prior >= 86400:
            m.refresh_prior(self.state)
            self._last_prior = now
        self._read_health(now)
        self._asked_now = self._asked_first()
        sc = m.score(self.state, now, away_until=self._away(now), asked_first=self._asked_now, p=self.params)
        counts = self._write_incidents(sc, now)
        self.conn.execute(
            """UPDATE detector_runs SET last_tick_at = %s, events_cursor = %s, tick_ms = %s, open_incidents = %s, updated_at = now()
               WHERE worker = %s""",
            (_ts(now), self.cursor, 1000 * (time.perf_counter() - started), counts["open"], self.worker),
        )
        self.last_tick_at = now
        metrics.record_tick(
            seconds=time.perf_counter() - started, households=self.state.n,
            opened=counts["opened_by_kind"], closed=counts["closed_by_kind"], open_now=counts["open_by_kind"],
            lag_s=None if self.newest_event_time is None else now - self.newest_event_time, now=now)
        return counts

    def ready(self, max_tick_age_s: float) -> bool:
        """Readiness: the database answers and the latest tick is recent (on the detector's clock)."""
        if self.last_tick_at is None or self.clock.now() - self.last_tick_at > max_tick_age_s:
            return False
        with psycopg.connect(self.url, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def _evidence(self, sc: m.Scores, r: int, kind: str) -> tuple[str | None, float | None, dict[str, Any]]:
        iso = lambda x: _ts(float(x)).isoformat() if np.isfinite(x) else None  # noqa: E731
        # ``episode`` names what is alarming (this silence, this light since then, these devices), so an
        # incident a watcher closed is not reopened for the same episode.
        if kind == "inactivity":
            return (f"model:{m.RULES[sc.inactivity_rule[r]]}", float(sc.inactivity_score[r]),
                    {"episode": f"silence:{iso(sc.silence_start[r])}",
                     "silence_start": iso(sc.silence_start[r]), "expected_activity_by": iso(sc.expected_by[r]),
                     "alarm_at": iso(sc.alarm_at[r]), "score": float(sc.inactivity_score[r]), "rule": m.RULES[sc.inactivity_rule[r]],
                     # the faster threshold of a home whose resident is asked first (the watcher's "why")
                     "asked_first": bool(self._asked_now[r]) if r < len(self._asked_now) else False})
        if kind == "long_on":
            sw = int(sc.long_on_switch[r])
            cols = np.flatnonzero(self.state.dev_switch[r] == sw)
            device = self.fleet.devices[r][int(cols[0])] if len(cols) else None
            return ("model:long_on", float(sc.long_on_hours[r]),
                    {"episode": f"on:{device}:{iso(sc.long_on_since[r])}",
                     "device": device, "on_since": iso(sc.long_on_since[r]), "on_hours": float(sc.long_on_hours[r]),
                     "silence_start": iso(sc.silence_start[r]), "expected_activity_by": iso(sc.expected_by[r])})
        devices = [self.fleet.devices[r][c] for c in np.flatnonzero(sc.offline_devices[r]) if c < len(self.fleet.devices[r])]
        return ("heartbeat_timeout" if not sc.gateway_offline[r] else "gateway_last_will", float(len(devices)),
                {"episode": "offline:" + ",".join(devices) + (":gateway" if sc.gateway_offline[r] else ""),
                 "devices": devices, "gateway_offline": bool(sc.gateway_offline[r])})

    def _write_incidents(self, sc: m.Scores, now: float) -> dict[str, int]:
        conditions = {"inactivity": sc.inactivity, "long_on": sc.long_on, "device_offline": sc.device_offline}
        opened = updated = closed = 0
        opened_by_kind = dict.fromkeys(metrics.INCIDENT_KINDS, 0)
        closed_by_kind = dict.fromkeys(metrics.INCIDENT_KINDS, 0)
        open_rows = {(h, k): (i, s) for i, h, k, s in self.conn.execute(
            "SELECT incident_id, household_id, kind, status FROM incidents WHERE status IN ('open', 'claimed') AND household_id IS NOT NULL")}
        # Episodes a watcher (or the coordinator) already closed recently: not reopened.
        done = {(h, k, e) for h, k, e in self.conn.execute(
            """SELECT household_id, kind, evidence->>'episode' FROM incidents
               WHERE status IN ('resolved', 'cancelled') AND household_id IS NOT NULL AND closed_at > %s""",
            (_ts(now - 7 * 86400),))}
        with self.conn.transaction():
            for kind, cond in conditions.items():
                for r in np.flatnonzero(cond).tolist():
                    rule, score, evidence = self._evidence(sc, r, kind)
                    hid = self.fleet.households[r]
                    if (hid, kind, evidence["episode"]) in done and (hid, kind) not in open_rows:
                        continue
                    res = self.conn.execute(
                        """INSERT INTO incidents (household_id, area, kind, opened_at, updated_at, rule, score, evidence)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT (household_id, kind) WHERE status IN ('open', 'claimed') AND household_id IS NOT NULL
                           DO UPDATE SET updated_at = EXCLUDED.updated_at, score = EXCLUDED.score,
                                         evidence = incidents.evidence || EXCLUDED.evidence
                           RETURNING (xmax = 0)""",
                        (hid, self.fleet.areas[r], kind, _ts(now), _ts(now), rule, score, json.dumps(evidence)),
                    ).fetchone()
                    if res and res[0]:
                        opened += 1
                        opened_by_kind[kind] += 1
                    else:
                        updated += 1
                # Conditions that cleared: an unclaimed incident closes itself (a claimed one waits for its
                # watcher, and so does one whose resident asked for help: a switch reached is no all-clear).
                for (hid, k), (incident_id, status) in open_rows.items():
                    r = self.fleet.row_of.get(hid)
                    if k != kind or status != "open" or r is None or cond[r]:
                        continue
                    outcome = "activity_resumed" if kind in WELFARE else "auto_closed"
                    done_now = self.conn.execute(
                        "UPDATE incidents SET status = 'resolved', closed_at = %s, updated_at = %s, outcome = %s"
                        " WHERE incident_id = %s AND status = 'open' AND NOT (evidence ? 'help_asked_at')",
                        (_ts(now), _ts(now), outcome, incident_id),
                    ).rowcount
                    closed += done_now
                    closed_by_kind[kind] += done_now
            # Area outages: one incident per area.
            areas_out = sorted({self.fleet.areas[r] for r in np.flatnonzero(sc.area_outage) if self.fleet.areas[r]})
            for area in areas_out:
                down = int(sum(1 for r in np.flatnonzero(sc.gateway_offline) if self.fleet.areas[r] == area))
                res = self.conn.execute(
                    """INSERT INTO incidents (household_id, area, kind, opened_at, updated_at, rule, score, evidence)
                       VALUES (NULL, %s, 'area_outage', %s, %s, 'gateways_offline', %s, %s)
                       ON CONFLICT (area) WHERE status IN ('open', 'claimed') AND kind = 'area_outage'
                       DO UPDATE SET updated_at = EXCLUDED.updated_at, score = EXCLUDED.score, evidence = EXCLUDED.evidence
                       RETURNING (xmax = 0)""",
                    (area, _ts(now), _ts(now), float(down), json.dumps({"gateways_offline": down})),
                ).fetchone()
                opened += int(bool(res and res[0]))
                opened_by_kind["area_outage"] += int(bool(res and res[0]))
            cur = self.conn.execute(
                """UPDATE incidents SET status = 'resolved', closed_at = %s, updated_at = %s, outcome = 'auto_closed'
                   WHERE kind = 'area_outage' AND status = 'open' AND NOT (area = ANY(%s::text[]))""",
                (_ts(now), _ts(now), areas_out),
            )
            closed += cur.rowcount
            closed_by_kind["area_outage"] += cur.rowcount
        open_by_kind = {k: int(n) for k, n in self.conn.execute(
            "SELECT kind, count(*) FROM incidents WHERE status IN ('open', 'claimed') GROUP BY kind")}
        return {"opened": opened, "updated": updated, "closed": closed, "open": sum(open_by_kind.values()),
                "opened_by_kind": opened_by_kind, "closed_by_kind": closed_by_kind, "open_by_kind": open_by_kind}

    def close(self) -> None:
        self.conn.close()


def run_detector(settings: Any, *, database_url: str, clock: Clock, stop: threading.Event, tick_s: float = 60.0,
                 fleet_check_every_s: float = 30.0) -> None:
    """The service loop: tick until ``stop`` is set. The model is rebuilt when households, devices or
    gateways change (checked at most every ``fleet_check_every_s`` real seconds, so an accelerated
    clock does not rebuild 56 days of history every simulated hour)."""
    service = DetectorService(database_url, clock)
    fingerprint = fleet_fingerprint(service.conn)
    last_check = time.monotonic()
    # Ready while the database answers and ticks keep coming (a rebuild or a slow tick may take a while).
    register_readiness("detector", lambda: service.ready(max(120.0, 5 * tick_s)))
    try:
        while not stop.is_set():
            try:
                counts = service.tick()
                if counts["opened"] or counts["closed"]:
                    log.info("detector tick: %s", counts)
                if time.monotonic() - last_check >= fleet_check_every_s:
                    last_check = time.monotonic()
                    now_fingerprint = fleet_fingerprint(service.conn)
                    if now_fingerprint != fingerprint:
                        service.rebuild()
                        fingerprint = now_fingerprint
            except psycopg.OperationalError:
                log.exception("detector tick failed; reconnecting")
                service.close()
                # A fresh service rebuilds from the database; while it is down, wait (never let the stage die).
                while not stop.is_set():
                    try:
                        service = DetectorService(database_url, clock)
                        fingerprint = fleet_fingerprint(service.conn)
                        break
                    except psycopg.OperationalError:
                        log.warning("detector: database unavailable; retrying in 2 s")
                        stop.wait(2.0)
                continue
            clock.sleep(tick_s)
    finally:
        unregister_readiness("detector")
        service.close()
