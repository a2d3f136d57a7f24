"""Issue 17, finding 1 (critical): a device paired to a household is bound to its gateway.

Another gateway publishing that device's id (a credential copied out of one house, device ids printed
on the bulbs) must not store activity for the household, must not move the device (its blink commands
and resend requests keep going to its own gateway), and leaves a dead letter with the reason. Moving a
paired device is a coordinator's act: an explicit, audited service call.
"""

from __future__ import annotations

import psycopg
import pytest

from mimamori.ingest.batch import Batch
from mimamori.ingest.store import KnownRows, pair_device, prepare, write_batch
from mimamori.ingest.sweeper import GapSweeper
from mimamori.kernel import protocol
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.protocol import Event

pytestmark = [pytest.mark.integration, pytest.mark.security]

TS = 1_767_225_600_000
NOW = TS / 1000 + 60


def batch_of(*events: tuple[str, Event]) -> Batch:
    b = Batch()
    for gw, e in events:
        b.add_event(gw, e)
    return b


@pytest.fixture
def db(pg_url: str):
    with psycopg.connect(pg_url) as c:
        prepare(c)
        c.execute("INSERT INTO households (household_id, display_name, area) VALUES ('hb', 'B', 'area-b')")
        c.execute("INSERT INTO gateways (gateway_id, household_id, area) VALUES ('gw-b', 'hb', 'area-b')")
        c.execute("INSERT INTO gateways (gateway_id, household_id, area) VALUES ('gw-a', NULL, 'area-a')")
        c.commit()
        # The home's own gateway reports the bulb; the coordinator pairs it.
        write_batch(c, batch_of(("gw-b", Event("bulb-b", 1, TS, "off"))), NOW, KnownRows())
        pair_device(c, "bulb-b", "hb", "bulb", now=NOW)
        c.commit()
        yield c


def test_event_for_a_device_paired_under_another_gateway_is_a_dead_letter(db: psycopg.Connection) -> None:
    known = KnownRows()
    r = write_batch(db, batch_of(("gw-a", Event("bulb-b", 2, TS + 30_000, "on")),
                                 ("gw-a", Event("bulb-b", 2, TS + 31_000, "heartbeat"))), NOW, known)
    assert (r.stored, r.duplicates, r.dead_letters) == (0, 0, 2)
    assert r.refused == {"foreign_device": 2}  # the metric's reason label (not "db_rejected")
    assert db.execute("SELECT count(*) FROM events WHERE device_id = 'bulb-b'").fetchone() == (1,)
    assert db.execute("SELECT gateway_id FROM devices WHERE device_id = 'bulb-b'").fetchone() == ("gw-b",)
    # device_state untouched: no fake activity, no fake heartbeat
    last = db.execute("SELECT extract(epoch FROM last_activity_at) * 1000, extract(epoch FROM last_seen_at) * 1000,"
                      " max_seq FROM device_state WHERE device_id = 'bulb-b'").fetchone()
    assert last is not None and (int(last[0]), int(last[1]), last[2]) == (TS, TS, 1)
    dl = db.execute("SELECT topic, reason, detail FROM dead_letters ORDER BY id").fetchall()
    assert [(t, reason) for t, reason, _ in dl] == [("mimamori/v1/gw-a/bulb-b/event", "foreign_device")] * 2
    assert "gw-b" in dl[0][2]
    # The cache learned nothing false: the same gateway's next publish is refused again.
    r = write_batch(db, batch_of(("gw-a", Event("bulb-b", 3, TS + 40_000, "on"))), NOW, known)
    assert (r.stored, r.dead_letters) == (0, 1)
    # The home's own gateway still gets through.
    r = write_batch(db, batch_of(("gw-b", Event("bulb-b", 2, TS + 50_000, "on"))), NOW, known)
    assert (r.stored, r.dead_letters) == (1, 0)
    assert db.execute("SELECT household_id FROM events WHERE device_id = 'bulb-b' AND seq = 2").fetchone() == ("hb",)


def test_foreign_publish_in_the_same_batch_as_the_own_gateway_does_not_move_the_device(db: psycopg.Connection) -> None:
    # The foreign event is the newest in the batch: before, it decided the device's gateway.
    r = write_batch(db, batch_of(("gw-b", Event("bulb-b", 2, TS + 10_000, "on")),
                                 ("gw-a", Event("bulb-b", 3, TS + 20_000, "off"))), NOW, KnownRows())
    assert (r.stored, r.dead_letters) == (1, 1)
    assert db.execute("SELECT gateway_id FROM devices WHERE device_id = 'bulb-b'").fetchone() == ("gw-b",)


