"""The whole path per dialect (issue 13): an incident → the resident check → the alert worker's blink
→ the real gateway (``run_gateway``) sends it in the device's own language on the home broker → a fake
device answers as the real one does (its state reports: the echo, which must not count as the
resident) → later the resident switches the light on that dialect's topic → gateway → broker → real
ingest → events → the check is cancelled as "resident responded".

Command and report shapes are those of test_gateway_downlink.py and the per-dialect tests (cited there).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from mimamori.alerts import service
from mimamori.alerts.channels import AlertSettings
from mimamori.alerts.worker import run_alert_worker
from mimamori.gateway.service import run_gateway
from mimamori.kernel import mqtt
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.config import Settings
from mimamori.kernel.embedded import EmbeddedBroker
from mimamori.kernel.mqtt import MqttUrl
from support.town import SmtpSink, actions, open_incident, seed_town
from support.waiting import wait_for
from test_alerts_integration import who
from test_alerts_real_path import Ingest

pytestmark = pytest.mark.e2e


@dataclass
class Dialect:
    name: str
    device_id: str
    state_topic: str
    command_topic: str
    state: Callable[[bool, float], bytes]  # the device's report of its state (on, device time)
    commanded: Callable[[bytes], bool | None]  # what a command asks: on, off, None = toggle


def z2m(s: str) -> Dialect:
    return Dialect("zigbee2mqtt", f"z2m-kitchen_{s}", f"zigbee2mqtt/kitchen_{s}", f"zigbee2mqtt/kitchen_{s}/set",
                   lambda on, t: json.dumps({"state": "ON" if on else "OFF", "linkquality": 120}).encode(),
                   lambda p: {"ON": True, "OFF": False}.get(json.loads(p)["state"]))


def tasmota(s: str) -> Dialect:
    return Dialect("tasmota", f"tasmota-lamp_{s}", f"stat/lamp_{s}/POWER", f"cmnd/lamp_{s}/POWER",
                   lambda on, t: b"ON" if on else b"OFF", {b"ON": True, b"OFF": False}.get)


def shelly(s: str) -> Dialect:
    prefix = f"shellyplus1-{s}"

    def report(on: bool, t: float) -> bytes:
        return json.dumps({"src": prefix, "dst": f"{prefix}/events", "method": "NotifyStatus",
                           "params": {"ts": t, "switch:0": {"id": 0, "output": on, "source": "button"}}}).encode()

    def asked(p: bytes) -> bool | None:
        body = json.loads(p)
        return body["params"].get("on") if body["method"] == "Switch.Set" else None

    return Dialect("shelly", prefix, f"{prefix}/events/rpc", f"{prefix}/rpc", report, asked)


def shelly_gen1(s: str) -> Dialect:
    return Dialect("shelly_gen1", f"shelly1-{s}", f"shellies/shelly1-{s}/relay/0", f"shellies/shelly1-{s}/relay/0/command",
                   lambda on, t: b"on" if on else b"off", {b"on": True, b"off": False}.get)


class FakeDevice:
    """Answers each command with a state report, as the real device does."""

    def __init__(self, url: MqttUrl, dialect: Dialect, clock: ManualClock) -> None:
        self.d, self.clock, self.on = dialect, clock, True
        self.commands: list[bytes] = []
        self.client = mqtt.make_client(url, f"dev-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._command
        mqtt.connect(self.client, url)
        self.client.loop_start()
        self.client.subscribe(dialect.command_topic, qos=1)
        assert subscribed.wait(5)

    def _command(self, client: object, userdata: object, message: object) -> None:
        payload = message.payload  # type: ignore[attr-defined]
        self.commands.append(payload)
        asked = self.d.commanded(payload)
        self.on = (not self.on) if asked is None else asked
        self.report(wait=False)  # on paho's loop thread: waiting for the PUBACK here would block it

    def report(self, *, wait: bool = True) -> None:
        info = self.client.publish(self.d.state_topic, self.d.state(self.on, self.clock.now()), qos=1)
        if wait:
            info.wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def device_events(conn: psycopg.Connection, device_id: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT kind FROM events WHERE device_id = %s ORDER BY time, seq", (device_id,))]


@pytest.fixture
def home_broker(own_broker: EmbeddedBroker) -> MqttUrl:
    """A broker of the test's own: the ingest's persistent shared-subscription session of an earlier
    test would otherwise take its share of this test's events."""
    return MqttUrl.parse(own_broker.url)


