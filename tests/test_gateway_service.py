"""Gateway against a real broker (Mosquitto with the project's configuration; amqtt for 3.1.1)."""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from mimamori.gateway.adapters import Reading
from mimamori.gateway.outbox import Outbox
from mimamori.gateway.service import Gateway
from mimamori.kernel import embedded, mqtt, protocol
from mimamori.kernel.clock import ManualClock, SystemClock
from mimamori.kernel.protocol import Command, Event
from support.broker import close_client
from support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    # amqtt 0.12.1 leaks the asyncio StreamWriter of connections it rejects or that hang up
    # (negotiate_protocol's v5 probe, port probes): a ResourceWarning raised in its own thread.
    pytest.mark.filterwarnings("ignore:Exception ignored in. <function StreamWriter.__del__:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:Exception ignored in. <function _SelectorTransport.__del__:pytest.PytestUnraisableExceptionWarning"),
]

T0 = 1_767_225_600_000


class Listener:
    """A plain paho subscriber to one gateway's topics, recording everything it receives.

    A persistent session (clean_session=False) so that messages published while it reconnects
    after a broker restart are queued for it by the broker.
    """

    def __init__(self, url: mqtt.MqttUrl, gateway_id: str, protocol_version: int = mqtt.MQTTv311) -> None:
        self.events: Counter[tuple[str, int]] = Counter()
        self.triples: set[tuple[str, str, int]] = set()  # (gateway, device, seq), for many gateways
        self.kinds: dict[tuple[str, int], str] = {}
        self.status: list[bytes] = []
        self.heartbeats: list[dict] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.make_client(url, f"listener-{uuid.uuid4().hex[:10]}", protocol=protocol_version, clean_start=False)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.ready.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.gateway_id = gateway_id
        mqtt.connect(self.client, url)
        self.client.loop_start()
        assert self.ready.wait(5), "listener did not subscribe"

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        client.subscribe(f"{protocol.ROOT}/{self.gateway_id}/#", qos=1)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        topic = protocol.parse_topic(msg.topic)
        with self.lock:
            if topic.channel == "event":
                event = protocol.decode_event(msg.payload, topic.device_id)
                self.events[(event.device_id, event.seq)] += 1
                self.triples.add((topic.gateway_id, event.device_id, event.seq))
                self.kinds[(event.device_id, event.seq)] = event.kind
            elif topic.channel == "status":
                self.status.append(msg.payload)
            elif topic.channel == "heartbeat":
                self.heartbeats.append(protocol.decode_gateway_heartbeat(msg.payload))

    def distinct(self) -> int:
        with self.lock:
            return len(self.events)

    def close(self) -> None:
        close_client(self.client)


@pytest.fixture
def gateway_id() -> str:
    return f"gw-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def listener(mqtt_url: mqtt.MqttUrl, gateway_id: str) -> Iterator[Listener]:
    lst = Listener(mqtt_url, gateway_id)
    yield lst
    lst.close()


def make_gateway(url: mqtt.MqttUrl, gateway_id: str, path: Path, **kw: object) -> Gateway:
    kw.setdefault("clock", SystemClock())
    return Gateway(gateway_id, url, path, **kw)  # type: ignore[arg-type]


def readings(n: int, devices: int = 4, start: int = 0) -> list[Reading]:
    kinds = ("on", "off", "motion", "open", "close")
    return [Reading(f"dev-{i % devices}", kinds[i % len(kinds)], T0 + start + i) for i in range(n)]


def test_every_event_arrives_exactly_once(mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener, tmp_path: Path) -> None:
    delivered: list[Event] = []
    with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db", on_delivered=delivered.append) as gw:
        sent = [gw.submit(r) for r in readings(2000)]
        assert gw.flush(20)
        assert wait_for(lambda: listener.distinct() == 2000)
        stats = gw.stats
    assert set(listener.events) == {(e.device_id, e.seq) for e in sent}
    assert max(listener.events.values()) == 1
    assert sorted(delivered, key=lambda e: (e.device_id, e.seq)) == sorted(sent, key=lambda e: (e.device_id, e.seq))
    assert stats["published"] == stats["acked"] == 2000 and stats["outbox_depth"] == 0
    assert wait_for(lambda: listener.status[-1:] == [b"offline"])  # graceful stop
    assert listener.status[0] == b"online"


