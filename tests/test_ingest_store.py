"""ingest.store and ingest.sweeper on a real PostgreSQL (the lead's ``pg_url`` fixture)."""

from __future__ import annotations

import psycopg
import pytest

from mimamori.ingest.batch import Batch
from mimamori.ingest.store import KnownRows, pair_device, write_batch
from mimamori.ingest.sweeper import GapSweeper
from mimamori.ingest.validate import DeadLetter, GatewayHeartbeatMsg, StatusMsg
from mimamori.kernel import protocol
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.protocol import Event

pytestmark = pytest.mark.integration

TS = 1_767_225_600_000
NOW = TS / 1000 + 60


def batch_of(*events: tuple[str, Event], dead: list[DeadLetter] | None = None) -> Batch:
    b = Batch()
    for gw, e in events:
        b.add_event(gw, e)
    for d in dead or []:
        b.add(d)
    return b


@pytest.fixture
def conn(pg_url: str):
    from mimamori.ingest.store import prepare

    with psycopg.connect(pg_url) as c:
        prepare(c)
        yield c


def test_events_are_stored_once_across_batches_and_inside_a_batch(conn: psycopg.Connection) -> None:
    e1, e2 = Event("bulb-1", 1, TS, "on"), Event("bulb-1", 2, TS + 1000, "off")
    r1 = write_batch(conn, batch_of(("gw-1", e1), ("gw-1", e2), ("gw-1", e1)), NOW)
    assert (r1.stored, r1.duplicates) == (2, 1)
    r2 = write_batch(conn, batch_of(("gw-1", e2), ("gw-1", Event("bulb-1", 3, TS + 2000, "motion"))), NOW)
    assert (r2.stored, r2.duplicates) == (1, 1)
    rows = conn.execute("SELECT device_id, seq, kind, household_id, extract(epoch FROM time) * 1000 FROM events ORDER BY seq").fetchall()
    assert [(d, s, k, h, int(t)) for d, s, k, h, t in rows] == [
        ("bulb-1", 1, "on", None, TS),
        ("bulb-1", 2, "off", None, TS + 1000),
        ("bulb-1", 3, "motion", None, TS + 2000),
    ]


def test_unknown_device_and_gateway_are_registered_unpaired(conn: psycopg.Connection) -> None:
    write_batch(conn, batch_of(("gw-9", Event("plug-9", 0, TS, "on"))), NOW, KnownRows())
    assert conn.execute("SELECT gateway_id, household_id, kind FROM devices WHERE device_id = 'plug-9'").fetchone() == ("gw-9", None, None)
    assert conn.execute("SELECT status FROM gateways WHERE gateway_id = 'gw-9'").fetchone() == ("unknown",)
    # the device moves to another gateway: followed (resend commands must reach it)
    write_batch(conn, batch_of(("gw-10", Event("plug-9", 1, TS + 1, "off"))), NOW, KnownRows())
    assert conn.execute("SELECT gateway_id FROM devices WHERE device_id = 'plug-9'").fetchone() == ("gw-10",)


def test_known_rows_cache_skips_upserts_but_is_only_a_hint(conn: psycopg.Connection) -> None:
    known = KnownRows()
    write_batch(conn, batch_of(("gw-1", Event("bulb-1", 0, TS, "on"))), NOW, known)
    assert known.devices == {"bulb-1": "gw-1"}
    conn.execute("DELETE FROM devices WHERE device_id = 'bulb-1'")
    conn.commit()
    with pytest.raises(psycopg.IntegrityError):  # device_state needs the device row the cache assumed
        write_batch(conn, batch_of(("gw-1", Event("bulb-1", 1, TS + 1, "off"))), NOW, known)
    known.clear()
    write_batch(conn, batch_of(("gw-1", Event("bulb-1", 1, TS + 1, "off"))), NOW, known)
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (1,)


def test_device_state_newest_device_time_wins_in_any_arrival_order(conn: psycopg.Connection) -> None:
    d = "bulb-1"
    write_batch(conn, batch_of(("gw", Event(d, 5, TS + 5000, "on")), ("gw", Event(d, 3, TS + 3000, "off"))), NOW)
    write_batch(conn, batch_of(("gw", Event(d, 4, TS + 4000, "off"))), NOW)  # late resend: older
    write_batch(conn, batch_of(("gw", Event(d, 5, TS + 9000, "heartbeat"))), NOW)  # heartbeat: seq 5 is the latest
    write_batch(conn, batch_of(("gw", Event(d, 6, TS + 7000, "boot"))), NOW)
    row = conn.execute(
        """SELECT extract(epoch FROM last_seen_at) * 1000, extract(epoch FROM last_activity_at) * 1000,
                  extract(epoch FROM last_heartbeat_at) * 1000, power, extract(epoch FROM power_since) * 1000,
                  max_seq, reported_seq FROM device_state WHERE device_id = %s""",
        (d,),
    ).fetchone()
    assert row is not None
    assert [int(x) if isinstance(x, (int, float)) or hasattr(x, "as_integer_ratio") else x for x in row] == [
        TS + 9000, TS + 5000, TS + 9000, "on", TS + 5000, 6, 5,
    ]
    # heartbeats are not rows of events; boot is
    assert conn.execute("SELECT kind FROM events ORDER BY seq").fetchall() == [("off",), ("off",), ("on",), ("boot",)]


