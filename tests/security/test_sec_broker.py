"""Issue 17, finding 3 (high): the broker is locked at subscribe time, and (finding 1 on the wire) a
gateway cannot publish for another gateway's devices in a way that reaches a household.

A real Mosquitto started here with the files `mimamori gateway provision` writes, configured as
deploy/mosquitto/mosquitto-docker.conf (the dynamic-security plugin; see tests/test_provision_broker.py
for the broker fixture). Mosquitto 2.0's acl_file grants every SUBSCRIBE and only filters at delivery:
a gateway joining ``$share/ingest/...`` took its round-robin share of the fleet's events and they were
dropped after the publishers had their PUBACK (20 of 40 events reached ingest with one rogue member).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from mimamori.gateway import provision
from mimamori.kernel import mqtt, protocol
from mimamori.kernel.config import Settings
from support.broker import Client, SecureBroker, event_payload
from support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.security]


class SubackClient(Client):
    """A Client that records the reason codes of each SUBACK."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)
        self.codes: list[int] = []
        self.client.on_subscribe = self._on_suback

    def _on_suback(self, client: object, userdata: object, mid: int, codes: list, props: object) -> None:  # type: ignore[type-arg]
        self.codes = [int(c.value) if hasattr(c, "value") else int(c) for c in codes]
        self.subscribed.set()

    def granted(self, *filters: str) -> list[bool]:
        self.subscribe(*filters)
        return [c < 0x80 for c in self.codes]


def _gateway(secure: SecureBroker, gw: str) -> SubackClient:
    c = SubackClient(secure.url(gw, secure.password(gw)))
    c.start()
    assert c.accepted, c.connack
    return c


def test_gateway_cannot_subscribe_to_the_ingest_group_everything_sys_or_other_gateways(secure: SecureBroker) -> None:
    gw_a = _gateway(secure, "gw-a")
    try:
        refused = [
            protocol.shared(protocol.EVENT_FILTER),
            protocol.shared(protocol.STATUS_FILTER),
            protocol.shared(protocol.HEARTBEAT_FILTER),
            "$share/other/" + protocol.EVENT_FILTER,
            "#",
            "$SYS/#",
            "mimamori/#",
            protocol.EVENT_FILTER,
            protocol.command_filter("gw-b"),
            protocol.command_filter("+"),
        ]
        for f in refused:
            assert gw_a.granted(f) == [False], f
        assert gw_a.granted(protocol.command_filter("gw-a")) == [True]
    finally:
        gw_a.close()


def test_a_rogue_gateway_in_the_ingest_group_does_not_take_a_share_of_the_fleet(secure: SecureBroker) -> None:
    ingest = SubackClient(secure.url("ingest", secure.password("ingest"))).start()
    rogues = [_gateway(secure, "gw-a") for _ in range(3)]
    gw_b = _gateway(secure, "gw-b")
    try:
        assert ingest.granted(protocol.shared(protocol.EVENT_FILTER)) == [True]
        for r in rogues:
            r.granted(protocol.shared(protocol.EVENT_FILTER))  # refused; even if not, it must not matter
        topic = protocol.event_topic("gw-b", "bulb-b")
        for seq in range(40):
            gw_b.client.publish(topic, event_payload("bulb-b", seq), qos=1).wait_for_publish(5)
        assert wait_for(lambda: len(ingest.topics()) == 40, 10), len(ingest.topics())
        time.sleep(0.2)
        assert len(ingest.topics()) == 40
        assert all(r.topics() == [] for r in rogues)
    finally:
        for c in (ingest, gw_b, *rogues):
            c.close()


