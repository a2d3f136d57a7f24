"""The detector service (``mimamori detector``, also inside ``serve``): I/O around the pure model.

Every tick (``tick_s`` of the given clock) it takes the events that arrived since the last tick
into the model, reads device health (``device_state``), gateway status (the MQTT last will, in
``gateways``) and away periods, scores every household, and opens / updates / closes incidents
(one open per household and kind; the area outage per area), with the evidence.

State that persists (migration 0047, ``mimamori/detector/checkpoint.py``): the model is saved in PostgreSQL
with the arrival time of the newest event it has seen, every ``checkpoint_every_s`` and when it
stops. A start loads it and takes only newer events; a household, device or gateway added or changed
is fitted in place (that one home's history is replayed); a full rebuild from ``history_days`` of
``events`` happens only with no usable checkpoint (first start, a model of another format) or as the
repair command ``mimamori detector rebuild``. Incident writes are idempotent (the partial unique
indexes of 0004 + ON CONFLICT), so a crash between two ticks loses nothing and duplicates nothing.

Shards: several detector processes may split a large fleet (``shard = "i/n"``: the areas whose hash
falls to i; a whole area stays in one shard so that its outage is judged on all its gateways). Each
shard is held by one process at a time through a PostgreSQL advisory lock (``ShardLease``); a second
process for the same shard waits as a standby.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from mimamori.detector import checkpoint, history, incidents, metrics
from mimamori.detector import model as m
from mimamori.detector.fleet import WHOLE_FLEET, Fleet, FleetListener, Shard, ShardLease, fleet_fingerprint, load_fleet
from mimamori.kernel.clock import Clock, ScaledClock, SystemClock
from mimamori.kernel.observability import register_readiness, unregister_readiness

__all__ = ["DetectorService", "Fleet", "Shard", "ShardLease", "run_detector"]

log = logging.getLogger(__name__)

_KIND = {name: i for i, name in enumerate(m.EVENT_KINDS)}
#: A tick re-reads this much before its cursor: rows committed late with an earlier received_at.
_OVERLAP_S = 30.0


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


class DetectorService:
    def __init__(self, database_url: str, clock: Clock, *, params: m.DetectorParams = m.DEFAULT_PARAMS,
                 history_days: float = 56.0, worker: str = "detector", shard: Shard = WHOLE_FLEET,
                 restore: bool = True, late_window_s: float = 7 * 86400.0, history_start: float | None = None) -> None:
        self.url = database_url
        self.clock = clock
        self.params = params
        self.history_days = history_days
        self.worker = worker
        self.shard = shard
        self.late_window_s = late_window_s
        self.history_start = history_start  # a rebuild's first instant (default: ``history_days`` before now)
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.cursor: datetime | None = None
        self._seen_recent: set[tuple[str, int]] = set()
        self._last_prior = 0.0
        self._health_cursor: datetime | None = None
        self._saved: dict[str, bytes] = {}  # household -> digest of its saved row (only changed rows are written)
        self.newest_event_time: float | None = None  # device time of the newest event seen (for the lag metric)
        self.last_tick_at: float | None = None  # the clock at the latest finished tick (readiness)
        self._asked_now = np.zeros(0, bool)  # homes asking their resident first, as of the latest tick
        self.started_from = "rebuild"  # or "checkpoint" (how the latest start got its state)
        if not (restore and self.restore()):
            self.rebuild()

    # -- model state ---------------------------------------------------------------------------
    def _new_state(self, kinds: np.ndarray, area: np.ndarray, tz: np.ndarray, *, epoch: float) -> m.FleetState:
        return m.new_state(kinds, epoch=epoch, tz_offset_s=tz, area=area, params=self.params)

    def _record_start(self, now: float) -> None:
        self.conn.execute(
            """INSERT INTO detector_runs (worker, started_at, households, devices, shard) VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (worker) DO UPDATE SET started_at = EXCLUDED.started_at, households = EXCLUDED.households,
                   devices = EXCLUDED.devices, shard = EXCLUDED.shard, updated_at = now()""",
            (self.worker, _ts(now), len(self.fleet.households), len(self.fleet.device_index), self.shard.key),
        )

    def rebuild(self) -> None:
        """The repair path: a fresh model, every household's last ``history_days`` replayed from ``events``."""
        now = self.clock.now()
        self.fleet, kinds, area, tz = load_fleet(self.conn, self.shard)
        start = self.history_start if self.history_start is not None else now - self.history_days * 86400
        self.state = self._new_state(kinds, area, tz, epoch=start)
        self._saved = {}
        self._health_cursor = None
        self._replay_rows(np.arange(self.state.n), until=history.newest_received(self.conn), fresh=True)
        m.refresh_prior(self.state)
        self._rejudge(np.arange(self.state.n))
        self._last_prior = now
        self.started_from = "rebuild"
        self._record_start(now)
        self.save_checkpoint()

    def restore(self) -> bool:
        """Load the saved state; households without a usable saved row are replayed from history.
        False when there is no checkpoint of this model's format (the caller rebuilds).
        """
        now = self.clock.now()
        self.fleet, kinds, area, tz = load_fleet(self.conn, self.shard)
        cp = checkpoint.load(self.conn, self.shard.key, self.fleet.households)
        if cp is None:
            return False
        state = self._new_state(kinds, area, tz, epoch=cp.epoch)
        if cp.format != checkpoint.state_format(state):
            log.warning("detector: the saved model has another format (%s, now %s): rebuilding from history",
                        cp.format, checkpoint.state_format(state))
            return False
        keep = [r for r, h in enumerate(self.fleet.households) if h in cp.rows and cp.rows[h][0] == self.fleet.layouts[r]]
        if keep:
            packed = np.frombuffer(b"".join(cp.rows[self.fleet.households[r]][1] for r in keep), np.uint8)
            checkpoint.unpack_rows(state, np.array(keep), packed.reshape(len(keep), -1))
        state.area[:] = area  # the area is not part of the layout: a changed one is taken as it is now
        for name, value in cp.prior.items():
            if getattr(state, name).shape == value.shape:
                setattr(state, name, value)
        self.state = state
        self.cursor, self._seen_recent, self._health_cursor = cp.events_cursor, cp.seen_recent, cp.health_cursor
        self._last_prior = cp.last_prior_at if cp.last_prior_at is not None else now
        self._saved = {h: d for h, d in checkpoint.saved_digests_of(cp).items() if h in self.fleet.row_of}
        missing = np.array(sorted(set(range(state.n)) - set(keep)), np.int64)
        if len(missing):
            log.info("detector: %d of %d households replayed from history (new or re-laid out)", len(missing), state.n)
            self._replay_rows(missing, until=self.cursor, fresh=False)
            self._rejudge(missing)
        self.started_from = "checkpoint"
        self._record_start(now)
        return True

    def _replay_rows(self, rows: np.ndarray, *, until: datetime | None, fresh: bool) -> None:
        """Replay these households' history (events received by ``until``) into their (fresh) rows. With
        ``fresh`` the whole fleet is replayed and the events cursor starts at ``until``.
        """
        now = self.clock.now()
        wanted = set(rows.tolist())
        index = {d: rc for d, rc in self.fleet.device_index.items() if rc[0] in wanted}
        if until is not None or fresh:  # (else nothing was ever taken: the next tick takes everything)
            since = max(self.state.epoch, now - self.history_days * 86400)
            taken, newest = history.replay(self.conn, self.state, index, since=since,
                                           until_received=until, params=self.params)
            metrics.EVENTS_TAKEN.inc(taken)
            if newest is not None and (self.newest_event_time is None or newest > self.newest_event_time):
                self.newest_event_time = newest
        # Homes with no activity in the history are watched from now (the hard cap), not from its start.
        quiet = rows[np.isnan(self.state.last_activity[rows])]
        self.state.resume_from[quiet] = now
        if fresh:
            self.cursor = until
            self._seen_recent = history.seen_near(self.conn, until, _OVERLAP_S)

    def _rejudge(self, rows: np.ndarray) -> None:
        """After a replay: the thresholds of the silences and lit lights under way, from the prior as it
        is now. A replay fixes them when each began, from the prior as it was then (the default prior,
        in a rebuild), so a rebuilt home and one that ran all along would judge its current silence
        differently. Silences whose threshold the model re-fixed after a paused stretch keep theirs.
        """
        st, p = self.state, self.params
        rows = rows[np.isfinite(st.last_activity[rows]) & ~m.rejudged_after_pause(st, rows)]
        if len(rows):
            q, alarm, hist_n = m.silence_thresholds(st, rows, st.last_activity[rows], p)
            st.quantile_h[rows], st.alarm_after_h[rows], st.slot_history[rows] = q, alarm, hist_n.astype(np.float16)
        on_r, on_s = np.nonzero(np.isfinite(st.sw_on_since[rows])) if len(rows) else (np.zeros(0, np.int64),) * 2
        if len(on_r):
            r = rows[on_r]
            st.sw_alarm_after_h[r, on_s] = m.on_thresholds(st, r, on_s, st.sw_on_since[r, on_s].astype(np.float64) + st.epoch, p)

    def sync_fleet(self) -> int:
        """Fit a changed fleet in place: households whose layout is unchanged keep their rows, new or
        re-laid-out ones are replayed from history, removed ones are dropped. Returns the replayed count.
        """
        fleet, kinds, area, tz = load_fleet(self.conn, self.shard)
        state = self._new_state(kinds, area, tz, epoch=self.state.epoch)
        old_rows, new_rows = [], []
        for r, h in enumerate(fleet.households):
            o = self.fleet.row_of.get(h)
            if o is not None and self.fleet.layouts[o] == fleet.layouts[r]:
                old_rows.append(o)
                new_rows.append(r)
        checkpoint.copy_rows(self.state, np.array(old_rows, np.int64), state, np.array(new_rows, np.int64))
        state.area[:] = area
        for name in checkpoint.fleet_fields(state):  # the population priors carry over
            setattr(state, name, getattr(self.state, name))
        self.state, self.fleet = state, fleet
        self._asked_now = np.zeros(state.n, bool)
        missing = np.array(sorted(set(range(state.n)) - set(new_rows)), np.int64)
        if len(missing):
            self._replay_rows(missing, until=self.cursor, fresh=False)
            self._rejudge(missing)
        self._saved = {h: d for h, d in self._saved.items() if h in fleet.row_of}
        self._record_start(self.clock.now())
        log.info("detector: fleet changed; %d households kept, %d replayed", len(new_rows), len(missing))
        return len(missing)

    def save_checkpoint(self) -> int:
        """Save what changed since the last save (one transaction); returns the household rows written."""
        started = time.perf_counter()
        written = checkpoint.save(
            self.conn, shard=self.shard.key, state=self.state, households=self.fleet.households,
            layouts=self.fleet.layouts, events_cursor=self.cursor, seen_recent=self._seen_recent,
            health_cursor=self._health_cursor, last_prior_at=self._last_prior, saved_digests=self._saved)
        log.debug("detector: checkpoint of %d rows in %.3f s", written, time.perf_counter() - started)
        return written

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
            "SELECT household_id, max(extract(epoch FROM until)) FROM away_periods"
            " WHERE starts_at <= %s AND until > %s GROUP BY household_id",
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
            # Bounded by device time too, so that only recent chunks are read (TimescaleDB excludes the
            # others; older ones are compressed and have no received_at index). Rows older than
            # ``late_window_s`` that arrive now (a gateway back after a week) are stored, not learned.
            self._take_events("received_at > %s AND time > %s",
                              (self.cursor - timedelta(seconds=_OVERLAP_S), _ts(now - self.late_window_s)))
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

    def _write_incidents(self, sc: m.Scores, now: float) -> dict[str, int]:
        return incidents.write_incidents(self.conn, self.fleet, self.state, sc, now, asked_first=self._asked_now)

    def close(self, *, save: bool = True) -> None:
        if save and not self.conn.closed:
            try:
                self.save_checkpoint()
            except psycopg.Error:
                log.exception("detector: the checkpoint at close failed (the next start replays from the previous one)")
        self.conn.close()