def test_resend_requests_keep_going_to_the_devices_own_gateway(db: psycopg.Connection, pg_url: str) -> None:
    # A hole in bulb-b's seq (1, then 5); then another gateway publishes bulb-b.
    write_batch(db, batch_of(("gw-b", Event("bulb-b", 5, TS + 5000, "on"))), NOW, KnownRows())
    write_batch(db, batch_of(("gw-a", Event("bulb-b", 6, TS + 6000, "off"))), NOW + 1, KnownRows())
    sweeper = GapSweeper(ManualClock(NOW + 60), grace_s=10)
    sent = sweeper.sweep(db)
    targets = {(protocol.parse_topic(t).gateway_id, protocol.parse_topic(t).device_id) for t, _ in sent}
    assert targets == {("gw-b", "bulb-b")}, sent


def test_an_unpaired_device_still_follows_its_gateway(db: psycopg.Connection) -> None:
    write_batch(db, batch_of(("gw-a", Event("plug-new", 0, TS, "on"))), NOW, KnownRows())
    write_batch(db, batch_of(("gw-b", Event("plug-new", 1, TS + 1, "off"))), NOW, KnownRows())
    assert db.execute("SELECT gateway_id FROM devices WHERE device_id = 'plug-new'").fetchone() == ("gw-b",)
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)


def test_moving_a_paired_device_is_a_coordinators_audited_act(world) -> None:
    from support.web import app_client, bearer

    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO gateways (gateway_id, household_id, area) VALUES ('gw-new', NULL, NULL)")
    with app_client(url, clock) as client:
        move = {"gateway_id": "gw-new", "reason": "new home gateway"}
        for who, status in (("watcher_a", 404), ("resident_1", 404), ("coord_b", 404)):
            r = client.post("/api/devices/bulb-h1/gateway", json=move, headers=bearer(client, who))
            assert r.status_code in (403, status), (who, r.status_code, r.text)
        # coord_a may not bind h1's bulb to a gateway of another area's household
        r = client.post("/api/devices/bulb-h1/gateway", json={"gateway_id": "gw-h3"}, headers=bearer(client, "coord_a"))
        assert r.status_code == 404, r.text
        r = client.post("/api/devices/bulb-h1/gateway", json={"gateway_id": "gw-h2"}, headers=bearer(client, "coord_a"))
        assert r.status_code == 409, r.text  # another household's gateway
        r = client.post("/api/devices/bulb-h1/gateway", json=move, headers=bearer(client, "coord_a"))
        assert r.status_code == 200, r.text
        assert r.json()["from_gateway"] == "gw-h1"
    with psycopg.connect(url) as c:
        assert c.execute("SELECT gateway_id FROM devices WHERE device_id = 'bulb-h1'").fetchone() == ("gw-new",)
        assert c.execute("SELECT actor, from_gateway, to_gateway, reason FROM device_moves").fetchall() == [
            ("coord_a", "gw-h1", "gw-new", "new home gateway")]
        prepare(c)
        now = clock.now()
        t = int(now * 1000)
        r1 = write_batch(c, batch_of(("gw-h1", Event("bulb-h1", 10_000, t, "on"))), now, KnownRows())
        r2 = write_batch(c, batch_of(("gw-new", Event("bulb-h1", 10_001, t, "off"))), now, KnownRows())
        assert (r1.stored, r1.dead_letters, r2.stored, r2.dead_letters) == (0, 1, 1, 0)


def test_a_device_paired_before_it_reported_is_bound_to_the_gateway_named(world) -> None:
    """A coordinator enters a new bulb's id (printed on it) before it ever reported, naming the home's
    gateway: another gateway that reports that id first does not take it."""
    from support.web import app_client, bearer

    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO gateways (gateway_id, household_id, area) VALUES ('gw-evil', NULL, 'south')")
    with app_client(url, clock) as client:
        coord = bearer(client, "coord_a")
        r = client.post("/api/devices/pair", json={"device_id": "bulb-new", "household_id": "h1", "kind": "bulb",
                                                   "gateway_id": "gw-h1"}, headers=coord)
        assert r.status_code == 200, r.text
        # another area's gateway cannot be named
        r = client.post("/api/devices/pair", json={"device_id": "bulb-new2", "household_id": "h1", "gateway_id": "gw-evil"},
                        headers=coord)
        assert r.status_code == 404, r.text
    with psycopg.connect(url) as c:
        prepare(c)
        now = clock.now()
        t = int(now * 1000)
        r1 = write_batch(c, batch_of(("gw-evil", Event("bulb-new", 1, t, "on"))), now, KnownRows())
        r2 = write_batch(c, batch_of(("gw-h1", Event("bulb-new", 2, t, "off"))), now, KnownRows())
        assert (r1.stored, r1.dead_letters, r2.stored, r2.dead_letters) == (0, 1, 1, 0)
        assert c.execute("SELECT gateway_id FROM devices WHERE device_id = 'bulb-new'").fetchone() == ("gw-h1",)