@pytest.fixture
def stack(pg_url: str, home_broker: MqttUrl, clock: ManualClock, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Ingest and the alert worker; ``start_gateway(gateway_id)`` runs the real gateway."""
    mqtt_url = home_broker
    ingest = Ingest(pg_url, mqtt_url)
    stops: list[tuple[threading.Event, threading.Thread]] = []
    # The alert worker waits for the gateway's answer: "blinked" only when the device echoed it.
    worker_stop = threading.Event()
    worker = threading.Thread(target=run_alert_worker, args=(Settings(),), daemon=True, kwargs={
        "database_url": pg_url, "mqtt_url": mqtt_url, "clock": clock, "stop": worker_stop, "worker_id": f"w-{uuid.uuid4().hex[:6]}",
        "alert_settings": AlertSettings(poll_s=0.05, delivery_threads=2, blink_confirm_s=8.0)})
    worker.start()

    def start_gateway(gateway_id: str) -> None:
        stop = threading.Event()
        settings = Settings(mqtt_url=f"mqtt://{mqtt_url.host}:{mqtt_url.port}", mqtt_protocol="auto", gateway_heartbeat_s=3600,
                            gateway_settle_s=0)  # type: ignore[call-arg]
        runner = threading.Thread(target=run_gateway, daemon=True, kwargs={
            "settings": settings, "gateway_id": gateway_id, "local_url": f"mqtt://{mqtt_url.host}:{mqtt_url.port}",
            "outbox_path": tmp_path / f"{gateway_id}.sqlite3", "stop": stop, "clock": clock, "blink_step_s": 0.2})
        runner.start()
        stops.append((stop, runner))

    try:
        yield start_gateway
    finally:
        for stop, runner in stops:
            stop.set()
            runner.join(15)
        worker_stop.set()
        worker.join(20)
        ingest.close()


@pytest.mark.parametrize("make", [z2m, tasmota, shelly, shelly_gen1], ids=lambda f: f.__name__)
def test_resident_check_blinks_a_real_device_and_its_switch_cancels(make: Callable[[str], Dialect], conn: psycopg.Connection,
                                                                   smtp: SmtpSink, clock: ManualClock, home_broker: MqttUrl,
                                                                   stack: Callable[[str], None]) -> None:
    s = uuid.uuid4().hex[:6]
    dialect = make(s)
    town = seed_town(conn, smtp, suffix=s)
    conn.execute("UPDATE devices SET kind = 'motion' WHERE device_id = %s", (town.bulb_id,))  # only our device blinks
    conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'bulb')",
                 (dialect.device_id, town.gateway_id, town.household_id))
    service.set_chain(conn, who(conn, town.coordinator), town.household_id,
                      [{"type": "resident_check", "minutes": 5, "blinks": 2, "ask": False}, {"type": "notify", "tiers": [1]}], clock=clock)
    stack(town.gateway_id)
    device = FakeDevice(home_broker, dialect, clock)
    try:
        # A fresh gateway: the device's first report is taken as what it is, a switch (stored).
        wait_for(lambda: (device.report(), device_events(conn, dialect.device_id))[1] == ["on"], timeout=20,
                 interval=0.5, what="the device's first report stored")
        clock.advance(600)
        iid = open_incident(conn, town.household_id, clock.now())
        # Blink: off, on, off, on on the dialect's own command topic; the device answers each.
        wait_for(lambda: len(device.commands) >= 4, timeout=20, what=f"{dialect.name} blink commands")
        assert [dialect.commanded(c) for c in device.commands[:4]] == [False, True, False, True]
        assert device.on  # put back as it was
        wait_for(lambda: "blinked" in actions(conn, iid), timeout=15, what="blink recorded as confirmed by the device")
        clock.advance(5)  # the worker ticks; the echo must not look like the resident
        threading.Event().wait(1.5)
        assert device_events(conn, dialect.device_id) == ["on"]
        assert conn.execute("SELECT status FROM incidents WHERE incident_id = %s", (iid,)).fetchone() == ("open",)
        # Two minutes later the resident switches the light off on the device itself.
        clock.advance(120)
        device.on = False
        device.report()
        wait_for(lambda: device_events(conn, dialect.device_id) == ["on", "off"], timeout=15, what="the resident's switch stored")
        clock.advance(30)
        wait_for(lambda: conn.execute("SELECT status, outcome FROM incidents WHERE incident_id = %s", (iid,)).fetchone()
                 == ("cancelled", "resident_responded"), timeout=15, what="cancelled as the resident responded")
    finally:
        device.close()


def test_a_device_that_does_not_answer_leaves_the_blink_not_confirmed(conn: psycopg.Connection, smtp: SmtpSink,
                                                                      clock: ManualClock, home_broker: MqttUrl,
                                                                      stack: Callable[[str], None]) -> None:
    s = uuid.uuid4().hex[:6]
    dialect = tasmota(s)
    town = seed_town(conn, smtp, suffix=s)
    conn.execute("UPDATE devices SET kind = 'motion' WHERE device_id = %s", (town.bulb_id,))
    conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'bulb')",
                 (dialect.device_id, town.gateway_id, town.household_id))
    service.set_chain(conn, who(conn, town.coordinator), town.household_id,
                      [{"type": "resident_check", "minutes": 5, "blinks": 1, "ask": False}, {"type": "notify", "tiers": [1]}], clock=clock)
    stack(town.gateway_id)
    device = FakeDevice(home_broker, dialect, clock)
    device.d = Dialect(dialect.name, dialect.device_id, f"stat/elsewhere_{s}/POWER", dialect.command_topic, dialect.state, dialect.commanded)
    try:
        wait_for(lambda: (device.client.publish(dialect.state_topic, b"ON", qos=1), device_events(conn, dialect.device_id))[1] == ["on"],
                 timeout=20, interval=0.5, what="the device's first report stored")
        clock.advance(600)
        iid = open_incident(conn, town.household_id, clock.now())
        wait_for(lambda: len(device.commands) >= 2, timeout=20, what="blink commands")  # it gets them, its reports go astray
        wait_for(lambda: "blink_not_confirmed" in actions(conn, iid), timeout=20, what="recorded as sent, not confirmed")
        assert "blinked" not in actions(conn, iid)
    finally:
        device.close()


def test_plugs_are_blinked_only_when_a_coordinator_allows_it(conn: psycopg.Connection, smtp: SmtpSink) -> None:
    town = seed_town(conn, smtp)
    conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'plug')",
                 (f"fridge-{town.household_id}", town.gateway_id, town.household_id))
    assert service.load_team(conn, town.household_id, town.area).bulbs == ((town.gateway_id, town.bulb_id),)
    conn.execute("UPDATE devices SET blink_allowed = true WHERE device_id = %s", (f"fridge-{town.household_id}",))
    conn.execute("UPDATE devices SET blink_allowed = false WHERE device_id = %s", (town.bulb_id,))
    assert service.load_team(conn, town.household_id, town.area).bulbs == ((town.gateway_id, f"fridge-{town.household_id}"),)
