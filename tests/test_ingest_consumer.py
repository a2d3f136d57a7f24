"""The ingest consumer end to end: a real broker, a real PostgreSQL, faults included."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from mimamori.bench.chaos_stack import PgProxy
from mimamori.bench.ingest_bench import _register_session as register_session
from mimamori.bench.ingest_bench import publish_events, publish_raw
from mimamori.ingest.consumer import IngestService
from mimamori.ingest.sweeper import GapSweeper
from mimamori.ingest.validate import DeadLetterBudget
from mimamori.kernel import embedded, mqtt, protocol
from mimamori.kernel.clock import SystemClock
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.protocol import Event
from support.waiting import wait_for as wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TS = 1_767_225_600_000


def count(url: str, sql: str, *args: object) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchone()[0]  # type: ignore[index]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def settings(**overrides: object) -> Settings:
    base = {"ingest_session_expiry_s": 120, "ingest_batch_max_wait_s": 0.02}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@contextmanager
def running(service: IngestService) -> Iterator[IngestService]:
    thread = threading.Thread(target=service.run, name="test-ingest", daemon=True)
    thread.start()
    try:
        assert service.subscribed.wait(15), "ingest did not subscribe"
        yield service
    finally:
        service.stop_event.set()
        thread.join(30)
        assert not thread.is_alive()


@pytest.fixture
def mqtt_url(own_broker: embedded.EmbeddedBroker) -> MqttUrl:
    """A broker of each test's own: the ingest subscribes to every gateway's retained status, so on
    the session broker it would also count the statuses other tests' gateways left behind.
    """
    return MqttUrl.parse(own_broker.url)


def make_service(pg_url: str | None, mqtt_url: MqttUrl, **kwargs: object) -> IngestService:
    group = kwargs.pop("share_group", None) or unique("g")
    client_id = kwargs.pop("client_id", None) or unique("ingest-test-")
    s = kwargs.pop("settings", None) or settings()
    kwargs.setdefault("sweeper", None)
    return IngestService(s, database_url=pg_url, mqtt_url=mqtt_url, client_id=client_id, share_group=group, **kwargs)  # type: ignore[arg-type]


def event_msg(gw: str, device: str, seq: int, kind: str = "on", ts: int | None = None) -> tuple[bytes, bytes]:
    ts = TS + seq * 1000 if ts is None else ts
    return protocol.event_topic(gw, device).encode(), protocol.encode_event(Event(device, seq, ts, kind))


# --- the happy path ------------------------------------------------------------------------------


def test_events_are_stored_once_and_device_state_follows(pg_url: str, mqtt_url: MqttUrl) -> None:
    gw = unique("gw")
    batches: list[dict] = []
    svc = make_service(pg_url, mqtt_url, on_batch=batches.append)
    msgs = [event_msg(gw, f"{gw}-d{i % 5}", i // 5, "on" if i % 2 else "off") for i in range(500)]
    redelivered = msgs[100:150]  # the same device/seq/ts again (a gateway retry)
    heartbeat = event_msg(gw, f"{gw}-d0", 99, "heartbeat", ts=TS + 500_000)
    with running(svc):
        publish_raw(mqtt_url, msgs + redelivered + [heartbeat])
        wait_until(lambda: svc.stats.acked >= 551, what="all acked")
    assert count(pg_url, "SELECT count(*) FROM events") == 500
    assert count(pg_url, "SELECT count(DISTINCT (device_id, seq)) FROM events") == 500
    assert svc.stats.stored == 500 and svc.stats.duplicates == 50 and svc.stats.received == 551
    assert count(pg_url, "SELECT count(*) FROM devices WHERE household_id IS NULL AND gateway_id = %s", gw) == 5
    with psycopg.connect(pg_url) as conn:
        state = conn.execute("SELECT max_seq, reported_seq, power FROM device_state WHERE device_id = %s", (f"{gw}-d0",)).fetchone()
    assert state == (99, 99, "on")  # d0's newest event is i = 495 (odd: "on"); its heartbeat says 99
    assert batches and sum(b["size"] for b in batches) == 551
    assert set(batches[0]) >= {"size", "stored", "duplicates", "dead_letters", "totals"}


def test_status_heartbeat_and_malformed_traffic_all_accounted_for(pg_url: str, mqtt_url: MqttUrl) -> None:
    gw = unique("gw")
    rnd = random.Random(7)
    event_topic = protocol.event_topic(gw, "d1").encode()
    big = b"{" + b'"pad":"' + b"x" * 3000 + b'"}'
    makers: list[Callable[[int], tuple[bytes, bytes, str]]] = [
        lambda i: (protocol.event_topic(gw, "d1").encode(), rnd.randbytes(rnd.randint(0, 60)) + b"\xff", "bad_json"),
        lambda i: (protocol.event_topic(gw, "d1").encode(), b'{"v":1,"device":"d1","seq":', "bad_json"),
        lambda i: (event_topic, json.dumps({"device": "d1", "seq": "x", "ts": TS, "kind": "on"}).encode(), "bad_seq"),
        lambda i: (event_topic, json.dumps({"device": "d1", "seq": i, "ts": "soon", "kind": "on"}).encode(), "bad_ts"),
        lambda i: (event_topic, json.dumps({"device": "d1", "seq": i, "ts": TS, "kind": "explode"}).encode(), "unknown_kind"),
        lambda i: (protocol.event_topic(gw, "d1").encode(), big, "oversized"),
        lambda i: (f"mimamori/v1//d{i}/event".encode(), b"{}", "bad_gateway_id"),  # empty topic level
        lambda i: (f"mimamori/v1/{gw}/{'d' * 70}/event".encode(), b"{}", "bad_device_id"),
        lambda i: (f"mimamori/v1/{gw}$/d1/event".encode(), protocol.encode_event(Event("d1", i, TS, "on")), "bad_gateway_id"),
        lambda i: (protocol.event_topic(gw, "d1").encode(), protocol.encode_event(Event("d2", i, TS, "on")), "device_mismatch"),
        lambda i: (protocol.status_topic(gw).encode(), b"sleepy", "bad_status"),
        lambda i: (protocol.heartbeat_topic(gw).encode(), b"[]", "bad_heartbeat"),
        lambda i: (event_topic, '{"device":"d1","kind":"\u3042"}'.encode("utf-16"), "bad_seq"),  # UTF-16 JSON is still JSON
    ]
    messages: list[tuple[bytes, bytes]] = []
    expected_reasons: dict[str, int] = {}
    valid = 0
    bad = 0
    while bad < 10_000:
        topic, body, reason = makers[bad % len(makers)](bad)
        messages.append((topic, body))
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
        bad += 1
        if bad % 5 == 0:
            messages.append(event_msg(gw, f"{gw}-ok", valid))
            valid += 1
    messages.append((protocol.status_topic(gw).encode(), b"online"))
    messages.append((protocol.heartbeat_topic(gw).encode(), protocol.encode_gateway_heartbeat(TS, 4)))
    svc = make_service(pg_url, mqtt_url)
    # Every reason at volume, each one stored: a budget the flood fits in (the default keeps 120 a
    # source and one a second after: tests/security/test_sec_dead_letters.py).
    svc.dead_letter_budget = DeadLetterBudget(per_s=1.0, burst=20_000)
    with running(svc):
        publish_raw(mqtt_url, messages)
        wait_until(lambda: svc.stats.acked >= len(messages), what="all acked")
    assert count(pg_url, "SELECT count(*) FROM dead_letters") == sum(expected_reasons.values()) == 10_000
    with psycopg.connect(pg_url) as conn:
        reasons = dict(conn.execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason").fetchall())
        assert reasons == expected_reasons
        assert conn.execute("SELECT payload FROM dead_letters WHERE reason = 'oversized' LIMIT 1").fetchone() == (big,)
        gateway_row = conn.execute("SELECT status, last_heartbeat->>'outbox' FROM gateways WHERE gateway_id = %s", (gw,)).fetchone()
        assert gateway_row == ("online", "4")
    assert count(pg_url, "SELECT count(*) FROM events") == valid == 2000


# --- crash, restart, outages ---------------------------------------------------------------------

_INGEST_PROCESS = """
import signal, sys
from mimamori.ingest.consumer import IngestService
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl
svc = IngestService(Settings(ingest_session_expiry_s=300, ingest_batch_size=200), database_url=sys.argv[1],
                    mqtt_url=MqttUrl.parse(sys.argv[2]), client_id=sys.argv[3], share_group=sys.argv[4], sweeper=None)
