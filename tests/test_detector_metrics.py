"""The detector's Prometheus metrics and readiness, after a real tick on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from prometheus_client import REGISTRY

from mimamori.detector.service import DetectorService
from mimamori.kernel.clock import ManualClock

pytestmark = pytest.mark.integration
H = 3600.0
T0 = 1_767_538_800.0  # 2026-01-05 00:00 Asia/Tokyo


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_tick_updates_the_metrics_and_readiness(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        for k in (1, 2):
            hid, gw, dev = f"hh-m{k}", f"gw-m{k}", f"hh-m{k}-living-bulb"
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, 'test', 'area-m')", (hid,))
            conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES (%s, %s, 'area-m', 'online')", (gw, hid))
            conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind, room) VALUES (%s, %s, %s, 'bulb', 'living')", (dev, gw, hid))
            # Home 1 last switched its light 30 h before the tick (past the 24 h hard cap); home 2 an hour before.
            last = T0 - (30 if k == 1 else 1) * H
            for seq, (t, kind) in enumerate(((last - 600, "on"), (last, "off")), start=1):
                conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (%s, %s, %s, %s, %s)",
                             (datetime.fromtimestamp(t, UTC), hid, dev, seq, kind))
    before_opened = sample("mimamori_detector_incidents_opened_total", kind="inactivity")
    before_ticks = sample("mimamori_detector_tick_seconds_count")
    before_events = sample("mimamori_detector_events_total")
    clock = ManualClock(T0)
    service = DetectorService(pg_url, clock)
    try:
        assert not service.ready(120.0), "not ready before the first tick"
        counts = service.tick()
        assert counts["opened_by_kind"]["inactivity"] == 1
        assert sample("mimamori_detector_tick_seconds_count") == before_ticks + 1
        assert sample("mimamori_detector_households") == 2
        assert sample("mimamori_detector_events_total") == before_events + 4
        assert sample("mimamori_detector_incidents_opened_total", kind="inactivity") == before_opened + 1
        assert sample("mimamori_detector_open_incidents", kind="inactivity") == 1
        assert sample("mimamori_detector_open_incidents", kind="long_on") == 0
        assert sample("mimamori_detector_lag_seconds") == pytest.approx(1 * H)
        assert service.ready(120.0)
        clock.advance(600)
        assert not service.ready(120.0), "a stale tick is not ready"
        # Activity resumes in home 1: the incident closes, and the metrics say so.
        before_closed = sample("mimamori_detector_incidents_closed_total", kind="inactivity")
        with psycopg.connect(pg_url) as conn:
            conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (%s, 'hh-m1', 'hh-m1-living-bulb', 3, 'on')",
                         (datetime.fromtimestamp(clock.now() - 60, UTC),))
        service.tick()
        assert sample("mimamori_detector_incidents_closed_total", kind="inactivity") == before_closed + 1
        assert sample("mimamori_detector_open_incidents", kind="inactivity") == 0
        assert sample("mimamori_detector_lag_seconds") == pytest.approx(60)
        assert service.ready(120.0)
    finally:
        service.close()
