"""Issue 17, finding 2 (high): device clocks are distrusted.

An event dated far in the future (an attacker, or a device whose clock broke) used to be stored, and
the detector's ``last_activity = max(...)`` then made every later silence negative: no inactivity alarm,
not even the 24 h cap, and every rebuild re-read the row. Now ingest refuses device times beyond a few
minutes after receipt, and the detector never takes an activity later than its receipt.
"""

from __future__ import annotations

import psycopg
import pytest

from mimamori.detector.service import DetectorService
from mimamori.ingest.batch import Batch
from mimamori.ingest.store import KnownRows, prepare, write_batch
from mimamori.kernel import protocol
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.protocol import Event, ProtocolError

pytestmark = [pytest.mark.integration, pytest.mark.security]

H = 3600.0
NOW = 1_767_225_600.0  # 2026-01-01 00:00 UTC, the service clock at receipt
NOW_MS = int(NOW * 1000)
YEAR_2099_MS = 4_070_908_800_000


def test_protocol_refuses_device_time_beyond_the_allowed_lead() -> None:
    protocol.check_device_time(NOW_MS + protocol.MAX_CLOCK_AHEAD_MS, NOW_MS)  # at the limit: fine
    protocol.check_device_time(NOW_MS - 86_400_000 * 30, NOW_MS)  # late (replayed outbox): fine
    with pytest.raises(ProtocolError) as exc:
        protocol.check_device_time(NOW_MS + protocol.MAX_CLOCK_AHEAD_MS + 1, NOW_MS)
    assert exc.value.reason == "future_ts"
    assert protocol.MAX_CLOCK_AHEAD_MS <= 10 * 60 * 1000  # "a few minutes"


def test_ingest_dead_letters_an_event_dated_in_the_future(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        prepare(conn)
        b = Batch()
        b.add_event("gw-1", Event("bulb-1", 1, NOW_MS - 1000, "on"))
        b.add_event("gw-1", Event("bulb-1", 2, YEAR_2099_MS, "off"))  # the attack / the broken clock
        b.add_event("gw-1", Event("bulb-1", 3, NOW_MS + 11 * 60 * 1000, "motion"))  # 11 min ahead
        b.add_event("gw-1", Event("bulb-1", 4, NOW_MS + 3 * 60 * 1000, "heartbeat"))  # a little skew: kept
        r = write_batch(conn, b, NOW, KnownRows())
        assert (r.stored, r.dead_letters, r.heartbeats) == (1, 2, 1)
        assert r.refused == {"future_ts": 2}
        assert conn.execute("SELECT seq FROM events ORDER BY seq").fetchall() == [(1,)]
        dead = conn.execute("SELECT topic, reason, payload FROM dead_letters ORDER BY id").fetchall()
        assert [(t, reason) for t, reason, _ in dead] == [("mimamori/v1/gw-1/bulb-1/event", "future_ts")] * 2
        assert protocol.decode_event(bytes(dead[0][2]), "bulb-1").seq == 2
        # device_state: never later than the receipt, whatever the device said
        row = conn.execute("SELECT extract(epoch FROM last_seen_at), extract(epoch FROM last_heartbeat_at),"
                           " extract(epoch FROM last_activity_at) FROM device_state").fetchone()
        assert row is not None and float(row[0]) <= NOW and float(row[1]) <= NOW
        assert float(row[2]) == NOW - 1


def test_a_stored_future_event_does_not_silence_the_home(pg_url: str) -> None:
    """A row dated 2099 already in the table (stored before this fix, or written by anything else):
    the detector takes its receipt time, so the 24 h silence cap still fires."""
    start = NOW
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('h1', 'x', 'area-01')")
        conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES ('g1', 'h1', 'area-01', 'online')")
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES ('d1', 'g1', 'h1', 'bulb')")
        conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind, received_at)"
                     " VALUES (to_timestamp(%s), 'h1', 'd1', 1, 'on', to_timestamp(%s))", (start, start))
        conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind, received_at)"
                     " VALUES (to_timestamp(%s), 'h1', 'd1', 2, 'off', to_timestamp(%s))", (YEAR_2099_MS / 1000, start + 60))
    clock = ManualClock(start + 25 * H)
    service = DetectorService(pg_url, clock)
    try:
        assert float(service.state.last_activity.max()) <= start + 60
        service.tick()
        with psycopg.connect(pg_url) as conn:
            n = conn.execute("SELECT count(*) FROM incidents WHERE kind = 'inactivity' AND status = 'open'").fetchone()
        assert n == (1,)
    finally:
        service.close()
