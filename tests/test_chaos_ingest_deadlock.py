"""Found by the fault suite (``mimamori chaos``): the ingest's two database writers deadlocked every
second or two while 100 gateways heartbeated, because gateway statuses and heartbeats were written
one statement per gateway in arrival order, after the key-ordered gateway upsert. Now every gateway
row of a batch is written by one statement in key order. Two writers, each writing events of the gateways whose heartbeats the other writes.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from mimamori.ingest.batch import Batch
from mimamori.ingest.store import prepare, write_batch
from mimamori.ingest.validate import GatewayHeartbeatMsg, StatusMsg
from mimamori.kernel.protocol import Event

pytestmark = pytest.mark.integration

TS = 1_767_225_600_000
GATEWAYS = [f"gw-dl-{i:02d}" for i in range(12)]


def batch(round_: int, events_from: list[str], heartbeats_from: list[str]) -> Batch:
    b = Batch()
    for gw in events_from:  # events lock their gateways' rows (last_seen_at) ...
        b.add_event(gw, Event(f"{gw}-bulb", round_, TS + round_ * 1000, "on"))
    for gw in heartbeats_from:  # ... statuses and heartbeats other gateways' rows
        b.add(StatusMsg(gw, "online" if round_ % 2 else "offline"))
        b.add(GatewayHeartbeatMsg(gw, {"v": 1, "ts": TS + round_ * 1000, "outbox": round_}))
    return b


def test_two_writers_touching_the_same_gateways_in_opposite_orders_never_deadlock(pg_url: str) -> None:
    rounds = 25
    barrier = threading.Barrier(2)
    deadlocks: list[str] = []

    def writer(events_from: list[str], heartbeats_from: list[str]) -> None:
        with psycopg.connect(pg_url) as conn:
            prepare(conn)
            for r in range(rounds):
                barrier.wait(10)
                try:
                    write_batch(conn, batch(r, events_from, heartbeats_from), TS / 1000 + r)
                except psycopg.errors.DeadlockDetected as exc:
                    deadlocks.append(str(exc).splitlines()[0])

    first, second = GATEWAYS[:6], GATEWAYS[6:]
    threads = [threading.Thread(target=writer, args=a) for a in ((first, second), (second, first))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert deadlocks == []
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT status, (last_heartbeat->>'ts')::bigint FROM gateways WHERE gateway_id = ANY(%s)",
                            (GATEWAYS,)).fetchall()
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert len(rows) == len(GATEWAYS) and events == len(GATEWAYS) * rounds
    assert {ts for _, ts in rows} == {TS + (rounds - 1) * 1000}  # the newest heartbeat won everywhere