def test_local_messages_go_through_the_adapters(mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener, tmp_path: Path) -> None:
    with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db") as gw:
        assert gw.handle_local("zigbee2mqtt/lamp", b'{"state":"OFF"}', retained=True) == []  # a retained state: a sync
        [on] = gw.handle_local("zigbee2mqtt/lamp", b'{"state":"ON","brightness":200}')
        assert (on.device_id, on.seq, on.kind, on.value) == ("z2m-lamp", 1, "on", 200.0)
        assert gw.handle_local("zigbee2mqtt/lamp", b"{garbage") == []
        assert gw.handle_local("some/other/topic", b"x") == []
        native = protocol.encode_event(Event("hall-pir", 77, T0, "motion"))
        assert gw.handle_local("mimamori/local/hall-pir/event", native) == [Event("hall-pir", 77, T0, "motion")]
        assert gw.flush(10)
        assert wait_for(lambda: listener.distinct() == 2)
        assert gw.stats["rejected_local"] == 1  # the garbage; an unknown topic is not ours to reject
    assert set(listener.events) == {("z2m-lamp", 1), ("hall-pir", 77)}
    # The adapter memory survived the restart: a repeated "ON" is not new activity.
    with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db") as gw:
        assert gw.handle_local("zigbee2mqtt/lamp", b'{"state":"ON","brightness":200}') == []


@pytest.fixture
def persistent_mosquitto(own_broker: embedded.EmbeddedBroker) -> embedded.EmbeddedBroker:
    """A Mosquitto of this test's own that keeps sessions across a restart (persistence), so the
    listener's queued messages survive; amqtt cannot be restarted that way.
    """
    if own_broker.kind != "mosquitto":
        pytest.skip("needs a restartable Mosquitto with persistence")
    return own_broker


def test_broker_restart_mid_stream_loses_nothing(persistent_mosquitto: embedded.EmbeddedBroker, gateway_id: str, tmp_path: Path) -> None:
    own_broker = persistent_mosquitto
    url = mqtt.MqttUrl.parse(own_broker.url)
    listener = Listener(url, gateway_id)
    gw = make_gateway(url, gateway_id, tmp_path / "o.db", reconnect_base_s=0.05, reconnect_cap_s=0.5).start()
    try:
        sent = [gw.submit(r) for r in readings(1500)]
        own_broker.stop()  # mid-stream: some acked, some in flight, some not yet sent
        sent += [gw.submit(r) for r in readings(1500, start=1500)]  # stored while the broker is down
        assert gw.outbox_depth > 0
        time.sleep(0.5)
        own_broker.start()
        assert gw.flush(30), gw.stats
        assert wait_for(lambda: listener.distinct() == 3000, 20), (listener.distinct(), gw.stats)
        assert set(listener.events) == {(e.device_id, e.seq) for e in sent}
        assert gw.stats["reconnects"] >= 1
    finally:
        gw.stop()
        listener.close()


def test_kill_fires_the_retained_last_will_and_a_new_gateway_resumes(
    mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener, tmp_path: Path
) -> None:
    path = tmp_path / "o.db"
    gw = make_gateway(mqtt_url, gateway_id, path).start()
    first = [gw.submit(r) for r in readings(10)]
    assert gw.flush(10)
    assert wait_for(lambda: listener.status == [b"online"])
    gw.kill()
    assert wait_for(lambda: listener.status == [b"online", b"offline"]), listener.status
    # Retained: a newcomer learns the gateway is offline.
    late = Listener(mqtt_url, gateway_id)
    try:
        assert wait_for(lambda: late.status == [b"offline"])
    finally:
        late.close()
    # Events stored after the power cut but before the uplink came back (written by the device
    # adapters of the restarted process) are sent by the next Gateway on the same file.
    with Outbox(path, clock=SystemClock()) as box:
        stored = [box.submit(r) for r in readings(5, start=100)]
    assert [e.seq for e in stored if e.device_id == "dev-0"] == [4, 5]  # numbering continued
    with make_gateway(mqtt_url, gateway_id, path) as gw2:
        assert gw2.flush(10)
        assert gw2.submit(Reading("dev-0", "on", T0 + 999)).seq == 6
        assert gw2.flush(10)
    assert wait_for(lambda: listener.distinct() == 16)
    assert {(e.device_id, e.seq) for e in first + stored} < set(listener.events)
    assert listener.status[:3] == [b"online", b"offline", b"online"]