signal.signal(signal.SIGTERM, lambda *a: svc.stop_event.set())
svc.run()
"""


def _spawn_ingest(pg_url: str, mqtt_url: MqttUrl, client_id: str, group: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-c", _INGEST_PROCESS, pg_url, str(mqtt_url), client_id, group],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_file,
        )


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_stores_every_event_exactly_once(pg_url: str, mqtt_url: MqttUrl, tmp_path: Path) -> None:
    client_id, group, prefix = unique("ingest-kill-"), unique("g"), unique("k")
    total = 30_000
    register_session(mqtt_url, client_id, group)  # the session exists before the subprocess connects
    log = tmp_path / "ingest.log"
    proc = _spawn_ingest(pg_url, mqtt_url, client_id, group, log)
    try:
        publisher = threading.Thread(target=publish_events, args=(mqtt_url, prefix, 0, total, 40))
        publisher.start()
        wait_until(lambda: count(pg_url, "SELECT count(*) FROM events") >= 2000, 30, "first commits")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        at_kill = count(pg_url, "SELECT count(*) FROM events")
        publisher.join(60)
        assert at_kill < total, "the kill must land mid-stream"
        proc = _spawn_ingest(pg_url, mqtt_url, client_id, group, log)
        wait_until(lambda: count(pg_url, "SELECT count(*) FROM events") >= total, 60, "all events after restart")
        time.sleep(0.5)  # redeliveries of what was committed but not acked must not add rows
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert count(pg_url, "SELECT count(*) FROM events") == total
    assert count(pg_url, "SELECT count(DISTINCT (device_id, seq)) FROM events") == total


def test_database_outage_loses_nothing_and_acks_nothing_meanwhile(pg_url: str, mqtt_url: MqttUrl) -> None:
    proxy = PgProxy(pg_url)  # the fault suite's: a TCP forwarder to PostgreSQL that can be cut
    gw = unique("gw")
    svc = make_service(proxy.url, mqtt_url)
    try:
        with running(svc):
            publish_raw(mqtt_url, [event_msg(gw, f"{gw}-d{i % 3}", i // 3) for i in range(300)])
            wait_until(lambda: svc.stats.acked >= 300, what="first acks")
            proxy.cut()
            publish_raw(mqtt_url, [event_msg(gw, f"{gw}-d{i % 3}", i // 3) for i in range(300, 1500)])
            wait_until(lambda: svc.stats.db_errors >= 2, what="database errors")
            acked_during_outage = svc.stats.acked
            time.sleep(0.5)
            assert svc.stats.acked == acked_during_outage == 300  # nothing acked while the DB is away
            proxy.resume()
            wait_until(lambda: svc.stats.acked >= 1500, 30, what="acks after the outage")
    finally:
        proxy.cut()
    assert count(pg_url, "SELECT count(*) FROM events") == 1500


def test_graceful_stop_commits_and_acks_the_last_batch(pg_url: str, mqtt_url: MqttUrl) -> None:
    gw, client_id, group = unique("gw"), unique("ingest-stop-"), unique("g")
    slow = settings(ingest_batch_size=10_000, ingest_batch_max_wait_s=10)
    svc = make_service(pg_url, mqtt_url, client_id=client_id, share_group=group, settings=slow)
    with running(svc):
        publish_raw(mqtt_url, [event_msg(gw, "d", i) for i in range(100)])
        wait_until(lambda: svc.stats.received >= 100, what="received")
        assert count(pg_url, "SELECT count(*) FROM events") == 0  # still in the open batch
    assert count(pg_url, "SELECT count(*) FROM events") == 100
    assert svc.stats.acked == 100
    again = make_service(pg_url, mqtt_url, client_id=client_id, share_group=group)
    with running(again):
        time.sleep(0.5)
    assert again.stats.received == 0  # acked before leaving: nothing redelivered


def test_broker_restart_resumes_the_persistent_session(pg_url: str, own_broker: embedded.EmbeddedBroker) -> None:
    url = MqttUrl.parse(own_broker.url)
    gw = unique("gw")
    svc = make_service(pg_url, url)
    with running(svc):
        publish_raw(url, [event_msg(gw, "d", i) for i in range(100)])
        wait_until(lambda: svc.stats.acked >= 100, what="acks")
        own_broker.stop()
        time.sleep(0.3)
        own_broker.start()
        wait_until(svc.subscribed.is_set, 30, what="resubscribed")
        publish_raw(url, [event_msg(gw, "d", i) for i in range(100, 200)])
        wait_until(lambda: count(pg_url, "SELECT count(*) FROM events") >= 200, what="events after restart")
    assert svc.stats.connects >= 2
    assert count(pg_url, "SELECT count(*) FROM events") == 200


def test_ingest_started_before_the_broker_waits_for_it(pg_url: str, own_broker: embedded.EmbeddedBroker) -> None:
    url = MqttUrl.parse(own_broker.url)
    own_broker.stop()
    svc = make_service(pg_url, url)
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert thread.is_alive() and not svc.subscribed.is_set()
        own_broker.start()
        assert svc.subscribed.wait(20)
        publish_raw(url, [event_msg("gw-late", "d", i) for i in range(50)])
        wait_until(lambda: svc.stats.acked >= 50, what="acks")
    finally:
        svc.stop_event.set()
        thread.join(30)
    assert count(pg_url, "SELECT count(*) FROM events") == 50


def test_gap_sweeper_asks_the_gateway_to_resend(pg_url: str, mqtt_url: MqttUrl) -> None:
    gw = unique("gw")
    commands: list[tuple[str, protocol.Command]] = []
    listener = mqtt.make_client(mqtt_url, unique("gw-listener-"))
    listener.on_message = lambda c, u, m: commands.append((m.topic, protocol.decode_command(m.payload)))
    listener.on_connect = lambda c, *a: c.subscribe(protocol.command_filter(gw), qos=1)
    mqtt.connect(listener, mqtt_url)
    listener.loop_start()
    try:
        sweeper = GapSweeper(SystemClock(), interval_s=0.2, grace_s=0.0, window_s=10 * 365 * 86400.0)
        svc = make_service(pg_url, mqtt_url, sweeper=sweeper)
        with running(svc):
            publish_raw(mqtt_url, [event_msg(gw, "bulb", s) for s in (0, 1, 2, 6, 7)])
            wait_until(lambda: commands, what="a resend command")
    finally:
        listener.loop_stop()
        listener.disconnect()
    topic, cmd = commands[0]
    assert topic == protocol.command_topic(gw, "bulb")
    assert (cmd.cmd, cmd.args) == ("resend", {"from_seq": 3, "to_seq": 5})
    assert svc.stats.resend_requests >= 1


# --- the broker configuration we ship ------------------------------------------------------------


@pytest.fixture
def deploy_broker(tmp_path: Path) -> Iterator[MqttUrl]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto binary missing")
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    port = embedded.free_port()
    conf, n = re.subn(r"^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1", conf, flags=re.MULTILINE)
    assert n == 1
    conf, n = re.subn(r"^persistence_location .*$", f"persistence_location {tmp_path}/", conf, flags=re.MULTILINE)
    assert n == 1
    if os.geteuid() == 0:
        conf += "user root\n"  # as root, mosquitto would switch to user mosquitto, who cannot write tmp_path
    (tmp_path / "mosquitto.conf").write_text(conf)
    with (tmp_path / "log").open("wb") as log:
        proc = subprocess.Popen([binary, "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: embedded.port_open("127.0.0.1", port) or proc.poll() is not None, 10, "mosquitto")
        assert proc.poll() is None, (tmp_path / "log").read_text()
        yield MqttUrl.parse(f"mqtt://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)


def test_shipped_mosquitto_config_lifts_the_limits_that_lose_messages() -> None:
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    values = dict(re.findall(r"^(\w+) (.+)$", conf, flags=re.MULTILINE))
    assert values["persistence"] == "true"
    assert int(values["max_queued_messages"]) >= 1_000_000  # 0 means "unlimited" but is buggy in 2.0.x
    assert int(values["max_inflight_messages"]) >= 1000
    assert int(values["max_packet_size"]) > protocol.MAX_PAYLOAD_BYTES


@pytest.mark.parametrize("protocol_version", ["5", "3.1.1"])
def test_ingest_through_the_shipped_config(pg_url: str, deploy_broker: MqttUrl, protocol_version: str) -> None:
    gw = unique("gw")
    svc = make_service(pg_url, deploy_broker, settings=settings(mqtt_protocol=protocol_version))
    with running(svc):
        assert svc.protocol == (mqtt.MQTTv5 if protocol_version == "5" else mqtt.MQTTv311)
        publish_raw(deploy_broker, [event_msg(gw, f"d{i % 7}", i // 7) for i in range(3000)])
        wait_until(lambda: svc.stats.acked >= 3000, what="all acked")
    assert count(pg_url, "SELECT count(*) FROM events") == 3000


# amqtt itself leaves the stream of the refused v5 probe connection unclosed (its ResourceWarning).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ingest_on_an_mqtt_311_only_broker(pg_url: str) -> None:
    """Amqtt speaks only MQTT 3.1.1 and has no shared subscriptions: plain subscription, same acks."""
    broker = embedded.AmqttBroker()
    broker.start()
    try:
        url = MqttUrl.parse(broker.url)
        svc = make_service(pg_url, url)
        with running(svc):
            assert svc.protocol == mqtt.MQTTv311
            publish_raw(url, [event_msg("gw-a", "d", i) for i in range(300)], window=50)
            wait_until(lambda: svc.stats.acked >= 300, what="all acked")
    finally:
        broker.stop()
    assert count(pg_url, "SELECT count(*) FROM events") == 300
