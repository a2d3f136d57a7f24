"""IngestClient (paho subclass: buffered reads, lean PUBLISH path, burst acks) on a real broker."""

from __future__ import annotations

import random
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mimamori.bench.ingest_bench import publish_raw
from mimamori.ingest.client import IngestClient
from mimamori.kernel import mqtt
from mimamori.kernel.mqtt import MqttUrl

pytestmark = pytest.mark.integration


def subscriber(url: MqttUrl, topic: str, got: list, *, client_id: str | None = None, protocol: int = mqtt.MQTTv5) -> IngestClient:
    client = mqtt.make_client(url, client_id or f"t-{uuid.uuid4().hex[:8]}", protocol=protocol, manual_ack=True, clean_start=False, client_class=IngestClient)
    assert isinstance(client, IngestClient)
    client.on_raw_publish = lambda t, p, mid, qos, retain: got.append((t, p, mid, qos))
    subscribed = []
    client.on_subscribe = lambda *a: subscribed.append(1)
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    mqtt.connect(client, url, clean_start=False, session_expiry_s=60, receive_maximum=1000)
    pump(client, lambda: subscribed)
    return client


def pump(client: paho.Client, done, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        client.loop(0.01)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_payloads_of_every_size_arrive_intact_and_in_order(mqtt_url: MqttUrl, protocol: int, monkeypatch: pytest.MonkeyPatch) -> None:
    straddled = []
    original = IngestClient._slow_packet_read
    monkeypatch.setattr(IngestClient, "_slow_packet_read", lambda self: (straddled.append(1), original(self))[1])
    topic = f"t/{uuid.uuid4().hex[:8]}"
    rnd = random.Random(1)
    # sizes around the 64 KiB read size and the remaining-length byte boundaries (128, 16384)
    sizes = [0, 1, 126, 127, 128, 16383, 16384, 60000] + [rnd.choice([10, 100, 5000, 40000]) for _ in range(300)]
    payloads = [rnd.randbytes(n) for n in sizes]
    got: list = []
    client = subscriber(mqtt_url, topic, got, protocol=protocol)
    try:
        publish_raw(mqtt_url, [(topic.encode(), p) for p in payloads])
        pump(client, lambda: len(got) >= len(payloads))
        client.ack_many([mid for *_, mid, qos in got])
        client.loop(0.05)
    finally:
        client.disconnect()
    assert [p for _, p, _, _ in got] == payloads
    assert {t for t, *_ in got} == {topic.encode()}
    assert all(qos == 1 and mid > 0 for *_, mid, qos in got)
    assert straddled  # packets split across reads went through paho's reader, fed from our buffer


def test_v5_publish_properties_are_skipped(mqtt_url: MqttUrl) -> None:
    topic = f"t/{uuid.uuid4().hex[:8]}"
    got: list = []
    client = subscriber(mqtt_url, topic, got)
    pub = mqtt.make_client(mqtt_url, f"p-{uuid.uuid4().hex[:8]}")
    mqtt.connect(pub, mqtt_url)
    pub.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k" * 100, "v" * 200)]  # a long property block (multi-byte length)
        props.MessageExpiryInterval = 60
        pub.publish(topic, b"hello", qos=1, properties=props).wait_for_publish(5)
        pump(client, lambda: got)
    finally:
        pub.loop_stop()
        pub.disconnect()
        client.disconnect()
    assert got[0][:2] == (topic.encode(), b"hello")


def test_burst_acks_clear_exactly_the_acked_messages(mqtt_url: MqttUrl) -> None:
    topic = f"t/{uuid.uuid4().hex[:8]}"
    client_id = f"t-{uuid.uuid4().hex[:8]}"
    got: list = []
    client = subscriber(mqtt_url, topic, got, client_id=client_id)
    publish_raw(mqtt_url, [(topic.encode(), b"%d" % i) for i in range(100)])
    pump(client, lambda: len(got) >= 100)
    client.ack_many([mid for *_, mid, _ in got[:60]])
    deadline = time.monotonic() + 0.2  # PUBACKs written right before DISCONNECT may be dropped
    while time.monotonic() < deadline:
        client.loop(0.01)
    client.disconnect()
    client.loop(0.05)

    again: list = []
    client = subscriber(mqtt_url, topic, again, client_id=client_id)
    try:
        pump(client, lambda: len(again) >= 40)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            client.loop(0.01)
        client.ack_many([mid for *_, mid, _ in again])
        client.loop(0.05)
    finally:
        client.disconnect()
        client.loop(0.05)
    assert [p for _, p, _, _ in again] == [b"%d" % i for i in range(60, 100)]
