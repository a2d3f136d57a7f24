"""The detector service on a real PostgreSQL: a simulated incident becomes an incident row."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import psycopg
import pytest

from mimamori.detector.service import DetectorService, run_detector
from mimamori.firmware_sim.incidents import IncidentPlan, IncidentSpec
from mimamori.firmware_sim.offline import DEFAULT_START, simulate_household
from mimamori.kernel.clock import ManualClock

pytestmark = pytest.mark.integration
H = 3600.0
DAY = 86400.0
KINDS = ("on", "off", "motion", "open", "close", "heartbeat", "boot", "fault")


def store_household(url: str, stream, until: float) -> None:
    info = stream.info
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)", (info.household_id, "test", info.area))
        conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES (%s, %s, %s, 'online')", (info.gateway_id, info.household_id, info.area))
        for d in info.devices:
            conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind, room) VALUES (%s, %s, %s, %s, %s)",
                         (d.device_id, info.gateway_id, info.household_id, d.kind, d.room))
        ids = info.device_ids
        last_seen: dict[str, float] = {}
        with conn.cursor().copy("COPY events (time, household_id, device_id, seq, kind) FROM STDIN") as copy:
            for t, dev, kind, seq in zip(stream.time.tolist(), stream.device.tolist(), stream.kind.tolist(), stream.seq.tolist(), strict=False):
                if t >= until:
                    break
                last_seen[ids[dev]] = t
                if KINDS[kind] == "heartbeat":
                    continue
                copy.write_row((datetime.fromtimestamp(t, UTC), info.household_id, ids[dev], seq, KINDS[kind]))
        for device_id, t in last_seen.items():
            conn.execute(
                "INSERT INTO device_state (device_id, last_seen_at, last_heartbeat_at) VALUES (%s, to_timestamp(%s), to_timestamp(%s))",
                (device_id, t, t),
            )


def bulb_home(conn: psycopg.Connection, h: str, gateway: str, bulb: str, last_off: float) -> None:
    """A home with one bulb, switched off at ``last_off`` (then silent)."""
    conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, 'x', 'area-01')", (h,))
    conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES (%s, %s, 'area-01', 'online')", (gateway, h))
    conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'bulb')", (bulb, gateway, h))
    conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (to_timestamp(%s), %s, %s, 1, 'off')",
                 (last_off, h, bulb))


def test_simulated_collapse_becomes_an_incident_row(pg_url: str) -> None:
    at = DEFAULT_START + 30 * DAY + 10.5 * H
    # A home with motion sensors (a busy home): the collapse shows within hours.
    k = next(i for i in range(40) if simulate_household(i, 3, DEFAULT_START, DEFAULT_START + DAY).info.has_sensors)
    plan = IncidentPlan.at(IncidentSpec("collapse", k, at))
    stream = simulate_household(k, 3, DEFAULT_START, DEFAULT_START + 32 * DAY, incidents=plan)
    collapse = next(inc for inc in stream.incidents if inc.kind == "collapse")
    store_household(pg_url, stream, collapse.start + 60)
    clock = ManualClock(collapse.start + 60)
    service = DetectorService(pg_url, clock)
    try:
        opened_at = None
        for _ in range(48):
            clock.advance(1800)
            with psycopg.connect(pg_url) as conn:  # the devices keep sending heartbeats (ingest records them)
                conn.execute("UPDATE device_state SET last_seen_at = to_timestamp(%s), last_heartbeat_at = to_timestamp(%s), updated_at = now()", (clock.now(), clock.now()))  # noqa: E501
            service.tick()
            with psycopg.connect(pg_url) as conn:
                row = conn.execute("SELECT kind, status, rule, score, evidence, extract(epoch FROM opened_at) FROM incidents WHERE kind IN ('inactivity', 'long_on')").fetchone()  # noqa: E501
            if row:
                opened_at = row[5]
                break
        assert row is not None, "no welfare incident within 24 h"
        kind, status, rule, score, evidence, _ = row
        assert status == "open" and rule.startswith("model") and score > 0
        assert "silence_start" in evidence and "expected_activity_by" in evidence
        assert float(opened_at) - collapse.start <= 12 * H
        # Re-detection updates the same row; no duplicate.
        clock.advance(1800)
        service.tick()
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM incidents WHERE kind = %s", (kind,)).fetchone()[0] == 1
    finally:
        service.close()
    # Restart-safe: a new service rebuilds from the database and does not open a second incident.
    service2 = DetectorService(pg_url, clock)
    try:
        service2.tick()
    finally:
        service2.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM incidents WHERE status = 'open' AND kind IN ('inactivity', 'long_on')").fetchone()[0] == 1
        assert conn.execute("SELECT households FROM detector_runs").fetchone()[0] == 1


def test_run_detector_loop_stops_and_offline_gateway_is_a_device_incident(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('h1', 'x', 'area-01')")
        # Offline for an hour already (past the grace a reboot gets).
        conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status, status_changed_at) VALUES ('g1', 'h1', 'area-01', 'offline', to_timestamp(%s))",
                     (DEFAULT_START - H,))
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES ('d1', 'g1', 'h1', 'bulb')")
    clock = ManualClock(DEFAULT_START)
    stop = threading.Event()
    ticks = []

    class CountingClock(ManualClock):
        def sleep(self, seconds: float) -> None:
            ticks.append(seconds)
            if len(ticks) >= 3:
                stop.set()
            super().sleep(seconds)

    clock = CountingClock(DEFAULT_START)
    run_detector(None, database_url=pg_url, clock=clock, stop=stop, tick_s=60)
    assert len(ticks) == 3
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT kind, rule FROM incidents").fetchall()
    assert rows == [("device_offline", "gateway_last_will")]


def test_an_incident_a_watcher_closed_is_not_reopened_for_the_same_silence(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        bulb_home(conn, "h1", "g1", "d1", DEFAULT_START)
    clock = ManualClock(DEFAULT_START + 25 * H)  # 25 h of silence: the hard cap
    service = DetectorService(pg_url, clock)
    try:
        service.tick()
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM incidents WHERE kind = 'inactivity' AND status = 'open'").fetchone()[0] == 1
            conn.execute("UPDATE incidents SET status = 'resolved', outcome = 'fine', closed_at = now()")
        clock.advance(600)
        service.tick()
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM incidents WHERE kind = 'inactivity'").fetchone()[0] == 1
            # A new silence (after new activity) may alert again.
            conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind, received_at) VALUES (to_timestamp(%s), 'h1', 'd1', 2, 'on', now())", (clock.now(),))  # noqa: E501
        clock.advance(600)
        service.tick()
        clock.advance(25 * H)
        service.tick()
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM incidents WHERE kind IN ('inactivity', 'long_on') AND status = 'open'").fetchone()[0] == 1
    finally:
        service.close()


def test_the_loop_fits_a_changed_fleet_in_place_and_never_rebuilds(pg_url: str) -> None:
    """A household paired while the detector runs is fitted in (no rebuild of the fleet's history);
    an unchanged fleet is never touched (an accelerated clock used to rebuild 56 days of history
    every simulated hour)."""
    import time

    from mimamori.detector import service as detector_service

    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('hh-a', 'A', 'x')")
    calls: list[str] = []
    original_rebuild = detector_service.DetectorService.rebuild
    original_sync = detector_service.DetectorService.sync_fleet

    def counting_rebuild(self: DetectorService) -> None:
        calls.append("rebuild")
        original_rebuild(self)

    def counting_sync(self: DetectorService) -> int:
        calls.append("sync")
        return original_sync(self)

    stop = threading.Event()
    clock = ManualClock(DEFAULT_START)
    detector_service.DetectorService.rebuild = counting_rebuild  # type: ignore[method-assign]
    detector_service.DetectorService.sync_fleet = counting_sync  # type: ignore[method-assign]
    try:
        thread = threading.Thread(target=run_detector, args=(None,), daemon=True,
                                  kwargs={"database_url": pg_url, "clock": clock, "stop": stop, "tick_s": 3600,
                                          "fleet_check_every_s": 0.0})
        thread.start()
        time.sleep(1.5)  # many ticks (a ManualClock sleeps by advancing), one rebuild: the first start's (no checkpoint)
        assert calls == ["rebuild"]
        with psycopg.connect(pg_url) as conn:
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('hh-b', 'B', 'x')")
        deadline = time.monotonic() + 10
        while "sync" not in calls and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert calls == ["rebuild", "sync"]
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT households FROM detector_runs WHERE worker = 'detector'").fetchone()[0] == 2
    finally:
        stop.set()
        thread.join(10)
        detector_service.DetectorService.rebuild = original_rebuild  # type: ignore[method-assign]
        detector_service.DetectorService.sync_fleet = original_sync  # type: ignore[method-assign]


def test_an_incident_whose_resident_asked_for_help_is_not_closed_by_a_switch(pg_url: str) -> None:
    """The alert engine marks an incident whose resident answered "please help" (evidence
    ``help_asked_at``): activity afterwards (someone who fell reached a switch) must not close it;
    the same activity closes an ordinary one."""
    with psycopg.connect(pg_url) as conn:
        for h in ("h1", "h2"):
            bulb_home(conn, h, f"g-{h}", f"d-{h}", DEFAULT_START)
    clock = ManualClock(DEFAULT_START + 25 * H)  # 25 h of silence in both homes: the hard cap
    service = DetectorService(pg_url, clock)
    try:
        service.tick()
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM incidents WHERE kind = 'inactivity' AND status = 'open'").fetchone()[0] == 2
            conn.execute("UPDATE incidents SET evidence = evidence || '{\"help_asked_at\": 1.0}' WHERE household_id = 'h1'")
            for h in ("h1", "h2"):
                conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind, received_at)"
                             " VALUES (to_timestamp(%s), %s, %s, 2, 'on', now())", (clock.now(), h, f"d-{h}"))
        clock.advance(600)
        service.tick()
        with psycopg.connect(pg_url) as conn:
            status = dict(conn.execute("SELECT household_id, status FROM incidents WHERE kind = 'inactivity'").fetchall())
        assert status == {"h1": "open", "h2": "resolved"}
    finally:
        service.close()


def test_the_detector_knows_which_homes_ask_their_resident_first(pg_url: str) -> None:
    """View ``households_asked_first`` (migration 0044): a resident with a channel of their own and a
    chain that begins by asking them (the default then does). Those homes get the faster threshold."""
    chains = {
        "h-default": None,
        "h-asks": [{"type": "resident_check", "minutes": 5}, {"type": "notify", "tiers": [1]}],
        "h-blink-only": [{"type": "resident_check", "minutes": 5, "ask": False}, {"type": "notify", "tiers": [1]}],
        "h-team-first": [{"type": "notify", "tiers": [1]}, {"type": "resident_check", "minutes": 5}],
        "h-no-address": None,
    }
    with psycopg.connect(pg_url) as conn:
        for h, chain in chains.items():
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, 'x', 'area-01')", (h,))
            conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES (%s, 'r', 'resident', %s)",
                         (f"r-{h}", h))
            if h != "h-no-address":
                conn.execute("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'email', %s)",
                             (f"r-{h}", f"{h}@example.jp"))
            if chain is not None:
                conn.execute("INSERT INTO escalation_chains (household_id, steps) VALUES (%s, %s)", (h, json.dumps(chain)))
        # an address that was removed does not count
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('h-removed', 'x', 'area-01')")
        conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES ('r-removed', 'r', 'resident', 'h-removed')")
        conn.execute("INSERT INTO person_channels (person_id, kind, target, enabled) VALUES ('r-removed', 'email', 'x@example.jp', false)")
    service = DetectorService(pg_url, ManualClock(DEFAULT_START))
    try:
        asked = service._asked_first()
        got = {h for h, yes in zip(service.fleet.households, asked.tolist(), strict=False) if yes}
    finally:
        service.close()
    assert got == {"h-default", "h-asks"}