def test_dead_letters_keep_raw_bytes_and_reason(conn: psycopg.Connection) -> None:
    raw = bytes(range(256))
    write_batch(conn, batch_of(dead=[DeadLetter("mimamori/v1/gw/x/event", raw, "bad_json", "boom")]), NOW)
    assert conn.execute("SELECT topic, payload, reason, detail FROM dead_letters").fetchone() == ("mimamori/v1/gw/x/event", raw, "bad_json", "boom")


def test_gateway_status_and_heartbeat(conn: psycopg.Connection) -> None:
    b = Batch()
    b.add(StatusMsg("gw-1", "online"))
    b.add(GatewayHeartbeatMsg("gw-1", {"v": 1, "ts": TS, "outbox": 2}))
    write_batch(conn, b, NOW)
    changed = conn.execute("SELECT status, status_changed_at FROM gateways WHERE gateway_id = 'gw-1'").fetchone()
    assert changed is not None and changed[0] == "online"
    b = Batch()
    b.add(StatusMsg("gw-1", "online"))  # retained copy again: no change of status_changed_at
    write_batch(conn, b, NOW + 100)
    assert conn.execute("SELECT status_changed_at FROM gateways WHERE gateway_id = 'gw-1'").fetchone() == (changed[1],)
    b = Batch()
    b.add(StatusMsg("gw-1", "offline"))
    b.add(GatewayHeartbeatMsg("gw-1", {"v": 1, "ts": TS - 5, "outbox": 9}))  # older heartbeat: ignored
    write_batch(conn, b, NOW + 200)
    status, at, hb = conn.execute("SELECT status, extract(epoch FROM status_changed_at), last_heartbeat FROM gateways").fetchone()  # type: ignore[misc]
    assert (status, int(at), hb["outbox"]) == ("offline", int(NOW + 200), 2)


def test_pair_device_backfills_household(conn: psycopg.Connection) -> None:
    write_batch(conn, batch_of(("gw", Event("bulb-1", 0, TS, "on")), ("gw", Event("bulb-1", 1, TS + 1, "off"))), NOW)
    conn.execute("INSERT INTO households (household_id, display_name) VALUES ('h1', 'Sato')")
    assert pair_device(conn, "bulb-1", "h1", "bulb", "kitchen") == 2
    conn.commit()
    assert conn.execute("SELECT household_id, kind, room FROM devices").fetchone() == ("h1", "bulb", "kitchen")
    write_batch(conn, batch_of(("gw", Event("bulb-1", 2, TS + 2, "on"))), NOW)
    assert conn.execute("SELECT count(*) FROM events WHERE household_id = 'h1'").fetchone() == (3,)
    assert pair_device(conn, "door-7", "h1", "door", None, now=NOW) == 0  # not seen yet: registered paired
    assert conn.execute("SELECT household_id FROM devices WHERE device_id = 'door-7'").fetchone() == ("h1",)


def test_gap_sweeper_finds_holes_and_tails_once_per_interval(conn: psycopg.Connection, pg_url: str) -> None:
    clock = ManualClock(NOW)
    behind = TS - 4 * 365 * 86400 * 1000  # device clocks behind do not matter (simulations, skew; ahead: issue 17)
    events = [("gw-1", Event("bulb-1", s, behind + s * 1000, "on")) for s in (0, 1, 4, 5, 9)]
    events.append(("gw-2", Event("door-1", 3, TS, "open")))
    events.append(("gw-2", Event("door-1", 7, TS + 5000, "heartbeat")))  # door-1 has used seq up to 7
    write_batch(conn, batch_of(*events), NOW)
    # a device not heard of for two hours is out of the window
    write_batch(conn, batch_of(("gw-3", Event("old-1", 0, TS, "on")), ("gw-3", Event("old-1", 5, TS, "on"))), NOW - 7200)
    sweeper = GapSweeper(clock, interval_s=30, grace_s=10, window_s=3600)
    assert not sweeper.due()

    def sweep() -> list[tuple[str | None, int, int]]:
        sent = sweeper.sweep(conn)
        assert all(protocol.parse_topic(t).channel == "cmd" for t, _ in sent)
        return sorted(
            (protocol.parse_topic(t).device_id, protocol.decode_command(p).args["from_seq"], protocol.decode_command(p).args["to_seq"])
            for t, p in sent
        )

    clock.advance(5)
    assert sweep() == [("door-1", 4, 7)]  # gaps are too fresh yet (a batch may still fill them)
    clock.advance(30)
    assert sweeper.due()
    assert sweep() == [("bulb-1", 2, 3), ("bulb-1", 6, 8)]  # door-1 was asked recently: rate limited
    clock.advance(30)
    assert sweep() == []
    # another process holding the lock: this one skips the round
    with psycopg.connect(pg_url) as other, other.transaction():
        from mimamori.ingest.sweeper import SWEEP_LOCK_KEY

        other.execute("SELECT pg_advisory_xact_lock(%s)", (SWEEP_LOCK_KEY,))
        clock.advance(600)
        assert sweep() == []


def test_dead_letter_detail_with_nul_and_unstorable_heartbeat_are_handled(conn: psycopg.Connection) -> None:
    write_batch(conn, batch_of(dead=[DeadLetter("t", b"\x00", "undecodable", "ValueError: \x00 inside")]), NOW)
    assert conn.execute("SELECT detail FROM dead_letters").fetchone() == ("ValueError: \\x00 inside",)
    b = Batch()
    b.add(GatewayHeartbeatMsg("gw-1", {"v": 1, "ts": TS, "note": "\x00"}))  # jsonb refuses \u0000
    with pytest.raises(psycopg.DataError):  # the consumer isolates such an item into a dead letter
        write_batch(conn, b, NOW)
