"""Broker restart with a shared subscription: the gateway's settling window after a reconnect.

Mosquitto 2.0.11 does not restore shared subscriptions after a restart. Gateways that reconnect
before the ingest has subscribed again get PUBACKs for messages the broker then drops (found by
``mimamori chaos --faults broker_restart``). Here real Mosquitto processes and a subscriber that
does what the ingest does (MQTT v5, ``$share/ingest/...``, persistent session, resubscribes on every
connect, a little slower to come back than the gateways) check that the gateways re-publish what
they sent while settling, so every ``(device_id, seq)`` arrives without any resend request.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from mimamori.gateway.adapters import Reading
from mimamori.gateway.outbox import Outbox
from mimamori.gateway.service import Gateway
from mimamori.kernel import embedded, mqtt, observability, protocol
from mimamori.kernel.clock import SystemClock
from support.broker import close_client
from support.waiting import wait_for

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
SETTLE = {"settle_s": 4.0}  # the gateways' settling window for these tests (real seconds)



class IngestLikeSubscriber:
    """What the ingest does at the broker: v5, shared subscription, persistent session, subscribe on
    every CONNACK. ``hold()`` delays the next subscribe until ``subscribe()`` (the ingest's backoff
    reaches seconds: the gateways come back first), so the test controls when it is back.
    """

    def __init__(self, url: mqtt.MqttUrl, reconnect_s: float = 0.2) -> None:
        self.url = url
        self.got: set[tuple[str, str, int]] = set()
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.make_client(url, f"ingest-like-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.held = False
        self.client.on_connect = lambda c, u, f, rc, p: None if self.held else self.subscribe()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(reconnect_s, reconnect_s)
        mqtt.connect(self.client, url, clean_start=False, session_expiry_s=3600)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def hold(self) -> None:
        self.held = True

    def subscribe(self) -> None:
        self.held = False
        assert wait_for(self.client.is_connected, 10)
        self.client.subscribe(f"$share/ingest/{protocol.ROOT}/+/+/event", qos=1)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        topic = protocol.parse_topic(msg.topic)
        event = protocol.decode_event(msg.payload, topic.device_id)
        with self.lock:
            self.got.add((topic.gateway_id, event.device_id, event.seq))

    def close(self) -> None:
        close_client(self.client)


@pytest.fixture
def mosquitto(own_broker: embedded.EmbeddedBroker) -> embedded.EmbeddedBroker:
    if own_broker.kind != "mosquitto":
        pytest.skip("needs a restartable Mosquitto (shared subscriptions, persistence)")
    return own_broker


def test_events_published_while_settling_after_a_broker_restart_all_arrive(mosquitto: embedded.EmbeddedBroker, tmp_path: Path) -> None:
    url = mqtt.MqttUrl.parse(mosquitto.url)
    subscriber = IngestLikeSubscriber(url)
    prefix = f"gw{uuid.uuid4().hex[:6]}"
    gateways = [
        Gateway(f"{prefix}-{i}", url, tmp_path / f"{i}.sqlite3", clock=SystemClock(), protocol=mqtt.MQTTv5,
                heartbeat_s=3600, reconnect_base_s=0.05, reconnect_cap_s=0.3, **SETTLE).start()  # type: ignore[arg-type]
        for i in range(3)
    ]
    sent: set[tuple[str, str, int]] = set()
    stop_feeding = threading.Event()

    def feed() -> None:  # a steady trickle per gateway, across the restart
        k = 0
        while not stop_feeding.is_set():
            for gw in gateways:
                e = gw.submit(Reading(f"dev-{k % 4}", "on" if k % 2 else "off", T0 + k))
                sent.add((gw.gateway_id, e.device_id, e.seq))
            k += 1
            time.sleep(0.01)

    feeder = threading.Thread(target=feed)
    try:
        assert wait_for(lambda: all(g.connected for g in gateways))
        feeder.start()
        time.sleep(1.0)
        subscriber.hold()
        mosquitto.stop()  # sessions saved; the shared subscription is not restored
        time.sleep(1.0)  # the gateways keep storing
        mosquitto.start()
        assert wait_for(lambda: all(g.connected for g in gateways), 10)
        reconnected = time.monotonic()
        time.sleep(1.5)  # the gateways publish the backlog and new events; the subscriber is not back yet
        stop_feeding.set()
        feeder.join()
        assert all(g.flush(10) for g in gateways)
        subscriber.subscribe()
        assert subscriber.subscribed.wait(10)
        window = SETTLE.get("settle_s", 0.0)
        assert not window or time.monotonic() < reconnected + window - 0.5, "too slow to test the window"
        # Stop shortly after the settling window: what was sent during it is re-published first.
        assert wait_for(lambda: time.monotonic() > reconnected + window + 0.2
                        and all(g.settling.idle for g in gateways), 10), [g.stats for g in gateways]
        assert all(g.flush(5) for g in gateways)
        stats = [g.stats for g in gateways]
        body = observability.render_metrics()[0].decode()
        name = "mimamori_gateway_events_resent_after_reconnect_total"
        assert f'{name}{{gateway="{gateways[0].gateway_id}"}} {float(stats[0]["resent_after_reconnect"])}' in body
    finally:
        stop_feeding.set()
        if feeder.is_alive():
            feeder.join()
        for g in gateways:
            g.stop(timeout=2)
    try:
        assert wait_for(lambda: sent <= subscriber.got, 5), (len(sent - subscriber.got), len(sent), stats)
    finally:
        subscriber.close()
    assert all(s["reconnects"] == 1 and s["resent_after_reconnect"] > 0 for s in stats), stats
    for i in range(3):  # the window's range was replayed and forgotten: nothing left for a next start
        with Outbox(tmp_path / f"{i}.sqlite3", clock=SystemClock()) as box:
            assert box.unconfirmed() is None


def test_a_stop_within_the_window_republishes_and_keeps_the_range(mosquitto: embedded.EmbeddedBroker, tmp_path: Path) -> None:
    """Stopped (or killed) while settling: re-published at once, best effort, and recorded so that
    the next start on the same outbox re-publishes the range again.
    """
    url = mqtt.MqttUrl.parse(mosquitto.url)
    gw_id = f"gw{uuid.uuid4().hex[:6]}"
    path = tmp_path / "o.sqlite3"
    subscriber = IngestLikeSubscriber(url)
    try:
        gw = Gateway(gw_id, url, path, clock=SystemClock(), heartbeat_s=3600, reconnect_base_s=0.05, reconnect_cap_s=0.3,
                     settle_s=60.0).start()
        before = [gw.submit(Reading("dev", "on", T0 + k)) for k in range(5)]
        assert gw.flush(5)
        mosquitto.stop()
        during = [gw.submit(Reading("dev", "off", T0 + 10 + k)) for k in range(5)]
        mosquitto.start()
        assert gw.flush(10)
        assert gw.stats["reconnects"] == 1 and gw.stats["resent_after_reconnect"] == 0  # still settling
        assert subscriber.subscribed.wait(10)
        gw.stop(timeout=5)
        assert gw.stats["resent_after_reconnect"] == 5  # the 5 pending at the reconnect, not the 5 before
        with Outbox(path, clock=SystemClock()) as box:
            lo, hi = box.unconfirmed()  # type: ignore[misc]
            assert [e.seq for _, e in box.rows_between(lo - 1, hi, 100)] == [e.seq for e in during]
        assert wait_for(lambda: {("dev", e.seq) for e in before + during} <= {(d, s) for _, d, s in subscriber.got})
        with Gateway(gw_id, url, path, clock=SystemClock(), heartbeat_s=3600) as again:
            assert wait_for(lambda: again.stats["resent_after_reconnect"] == 5)
            assert wait_for(lambda: again.outbox.unconfirmed() is None)
    finally:
        subscriber.close()


def test_a_second_restart_within_the_window_widens_it(mosquitto: embedded.EmbeddedBroker, tmp_path: Path) -> None:
    """The broker goes away again while the gateway settles: nothing sent since the first reconnect
    is forgotten, and the replay waits for the end of the new window.
    """
    url = mqtt.MqttUrl.parse(mosquitto.url)
    subscriber = IngestLikeSubscriber(url)
    gw = Gateway(f"gw{uuid.uuid4().hex[:6]}", url, tmp_path / "o.sqlite3", clock=SystemClock(), heartbeat_s=3600,
                 reconnect_base_s=0.05, reconnect_cap_s=0.3, settle_s=5.0).start()
    try:
        sent = [gw.submit(Reading("dev", "on", T0))]
        assert gw.flush(5)
        subscriber.hold()
        mosquitto.stop()
        sent += [gw.submit(Reading("dev", "off", T0 + 1 + k)) for k in range(20)]
        mosquitto.start()
        assert gw.flush(10) and gw.stats["reconnects"] == 1
        sent += [gw.submit(Reading("dev", "on", T0 + 100 + k)) for k in range(20)]
        assert gw.flush(10)
        mosquitto.stop()  # again, within the window: all of the above was PUBACKed and dropped
        sent += [gw.submit(Reading("dev", "off", T0 + 200 + k)) for k in range(20)]
        mosquitto.start()
        assert wait_for(lambda: gw.stats["reconnects"] == 2 and gw.flush(0.1), 10)
        second = time.monotonic()
        subscriber.subscribe()
        assert subscriber.subscribed.wait(10)
        assert gw.stats["resent_after_reconnect"] == 0  # still settling
        assert wait_for(lambda: time.monotonic() > second + 5.0 and gw.stats["resent_after_reconnect"] >= 60, 10), gw.stats
        assert wait_for(lambda: {("dev", e.seq) for e in sent[1:]} <= {(d, s) for _, d, s in subscriber.got}, 5), gw.stats
        assert gw.stats["resent_after_reconnect"] == 60  # the 60 since the first reconnect, not seq 1
    finally:
        gw.stop(timeout=2)
        subscriber.close()


def test_the_settling_window_comes_from_the_settings(mqtt_url: mqtt.MqttUrl, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``MIMAMORI_GATEWAY_SETTLE_S`` reaches the gateway that ``mimamori gateway`` runs (a real run
    against the test broker, which stands in for both the home's and the service's broker).
    """
    from mimamori.gateway import service as gateway_service
    from mimamori.kernel.config import Settings

    windows: list[float] = []

    class Recorded(gateway_service.Gateway):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            windows.append(self.settling.settle_s)

    monkeypatch.setattr(gateway_service, "Gateway", Recorded)
    monkeypatch.setenv("MIMAMORI_GATEWAY_SETTLE_S", "7.5")
    settings = Settings(mqtt_url=str(mqtt_url), data_dir=tmp_path)
    stop = threading.Event()
    runner = threading.Thread(target=gateway_service.run_gateway, args=(settings,), daemon=True,
                              kwargs={"gateway_id": f"gw-settle-{uuid.uuid4().hex[:6]}", "local_url": str(mqtt_url),
                                      "outbox_path": tmp_path / "outbox.db", "stop": stop})
    runner.start()
    wait_for(lambda: windows, 10)
    stop.set()
    runner.join(15)
    assert windows == [7.5] and not runner.is_alive()
