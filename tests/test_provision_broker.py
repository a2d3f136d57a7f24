"""Broker security on a real Mosquitto started here with the files `mimamori gateway provision` writes:
password file, ACL and a TLS listener with the generated CA. One broker for the module (seconds).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mimamori.gateway import provision
from mimamori.gateway.adapters import Reading
from mimamori.gateway.service import Gateway
from mimamori.kernel import mqtt, protocol
from mimamori.kernel.clock import SystemClock
from mimamori.kernel.config import Settings
from support.broker import DYNSEC_PLUGIN, MOSQUITTO, T0, Client, SecureBroker, event_payload
from support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="needs the mosquitto binary"),
    pytest.mark.skipif(not DYNSEC_PLUGIN, reason="needs Mosquitto's dynamic-security plugin"),
]




@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(*args: object, **kw: object) -> Client:
        c = Client(*args, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def ingest_subscriber(secure: SecureBroker, clients: Callable[..., Client]) -> Client:
    sub = clients(secure.url("ingest", secure.password("ingest"))).start()
    assert sub.accepted, sub.connack
    sub.subscribe(protocol.shared(protocol.EVENT_FILTER), protocol.shared(protocol.STATUS_FILTER))
    return sub


def test_gateway_service_uplink_over_tls_with_provisioned_credentials(
    secure: SecureBroker, clients: Callable[..., Client], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real Gateway, configured from its generated env file, reaches an ingest-account subscriber."""
    sub = ingest_subscriber(secure, clients)
    env = provision.parse_env(secure.result.gateway_env["gw-a"].read_text())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    url = mqtt.url_from_settings(settings)
    assert (url.tls, url.username, url.ca_file) == (True, "gw-a", secure.ca_file)
    assert mqtt.negotiate_protocol(url) == mqtt.MQTTv5  # the probe authenticates too
    with Gateway(settings.gateway_id or "", url, tmp_path / "o.sqlite3", clock=SystemClock(), heartbeat_s=3600) as gw:
        sent = gw.submit_many([Reading(f"dev-{i % 3}", "on", T0 + i) for i in range(50)])
        assert gw.flush(10), gw.stats
        assert wait_for(lambda: len([t for t in sub.topics() if t.endswith("/event")]) == 50), sub.topics()
    expected = {protocol.event_topic("gw-a", e.device_id) for e in sent}
    assert {t for t in sub.topics() if t.endswith("/event")} == expected
    assert wait_for(lambda: protocol.status_topic("gw-a") in sub.topics())


def test_gateway_cannot_publish_as_another_gateway(secure: SecureBroker, clients: Callable[..., Client]) -> None:
    sub = ingest_subscriber(secure, clients)
    gw_a = clients(secure.url("gw-a", secure.password("gw-a"))).start()
    assert gw_a.accepted
    forged = [
        protocol.event_topic("gw-b", "dev-x"),
        protocol.status_topic("gw-b"),
        protocol.heartbeat_topic("gw-b"),
        protocol.command_topic("gw-b", "dev-x"),
    ]
    for topic in forged:
        gw_a.client.publish(topic, event_payload("dev-x", 1), qos=1).wait_for_publish(5)
    # Per-client order is kept: once the marker arrives, anything forged before it would have too.
    marker = protocol.event_topic("gw-a", "marker")
    gw_a.client.publish(marker, event_payload("marker", 1), qos=1).wait_for_publish(5)
    assert wait_for(lambda: marker in sub.topics())
    assert not set(forged) & set(sub.topics()), sub.topics()


