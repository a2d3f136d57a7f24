"""A queue belongs to its database (issue 12): what a broker queued for the ingest of one database
never lands in another one, even when both ingests run with the same settings on the same host."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from mimamori.bench.ingest_bench import publish_raw
from mimamori.ingest.consumer import IngestService, default_client_id
from mimamori.kernel import db, embedded, protocol
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.protocol import Event
from support.waiting import wait_for as wait_until
from test_ingest_consumer import count, running, settings

pytestmark = pytest.mark.integration
TS = 1_767_225_600_000


def test_the_session_name_carries_the_database(pg_url: str, pg_server) -> None:
    other = pg_server.clone()  # cloned from the same template: the same identity row, another database
    with psycopg.connect(pg_url) as a, psycopg.connect(other) as b:
        ida, idb = db.database_identity(a), db.database_identity(b)
        assert db.database_identity(a) == ida  # stable
    assert ida != idb
    s = settings()
    assert default_client_id(s, 0, ida) != default_client_id(s, 0, idb)
    assert ida in default_client_id(s.model_copy(update={"ingest_client_id": "ingest-1"}), 0, ida)


def test_messages_queued_for_one_database_stay_with_it(pg_url: str, pg_server, own_broker: embedded.EmbeddedBroker) -> None:
    url = MqttUrl.parse(own_broker.url)
    other = pg_server.clone()
    group = f"g{uuid.uuid4().hex[:6]}"
    s = settings(ingest_session_expiry_s=600)
    first = IngestService(s, database_url=pg_url, mqtt_url=url, share_group=group, sweeper=None)
    with running(first):
        pass  # its persistent session now exists on the broker, subscribed
    # While the first database's ingest is away, a gateway publishes: the broker queues for its session.
    publish_raw(url, [(protocol.event_topic("gw-q", "dev-q").encode(), protocol.encode_event(Event("dev-q", i, TS + i, "on")))
                      for i in range(1, 6)])
    # An ingest of the same host and settings, writing to another database, takes none of them.
    second = IngestService(s, database_url=other, mqtt_url=url, share_group=group, sweeper=None)
    assert second.client_id != first.client_id
    with running(second):
        time.sleep(2.0)
    assert count(other, "SELECT count(*) FROM events") == 0
    # The first one comes back and gets its own.
    again = IngestService(s, database_url=pg_url, mqtt_url=url, share_group=group, sweeper=None)
    with running(again):
        wait_until(lambda: count(pg_url, "SELECT count(*) FROM events WHERE device_id = 'dev-q'") == 5, what="the queued events")
