"""``mimamori bench detector --restart``: the detector's start, pairing and restart at town scale.

A scratch database gets ``households`` simulated homes with bulbs, motion and door sensors and
``days`` of history ending now; then real ``mimamori detector`` processes (the installed command, on
the real clock) are timed:

- ``rebuild_s``: the repair path, ``mimamori detector rebuild`` (a first start on an existing history);
- ``cold_start_s``: a new detector process, from its start to its first tick (it loads the saved model);
- ``pair_device_s``: a device paired to a home (a ``devices`` row, as the coordinator's page writes it)
  until the first tick whose model has it;
- ``restart_after_kill_s``: SIGKILL, a new process, until its first tick;
- ``peak_rss_mb``: the largest resident set of those detector processes (``VmHWM``);
- ``same_as_rebuild``: after the restart, what the model raises (every household and incident kind)
  equals what a model rebuilt from the whole history raises at the same instant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg

DAY = 86400.0
_KINDS = ("on", "off", "motion", "open", "close", "heartbeat", "boot", "fault")
_CLI = "from mimamori.cli import main; main()"


def _sensor_homes(households: int, seed: int) -> list[int]:
    from mimamori.firmware_sim.homes import make_household

    picked: list[int] = []
    k = 0
    while len(picked) < households:
        kinds = {d.kind for d in make_household(k, seed).devices}
        if {"bulb", "motion", "door"} <= kinds:
            picked.append(k)
        k += 1
    return picked


def build_town(url: str, households: int, days: float, seed: int, now: float) -> int:
    """Homes, gateways, devices and ``days`` of events ending at ``now``; returns the events stored."""
    from mimamori.firmware_sim.offline import simulate_household

    start = now - days * DAY
    stored = 0
    with psycopg.connect(url) as conn:
        for k in _sensor_homes(households, seed):
            stream = simulate_household(k, seed, start, now)
            info = stream.info
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)",
                         (info.household_id, info.display_name, info.area))
            conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES (%s, %s, %s, 'online')",
                         (info.gateway_id, info.household_id, info.area))
            ids = info.device_ids
            for d in info.devices:
                conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind, room) VALUES (%s, %s, %s, %s, %s)",
                             (d.device_id, info.gateway_id, info.household_id, d.kind, d.room))
                conn.execute("INSERT INTO device_state (device_id, last_seen_at, last_heartbeat_at) VALUES (%s, to_timestamp(%s), to_timestamp(%s))",
                             (d.device_id, now, now))
            keep = np.flatnonzero(stream.kind != _KINDS.index("heartbeat"))
            with conn.cursor().copy("COPY events (time, household_id, device_id, seq, kind, received_at) FROM STDIN") as copy:
                for i in keep.tolist():
                    t = datetime.fromtimestamp(float(stream.time[i]), UTC)
                    copy.write_row((t, info.household_id, ids[int(stream.device[i])], int(stream.seq[i]), _KINDS[int(stream.kind[i])],
                                    datetime.fromtimestamp(float(stream.arrival[i]), UTC)))
            stored += len(keep)
            conn.commit()
    return stored


def _peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:  # noqa: PTH123
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _detector(url: str, *args: str, log: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MIMAMORI_DATABASE_URL": url, "MIMAMORI_OPS_PORT": "0", "MIMAMORI_LOG_FORMAT": "text"}
    env.pop("MIMAMORI_MQTT_URL", None)
    return subprocess.Popen([sys.executable, "-c", _CLI, "detector", *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def _first_tick_after(conn: psycopg.Connection, since: float, proc: subprocess.Popen[bytes], timeout_s: float,
                      *, devices: int | None = None) -> float:
    """Real seconds from ``since`` until detector_runs shows a tick after it (with ``devices`` in the model)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute("SELECT extract(epoch FROM last_tick_at), devices FROM detector_runs WHERE worker = 'detector'").fetchone()
        if row and row[0] is not None and float(row[0]) > since and (devices is None or row[1] == devices):
            return time.time() - since
        if proc.poll() is not None:
            raise RuntimeError(f"the detector exited ({proc.returncode}) before its first tick")
        time.sleep(0.02)
    raise TimeoutError(f"no detector tick within {timeout_s:.0f} s")


def _raised(service: Any, at: float) -> set[tuple[str, str]]:
    """(household, kind) of every condition the model raises at ``at`` (what the incidents would be),
    with no event after now and every device still reporting (so silences grow into alarms)."""
    from mimamori.detector import model as m

    state = service.state
    seen = state.dev_last_seen.copy()
    state.dev_last_seen[:] = np.where(np.isnan(seen), seen, np.float32(at - state.epoch))
    try:
        sc = m.score(state, at, away_until=service._away(at), asked_first=service._asked_first(), p=service.params)  # noqa: SLF001
    finally:
        state.dev_last_seen[:] = seen
    out = set()
    for kind, cond in (("inactivity", sc.inactivity), ("long_on", sc.long_on), ("device_offline", sc.device_offline)):
        out |= {(service.fleet.households[r], kind) for r in np.flatnonzero(cond).tolist()}
    return out