def test_resend_command_republishes_from_the_replay_window(
    mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener, tmp_path: Path
) -> None:
    delivered: list[Event] = []
    with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db", on_delivered=delivered.append) as gw:
        for r in readings(10, devices=1):
            gw.submit(r)
        assert gw.flush(10)
        assert wait_for(lambda: listener.distinct() == 10)
        publisher = mqtt.make_client(mqtt_url, f"svc-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        mqtt.connect(publisher, mqtt_url)
        publisher.loop_start()
        cmd = protocol.encode_command(Command("resend", {"from_seq": 3, "to_seq": 5}))
        publisher.publish(protocol.command_topic(gateway_id, "dev-0"), cmd, qos=1).wait_for_publish(5)
        assert wait_for(lambda: sum(listener.events.values()) == 13), listener.events
        assert wait_for(lambda: gw.stats["resent"] == 3 and len(delivered) == 13)
        # A resend of seqs the gateway never had is logged, not fatal; garbage is counted.
        publisher.publish(protocol.command_topic(gateway_id, "dev-0"),
                          protocol.encode_command(Command("resend", {"from_seq": 50, "to_seq": 60})), qos=1)
        publisher.publish(protocol.command_topic(gateway_id, "dev-0"), b"{nonsense", qos=1).wait_for_publish(5)
        assert wait_for(lambda: gw.stats["rejected_commands"] == 1)
        close_client(publisher)
    assert [listener.events[("dev-0", s)] for s in range(1, 11)] == [1, 1, 2, 2, 2, 1, 1, 1, 1, 1]


def test_other_commands_reach_on_command(mqtt_url: mqtt.MqttUrl, gateway_id: str, tmp_path: Path) -> None:
    got: list[tuple[str, Command]] = []
    with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db", on_command=lambda d, c: got.append((d, c))) as gw:
        assert wait_for(lambda: gw.connected)
        time.sleep(0.2)  # the SUBSCRIBE is on its way with the CONNACK handling
        publisher = mqtt.make_client(mqtt_url, f"svc-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        mqtt.connect(publisher, mqtt_url)
        publisher.loop_start()
        publisher.publish(protocol.command_topic(gateway_id, "kitchen-bulb"), protocol.encode_command(Command("blink", {"times": 3})),
                          qos=1)
        assert wait_for(lambda: len(got) == 1)
        close_client(publisher)
    assert got == [("kitchen-bulb", Command("blink", {"times": 3}))]


def test_heartbeat_follows_the_clock(mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener, tmp_path: Path) -> None:
    clock = ManualClock()
    with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db", clock=clock, heartbeat_s=60.0) as gw:
        assert wait_for(lambda: len(listener.heartbeats) == 1)  # on connect
        time.sleep(0.6)
        assert len(listener.heartbeats) == 1  # the clock has not moved
        clock.advance(60)
        assert wait_for(lambda: len(listener.heartbeats) == 2)
        clock.advance(3600)  # a jump: one heartbeat, not sixty
        assert wait_for(lambda: len(listener.heartbeats) == 3)
        time.sleep(0.6)
        assert len(listener.heartbeats) == 3
        gw.submit(Reading("dev", "on", T0))
        assert gw.flush(5)
    assert listener.heartbeats[0]["ts"] == int(ManualClock().now() * 1000)
    assert listener.heartbeats[1]["ts"] == listener.heartbeats[0]["ts"] + 60_000


def test_submit_while_broker_unreachable_then_deliver(persistent_mosquitto: embedded.EmbeddedBroker, gateway_id: str,
                                                     tmp_path: Path) -> None:
    url = mqtt.MqttUrl.parse(persistent_mosquitto.url)
    listener = Listener(url, gateway_id)  # its persistent session outlives the broker restart
    persistent_mosquitto.stop()
    gw = make_gateway(url, gateway_id, tmp_path / "o.db", protocol=mqtt.MQTTv5, reconnect_base_s=0.05, reconnect_cap_s=0.3).start()
    try:
        sent = [gw.submit(r) for r in readings(50)]
        assert not gw.flush(0.3) and gw.outbox_depth == 50
        assert gw.stats["published"] == 0
        persistent_mosquitto.start()
        assert gw.flush(10)
        assert wait_for(lambda: listener.distinct() == 50)
        assert set(listener.events) == {(e.device_id, e.seq) for e in sent}
        assert gw.stats["reconnects"] == 0  # first successful connection
    finally:
        gw.stop(timeout=1)
        listener.close()


# amqtt runs in this process: its leaked transports' sockets surface here as unraisable warnings.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_mqtt_311_fallback_against_amqtt(gateway_id: str, tmp_path: Path) -> None:
    broker = embedded.AmqttBroker()
    broker.start()
    try:
        url = mqtt.MqttUrl.parse(broker.url)
        listener = Listener(url, gateway_id)
        # amqtt now and then drops a fresh connection; fast reconnects keep that from eating the
        # flush timeout (the default backoff may wait up to 30 s).
        with make_gateway(url, gateway_id, tmp_path / "o.db", reconnect_base_s=0.05, reconnect_cap_s=0.5) as gw:  # protocol negotiated
            sent = [gw.submit(r) for r in readings(200)]
            assert gw.flush(60)
            assert wait_for(lambda: listener.distinct() == 200)
            assert gw._protocol == mqtt.MQTTv311
        assert set(listener.events) == {(e.device_id, e.seq) for e in sent}
        listener.close()
    finally:
        broker.stop()
        # Collect amqtt's leaked transports now, under this test's filter, not in a later test.
        gc.collect()


def test_many_gateways_in_one_process(mqtt_url: mqtt.MqttUrl, tmp_path: Path) -> None:
    """The simulator runs hundreds of gateways in one process: one thread each, cheap when idle."""
    n_gateways, per_gateway = 100, 30
    prefix = f"fleet-{uuid.uuid4().hex[:6]}"
    listener = Listener(mqtt_url, "+")
    gateways = [make_gateway(mqtt_url, f"{prefix}-{i}", tmp_path / f"{i}.db", heartbeat_s=3600).start() for i in range(n_gateways)]
    try:
        assert wait_for(lambda: all(g.connected for g in gateways), 20)
        start = time.perf_counter()
        for k in range(per_gateway):
            for g in gateways:
                g.submit(Reading("bulb", "on" if k % 2 else "off", T0 + k))
        assert all(g.flush(20) for g in gateways)
        elapsed = time.perf_counter() - start
        total = n_gateways * per_gateway
        assert wait_for(lambda: len(listener.triples) == total, 20), len(listener.triples)
        print(f"{n_gateways} gateways: {total} events in {elapsed:.2f}s = {total / elapsed:.0f}/s")
    finally:
        for g in gateways:
            g.stop(timeout=2)
        listener.close()
    assert listener.triples == {(f"{prefix}-{i}", "bulb", k + 1) for i in range(n_gateways) for k in range(per_gateway)}


def test_stats_and_heartbeat_payload(mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener, tmp_path: Path) -> None:
    with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db") as gw:
        assert wait_for(lambda: len(listener.heartbeats) == 1)
        stats = gw.stats
    assert {"published", "acked", "resent", "rejected_local", "reconnects", "outbox_depth"} <= set(stats)
    assert listener.heartbeats[0]["outbox"] == 0
    json.dumps(stats)


def test_run_gateway_bridges_a_home_broker(mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener, tmp_path: Path) -> None:
    """`mimamori gateway`: the home's Zigbee2MQTT/Tasmota/Shelly/native traffic on a local broker
    (here the same Mosquitto, other topics) reaches the service; blink reaches a native device.
    """
    from mimamori.gateway.service import run_gateway
    from mimamori.kernel.config import Settings

    home = f"home{uuid.uuid4().hex[:6]}"  # unique local names: the session broker is shared
    settings = Settings(mqtt_url=f"mqtt://{mqtt_url.host}:{mqtt_url.port}", mqtt_protocol="auto", gateway_heartbeat_s=3600)
    stop = threading.Event()
    runner = threading.Thread(
        target=run_gateway,
        kwargs={"settings": settings, "gateway_id": gateway_id, "local_url": f"mqtt://{mqtt_url.host}:{mqtt_url.port}",
                "outbox_path": tmp_path / "o.db", "stop": stop},
    )
    runner.start()
    device = mqtt.make_client(mqtt_url, f"dev-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
    blinks: list[bytes] = []
    device.on_message = lambda c, u, m: blinks.append(m.payload)
    mqtt.connect(device, mqtt_url)
    device.loop_start()
    device.subscribe(f"mimamori/local/{home}-bulb/cmd", qos=1)
    try:
        assert wait_for(lambda: listener.status[-1:] == [b"online"])
        time.sleep(0.5)  # the local subscriptions are in place
        msgs = [
            (f"zigbee2mqtt/{home}_pir", b'{"occupancy":true,"battery":100,"linkquality":120}'),
            (f"stat/{home}_plug/POWER", b"OFF"),
            (f"stat/{home}_plug/POWER", b"ON"),
            (f"shellyplus1-{home}/events/rpc", json.dumps({
                "src": f"shellyplus1-{home}", "method": "NotifyEvent",
                "params": {"ts": 1767225600.5, "events": [{"component": "input:0", "id": 0, "event": "single_push", "ts": 1767225600.5}]},
            }).encode()),
            (f"mimamori/local/{home}-bulb/event", protocol.encode_event(Event(f"{home}-bulb", 5, T0, "on"))),
            (f"zigbee2mqtt/{home}_pir", b"{broken"),
        ]
        for topic, payload in msgs:
            device.publish(topic, payload, qos=1).wait_for_publish(5)
        # A fresh gateway: the plug's first report is a real switch (issue 13), not a silent sync.
        expected = {(f"z2m-{home}_pir", 1, "motion"), (f"tasmota-{home}_plug", 1, "off"), (f"tasmota-{home}_plug", 2, "on"),
                    (f"shellyplus1-{home}.input0", 1, "motion"), (f"{home}-bulb", 5, "on")}
        assert wait_for(lambda: {(d, s, listener.kinds[(d, s)]) for d, s in listener.events} == expected), listener.events
        publisher = mqtt.make_client(mqtt_url, f"svc-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        mqtt.connect(publisher, mqtt_url)
        publisher.loop_start()
        publisher.publish(protocol.command_topic(gateway_id, f"{home}-bulb"), protocol.encode_command(Command("blink", {"times": 2})),
                          qos=1)
        assert wait_for(lambda: len(blinks) == 1)
        assert protocol.decode_command(blinks[0]) == Command("blink", {"times": 2})
        close_client(publisher)
    finally:
        stop.set()
        runner.join(15)
        close_client(device)
    assert not runner.is_alive()
    assert wait_for(lambda: listener.status[-1:] == [b"offline"])


def test_gateway_works_with_file_descriptors_above_1024(mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener,
                                                        tmp_path: Path) -> None:
    """Hundreds of gateways in one process push sockets past 1024, where select() fails."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        pytest.skip(f"RLIMIT_NOFILE {soft} too low for this test")
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db") as gw:
            assert gw._waiter._wake_r.fileno() > 1024  # the wake-up socket: opened after the filler
            gw.submit(Reading("bulb", "on", T0))
            assert gw.flush(10)
    finally:
        for fd in filler:
            os.close(fd)
    assert wait_for(lambda: listener.distinct() == 1)


def test_reconnects_back_off_when_the_broker_hangs_up(gateway_id: str, tmp_path: Path) -> None:
    """A broker that accepts TCP and hangs up (overloaded, auth proxy...) must not be hammered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted = 0
    done = threading.Event()

    def serve() -> None:
        nonlocal accepted
        server.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted += 1
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    url = mqtt.MqttUrl.parse(f"mqtt://127.0.0.1:{server.getsockname()[1]}")
    gw = make_gateway(url, gateway_id, tmp_path / "o.db", protocol=mqtt.MQTTv311, reconnect_base_s=0.05, reconnect_cap_s=30).start()
    try:
        gw.submit(Reading("bulb", "on", T0))
        time.sleep(2.0)
        started = time.monotonic()
    finally:
        gw.stop(timeout=1)
        stop_s = time.monotonic() - started
        done.set()
        thread.join()
        server.close()
    assert 2 <= accepted <= 12, accepted  # without backoff: hundreds
    assert stop_s < 2.5  # a backoff wait does not delay stop
    with Outbox(tmp_path / "o.db", clock=SystemClock()) as box:
        assert box.depth == 1  # still there for the next start


def test_no_stall_after_the_newest_row_was_an_acked_heartbeat(mqtt_url: mqtt.MqttUrl, gateway_id: str, listener: Listener,
                                                              tmp_path: Path) -> None:
    with make_gateway(mqtt_url, gateway_id, tmp_path / "o.db") as gw:
        gw.submit(Reading("dev", "on", T0))
        gw.submit(Reading("dev", "heartbeat", T0 + 1))
        assert gw.flush(5)
        time.sleep(0.1)  # the ack commit of the heartbeat deletes the newest row
        gw.submit(Reading("dev", "off", T0 + 2))
        assert gw.flush(5), gw.stats
        assert gw.stats["reconnects"] == 0
    assert wait_for(lambda: {("dev", 1), ("dev", 2)} <= set(listener.events))