def _wait_for_tick(clock: Clock, tick_s: float, stop: threading.Event, listener: FleetListener | None) -> bool:
    """Wait one tick of the clock; True when the fleet changed meanwhile (the loop fits it in and ticks at
    once, so a paired device is scored within a second or two, not at the next minute).
    """
    if listener is None or not isinstance(clock, (SystemClock, ScaledClock)):
        clock.sleep(tick_s)  # a manual clock (tests, simulations) jumps
        return False
    deadline = clock.now() + tick_s
    while not stop.is_set():
        left = deadline - clock.now()
        if left <= 0:
            return False
        speed = clock.speed if isinstance(clock, ScaledClock) else 1.0
        if listener.wait(min(0.25, left / speed)):
            return True
    return False


def run_detector(settings: Any, *, database_url: str, clock: Clock, stop: threading.Event, tick_s: float = 60.0,
                 fleet_check_every_s: float = 30.0, checkpoint_every_s: float = 300.0, shard: Shard | None = None) -> None:
    """The service loop: tick until ``stop`` is set. Changes of households, devices or gateways are
    fitted in place when notified (and checked every ``fleet_check_every_s`` real seconds besides, in
    case a notification was missed); the model is saved every ``checkpoint_every_s`` real seconds and
    on a clean stop.
    """
    shard = shard or Shard.parse(getattr(settings, "detector_shard", None) or "0/1")
    checkpoint_every_s = getattr(settings, "detector_checkpoint_s", None) or checkpoint_every_s
    lease = ShardLease(database_url, shard)
    service: DetectorService | None = None
    listener: FleetListener | None = None
    # Ready while the database answers and ticks keep coming (a replay or a slow tick may take a while).
    register_readiness("detector", lambda: service is not None and service.ready(max(120.0, 5 * tick_s)))
    try:
        while not stop.is_set():
            try:
                if service is None:
                    if not lease.acquire(stop):
                        break
                    listener = FleetListener(database_url)
                    service = DetectorService(database_url, clock, shard=shard)
                    fingerprint = fleet_fingerprint(service.conn)
                    last_check = last_save = time.monotonic()
                counts = service.tick()
                if counts["opened"] or counts["closed"]:
                    log.info("detector tick: %s", counts)
                if time.monotonic() - last_save >= checkpoint_every_s:
                    service.save_checkpoint()
                    last_save = time.monotonic()
                changed = _wait_for_tick(clock, tick_s, stop, listener)
                if changed or time.monotonic() - last_check >= fleet_check_every_s:
                    last_check = time.monotonic()
                    now_fingerprint = fleet_fingerprint(service.conn)
                    if now_fingerprint != fingerprint:
                        service.sync_fleet()
                        fingerprint = now_fingerprint
                if not lease.held():
                    raise psycopg.OperationalError("the shard lease's connection was lost")  # noqa: TRY301 - handled as a lost database, below
            except psycopg.OperationalError:
                log.exception("detector tick failed; reconnecting")
                # A fresh service loads the latest checkpoint; while the database is down, wait (never let the stage die).
                if service is not None:
                    service.close(save=False)
                    service = None
                if listener is not None:
                    listener.close()
                    listener = None
                lease.release()
                stop.wait(2.0)
    finally:
        unregister_readiness("detector")
        if service is not None:
            service.close()
        if listener is not None:
            listener.close()
        lease.release()