#: The instants compared after the restart: now and later, as the town's silences grow.
HORIZONS_H = (0, 3, 6, 9, 12, 18, 24, 30)


def run_restart_bench(database_url: str, *, households: int = 1000, days: float = 56.0, seed: int = 7,
                      progress: Any = None) -> dict[str, Any]:
    from mimamori.detector import checkpoint
    from mimamori.detector.service import DetectorService
    from mimamori.kernel.clock import ManualClock

    say = progress or (lambda msg: None)
    now = time.time()
    result: dict[str, Any] = {"households": households, "history_days": days}
    log_path = f"/tmp/mimamori-bench-detector-{os.getpid()}.log"  # noqa: S108
    with open(log_path, "wb") as log, psycopg.connect(database_url, autocommit=True) as conn:  # noqa: PTH123
        say(f"building {households} homes with {days:g} days of history")
        t0 = time.perf_counter()
        result["history_events"] = build_town(database_url, households, days, seed, now)
        result["build_s"] = round(time.perf_counter() - t0, 1)
        say(f"{result['history_events']:,} events stored in {result['build_s']} s; rebuilding (the repair path)")

        t0 = time.perf_counter()
        proc = _detector(database_url, "rebuild", "--json", log=log)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _peak_rss_mb(proc.pid))
            time.sleep(0.2)
        if proc.returncode:
            raise RuntimeError(f"detector rebuild failed; see {log_path}")
        result["rebuild_s"] = round(time.perf_counter() - t0, 1)
        result["rebuild_peak_rss_mb"] = round(peak, 1)

        say("cold start")
        started = time.time()
        proc = _detector(database_url, log=log)
        try:
            result["cold_start_s"] = round(_first_tick_after(conn, started, proc, 600), 2)
            devices = conn.execute("SELECT devices FROM detector_runs WHERE worker = 'detector'").fetchone()[0]
            say("pairing a device")
            home, gateway = conn.execute("SELECT household_id, gateway_id FROM gateways ORDER BY household_id LIMIT 1").fetchone()
            paired = time.time()
            conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind, room, paired_at) VALUES (%s, %s, %s, 'plug', 'living', now())",
                         (f"{home}-bench-plug", gateway, home))
            result["pair_device_s"] = round(_first_tick_after(conn, paired, proc, 120, devices=devices + 1), 2)
            time.sleep(2.0)
            peak = max(peak, _peak_rss_mb(proc.pid))
            say("SIGKILL and restart")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = time.time()
            proc = _detector(database_url, log=log)
            result["restart_after_kill_s"] = round(_first_tick_after(conn, killed, proc, 600), 2)
            time.sleep(2.0)
            peak = max(peak, _peak_rss_mb(proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)  # a clean stop saves the model
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        result["peak_rss_mb"] = round(peak, 1)

        say("comparing with a full rebuild")
        clock = ManualClock(time.time())
        restarted = DetectorService(database_url, clock, worker="bench-restarted")
        # The same first instant of history as the saved model's (its epoch), so that both saw the same events.
        rebuilt = DetectorService(database_url, clock, worker="bench-rebuilt", restore=False, history_start=restarted.state.epoch)
        try:
            assert restarted.started_from == "checkpoint"  # noqa: S101
            restarted.tick()  # what arrived after its state was saved; device health
            rebuilt.tick()
            same, raised, differences = True, [], []
            for h in HORIZONS_H:
                at = clock.now() + h * 3600.0
                a, b = _raised(restarted, at), _raised(rebuilt, at)
                raised.append(len(b))
                same &= a == b
                differences += [[h, *x] for x in sorted(a ^ b)][:5]
            identical = sum(checkpoint.pack_rows(restarted.state, [restarted.fleet.row_of[hid]]).tobytes()
                            == checkpoint.pack_rows(rebuilt.state, [r]).tobytes()
                            for r, hid in enumerate(rebuilt.fleet.households))
        finally:
            restarted.close(save=False)
            rebuilt.close(save=False)
        result["same_as_rebuild"] = same
        result["compared_at_hours"] = list(HORIZONS_H)
        result["raised_by_rebuild"] = raised
        result["identical_household_rows"] = f"{identical}/{len(rebuilt.fleet.households)}"
        if differences:
            result["differences"] = differences[:20]
    result["log"] = log_path
    return result