def test_gateway_reads_only_its_own_commands(secure: SecureBroker, clients: Callable[..., Client]) -> None:
    gw_a = clients(secure.url("gw-a", secure.password("gw-a"))).start()
    gw_a.subscribe(protocol.command_filter("gw-b"), protocol.command_filter("gw-a"), "mimamori/#")
    alerts = clients(secure.url("alerts", secure.password("alerts"))).start()
    assert alerts.accepted
    blink = protocol.encode_command(protocol.Command("blink", {}))
    for_b, for_a = protocol.command_topic("gw-b", "lamp"), protocol.command_topic("gw-a", "lamp")
    alerts.client.publish(for_b, blink, qos=1).wait_for_publish(5)
    alerts.client.publish(for_a, blink, qos=1).wait_for_publish(5)
    assert wait_for(lambda: for_a in gw_a.topics())
    time.sleep(0.2)
    # Not B's command, and no other gateway's status or events (A's own command may come twice:
    # two of its filters match it).
    assert set(gw_a.topics()) == {for_a}


def test_gateway_cannot_read_events_and_services_cannot_publish_events(secure: SecureBroker, clients: Callable[..., Client]) -> None:
    spy = clients(secure.url("gw-b", secure.password("gw-b"))).start()
    spy.subscribe("mimamori/#")
    alerts = clients(secure.url("alerts", secure.password("alerts"))).start()
    sub = ingest_subscriber(secure, clients)
    forged = protocol.event_topic("gw-a", "from-alerts")
    alerts.client.publish(forged, event_payload("from-alerts", 1), qos=1).wait_for_publish(5)
    gw_a = clients(secure.url("gw-a", secure.password("gw-a"))).start()
    real = protocol.event_topic("gw-a", "real")
    gw_a.client.publish(real, event_payload("real", 1), qos=1).wait_for_publish(5)
    assert wait_for(lambda: real in sub.topics())
    assert forged not in sub.topics()
    time.sleep(0.2)
    assert spy.topics() == []


def connack_of(url: mqtt.MqttUrl) -> object:
    """CONNECT once, synchronously, and return the CONNACK's reason code (no reconnect thread)."""
    result: list[object] = []
    client = mqtt.make_client(url, f"t-{uuid.uuid4().hex[:10]}")
    client.on_connect = lambda c, u, f, rc, p: result.append(rc)
    try:
        mqtt.connect(client, url)
        deadline = time.monotonic() + 5
        while not result and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
    assert result, "no CONNACK"
    return result[0]


@pytest.mark.parametrize("who", ["unknown user", "wrong password", "no credentials"])
def test_strangers_cannot_connect(secure: SecureBroker, who: str) -> None:
    user, password = {
        "unknown user": ("gw-zzz", "whatever-password"),
        "wrong password": ("gw-a", secure.password("gw-a") + "x"),
        "no credentials": (None, None),
    }[who]
    rc = connack_of(secure.url(user, password))
    assert rc.is_failure and rc.getName() in ("Bad user name or password", "Not authorized"), rc  # type: ignore[attr-defined]
    assert not connack_of(secure.url("gw-a", secure.password("gw-a"))).is_failure  # type: ignore[attr-defined]