def test_a_gateway_cannot_publish_for_another_gateways_device_in_a_way_that_reaches_a_household(
    secure: SecureBroker, pg_url: str
) -> None:
    """gw-a publishes gw-b's paired bulb on its own topic (the broker must allow that topic) and on
    gw-b's (the broker refuses): the real ingest, as `ingest`, stores neither; the household's bulb
    stays bound to gw-b and the attempt is a dead letter."""
    from mimamori.ingest.consumer import IngestService

    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('hb', 'B', 'north')")
        conn.execute("INSERT INTO gateways (gateway_id, household_id) VALUES ('gw-b', 'hb'), ('gw-a', NULL)")
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES ('bulb-b', 'gw-b', 'hb', 'bulb')")
    settings = Settings(mqtt_username="ingest", mqtt_password=secure.password("ingest"), mqtt_ca_file=secure.ca_file,
                        ingest_session_expiry_s=60, ingest_batch_max_wait_s=0.02)
    svc = IngestService(settings, database_url=pg_url, mqtt_url=mqtt.url_from_settings(settings, f"mqtts://127.0.0.1:{secure.port}"),
                        client_id=f"ingest-{uuid.uuid4().hex[:6]}")
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    gw_a = _gateway(secure, "gw-a")
    gw_b = _gateway(secure, "gw-b")
    try:
        assert svc.subscribed.wait(15), "ingest did not subscribe"
        now_ms = int(time.time() * 1000)
        fake = protocol.encode_event(protocol.Event("bulb-b", 100, now_ms, "on"))
        gw_a.client.publish(protocol.event_topic("gw-a", "bulb-b"), fake, qos=1).wait_for_publish(5)
        gw_a.client.publish(protocol.event_topic("gw-b", "bulb-b"), fake, qos=1).wait_for_publish(5)
        real = protocol.encode_event(protocol.Event("bulb-b", 1, now_ms, "off"))
        gw_b.client.publish(protocol.event_topic("gw-b", "bulb-b"), real, qos=1).wait_for_publish(5)
        assert wait_for(lambda: svc.stats.stored >= 1 and svc.stats.dead_letters >= 1, 15), svc.stats
    finally:
        svc.stop_event.set()
        thread.join(30)
        gw_a.close()
        gw_b.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT seq, household_id FROM events WHERE device_id = 'bulb-b'").fetchall() == [(1, "hb")]
        assert conn.execute("SELECT gateway_id FROM devices WHERE device_id = 'bulb-b'").fetchone() == ("gw-b",)
        assert conn.execute("SELECT topic, reason FROM dead_letters").fetchall() == [
            (protocol.event_topic("gw-a", "bulb-b"), "foreign_device")]


def test_provision_writes_the_dynamic_security_file_with_the_same_accounts(tmp_path: Path) -> None:
    import json

    r = provision.provision(tmp_path / "b", tmp_path / "s", gateways=["gw-1"])
    assert r.dynsec_file is not None and (r.dynsec_file.stat().st_mode & 0o777) == 0o640
    cfg = json.loads(r.dynsec_file.read_text())
    assert cfg["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                       "subscribe": False, "unsubscribe": True}
    users = {c["username"] for c in cfg["clients"]}
    assert users == set(provision.parse_password_file(r.password_file.read_text()))
    gw_role = next(role for role in cfg["roles"] if role["rolename"] == "gw-1")
    subs = [a["topic"] for a in gw_role["acls"] if a["acltype"].startswith("subscribe")]
    assert subs == [protocol.command_filter("gw-1")]


def test_services_keep_what_they_need(secure: SecureBroker) -> None:
    """The lock does not lock out the stack: the broker's health check (`monitor` reads $SYS) and the
    app (gateway statuses, retained) still subscribe and receive."""
    monitor = SubackClient(secure.url("monitor", secure.password("monitor"))).start()
    app = SubackClient(secure.url("app", secure.password("app"))).start()
    gw_a = _gateway(secure, "gw-a")
    try:
        assert monitor.granted("$SYS/broker/uptime") == [True]
        assert monitor.granted(protocol.EVENT_FILTER) == [False]
        gw_a.client.publish(protocol.status_topic("gw-a"), protocol.STATUS_ONLINE, qos=1, retain=True).wait_for_publish(5)
        assert app.granted(protocol.STATUS_FILTER) == [True]
        assert wait_for(lambda: protocol.status_topic("gw-a") in app.topics(), 5), app.topics()
        assert app.granted(protocol.EVENT_FILTER) == [False]
        assert wait_for(lambda: "$SYS/broker/uptime" in monitor.topics(), 15), monitor.topics()
    finally:
        for c in (monitor, app, gw_a):
            c.close()