def test_tls_listener_refuses_plain_mqtt_and_an_unknown_ca(secure: SecureBroker, tmp_path: Path) -> None:
    # Plain MQTT on the TLS port: the CONNECT is not a TLS handshake, so no CONNACK comes back.
    with socket.create_connection(("127.0.0.1", secure.port), timeout=5) as raw:
        raw.sendall(mqtt._v5_connect_packet("plain", "gw-a", secure.password("gw-a")))
        try:
            reply = raw.recv(16)
        except ConnectionError:
            reply = b""
    assert not reply.startswith(b"\x20"), reply
    # A broker certificate that the gateway's CA did not sign is refused by the gateway.
    other_ca = provision.make_tls(tmp_path / "other", ["localhost"]).ca_cert
    wrong = mqtt.MqttUrl("127.0.0.1", secure.port, "gw-a", secure.password("gw-a"), tls=True, ca_file=str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        mqtt.negotiate_protocol(wrong)
    # The right CA, and the broker's name in its certificate, pass.
    assert mqtt.negotiate_protocol(secure.url("gw-a", secure.password("gw-a"))) == mqtt.MQTTv5


def test_real_ingest_with_its_account_stores_a_gateways_events_and_asks_it_to_resend(
    secure: SecureBroker, clients: Callable[..., Client], pg_url: str, tmp_path: Path
) -> None:
    """The stack's path with provisioned accounts: the real ingest (shared subscription, manual acks,
    gap sweeper) as `ingest`, the real Gateway as `gw-a`; the resend command reaches gw-a only.
    """
    import psycopg

    from mimamori.ingest.consumer import IngestService
    from mimamori.ingest.sweeper import GapSweeper

    settings = Settings(mqtt_username="ingest", mqtt_password=secure.password("ingest"), mqtt_ca_file=secure.ca_file,
                        ingest_session_expiry_s=60, ingest_batch_max_wait_s=0.02)
    ingest_url = mqtt.url_from_settings(settings, f"mqtts://127.0.0.1:{secure.port}")
    gw_cmds = clients(secure.url("gw-a", secure.password("gw-a"))).start()
    gw_cmds.subscribe(protocol.command_filter("gw-a"))
    b_cmds = clients(secure.url("gw-b", secure.password("gw-b"))).start()
    b_cmds.subscribe(protocol.command_filter("gw-b"))
    sweeper = GapSweeper(SystemClock(), interval_s=0.2, grace_s=0.0, window_s=10 * 365 * 86400.0)
    svc = IngestService(settings, database_url=pg_url, mqtt_url=ingest_url, client_id=f"ingest-{uuid.uuid4().hex[:6]}",
                        sweeper=sweeper)
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        assert svc.subscribed.wait(15), "ingest did not subscribe"
        assert svc.protocol == mqtt.MQTTv5  # so the subscription is the shared one
        gw_url = secure.url("gw-a", secure.password("gw-a"))
        with Gateway("gw-a", gw_url, tmp_path / "o.sqlite3", clock=SystemClock(), heartbeat_s=3600) as gw:
            gw.submit_many([Reading("gap-bulb", "on", T0 + s, seq=s) for s in (1, 2, 3, 7, 8)])
            assert gw.flush(10)
            assert wait_for(lambda: svc.stats.stored >= 5, 15), svc.stats
            resend = protocol.command_topic("gw-a", "gap-bulb")
            assert wait_for(lambda: resend in gw_cmds.topics(), 15), gw_cmds.topics()
    finally:
        svc.stop_event.set()
        thread.join(30)
    assert not thread.is_alive()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT seq FROM events WHERE device_id = 'gap-bulb' ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 7, 8]
    cmd = protocol.decode_command(dict(gw_cmds.messages)[protocol.command_topic("gw-a", "gap-bulb")])
    assert (cmd.cmd, cmd.args) == ("resend", {"from_seq": 4, "to_seq": 6})
    assert b_cmds.topics() == []


@pytest.mark.parametrize(("reply", "expected"), [
    (b"\x20\x03\x00\x00\x00", mqtt.MQTTv5),    # v5 CONNACK, success
    (b"\x20\x03\x00\x86\x00", mqtt.MQTTv5),    # v5 CONNACK, bad user name or password: still a v5 broker
    (b"\x20\x02\x00\x01", mqtt.MQTTv311),      # 3.1.1 CONNACK "unacceptable protocol version" (amqtt)
    (b"", mqtt.MQTTv311),                       # hung up
])
def test_protocol_probe_reads_the_connack(reply: bytes, expected: int) -> None:
    """The v5 probe carries the credentials; a v5-shaped refusal means v5 (the real connection then
    reports the refusal), anything else 3.1.1.
    """
    server = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(conn.recv(1024))
            conn.sendall(reply)
            if reply.endswith(b"\x00\x00\x00"):
                conn.recv(16)  # the probe's DISCONNECT

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        url = mqtt.MqttUrl("127.0.0.1", server.getsockname()[1], "gw-a", "pw-" + "x" * 200)
        assert mqtt.negotiate_protocol(url, timeout=5) == expected
    finally:
        t.join(5)
        server.close()
    packet = got[0]
    assert packet[0] == 0x10 and packet[1] & 0x80  # CONNECT, remaining length > 127: two bytes
    assert b"\x00\x04gw-a" in packet and b"pw-" + b"x" * 200 in packet
