"""The production stack's files: docker-compose.yml (published images only, the shape the guide
promises) and the stack's Mosquitto configuration, run for real on the mosquitto binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from mimamori.gateway import provision
from mimamori.kernel import embedded, mqtt, protocol
from support.broker import DYNSEC_PLUGIN, MOSQUITTO, close_client

ROOT = Path(__file__).resolve().parents[1]
MIMAMORI_SERVICES = {"migrate", "ingest-1", "ingest-2", "detector", "alerts", "safety", "app"}


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.unit
def test_compose_names_only_published_images(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == MIMAMORI_SERVICES | {"db", "broker"}
    for name, svc in services.items():
        assert "build" not in svc, name
        image = svc["image"]
        if name in MIMAMORI_SERVICES:
            assert image.startswith("${MIMAMORI_IMAGE:-ghcr.io/") and image.endswith("}"), image
        else:
            assert image.split(":")[0] in ("timescale/timescaledb", "eclipse-mosquitto")
            assert image.split(":")[1] not in ("", "latest")


@pytest.mark.unit
def test_compose_stack_shape(compose: dict) -> None:
    services = compose["services"]
    ingest = [services["ingest-1"], services["ingest-2"]]
    assert {s["environment"]["MIMAMORI_INGEST_CLIENT_ID"] for s in ingest} == {"ingest-1", "ingest-2"}
    assert all(s["environment"]["MIMAMORI_MQTT_USERNAME"] == "ingest" for s in ingest)
    for name in MIMAMORI_SERVICES - {"migrate"}:
        svc = services[name]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert svc["depends_on"]["broker"]["condition"] == "service_healthy", name
        assert "/readyz" in " ".join(svc["healthcheck"]["test"]), name
        user = svc["environment"]["MIMAMORI_MQTT_USERNAME"]
        assert user in provision.SERVICE_ROLES, name
        assert svc["environment"]["MIMAMORI_MQTT_PASSWORD"] == f"${{{provision.service_password_var(user)}:-}}", name
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    # Every secret the stack reads is one that provision writes into stack.env.
    written = {"POSTGRES_PASSWORD", "MIMAMORI_SECRET_KEY", *(provision.service_password_var(s) for s in provision.SERVICE_ROLES)}
    check = services["migrate"]["environment"]["CHECK_SECRETS"]
    assert {part[2:-3] for part in check.split("|")} == written
    broker = services["broker"]
    assert any(p.startswith("8883:8883") for p in broker["ports"]) and not any("1883:" in p for p in broker["ports"])


@pytest.mark.integration
@pytest.mark.skipif(not shutil.which("docker-compose"), reason="needs docker-compose")
def test_docker_compose_config_is_valid() -> None:
    result = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)  # its stderr says why
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
@pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="needs the mosquitto binary")
def test_stack_broker_config_runs_with_provisioned_files(tmp_path: Path) -> None:
    """deploy/mosquitto/mosquitto-docker.conf, paths and ports moved to this test: services log in on
    the plain listener, gateways on the TLS one, strangers on neither.
    """
    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    result = provision.provision(config_dir, tmp_path / "secrets", gateways=["gw-a"], tls_hosts=["localhost", "127.0.0.1"])
    plain_port, tls_port = embedded.free_port(), embedded.free_port()
    text = (ROOT / "deploy" / "mosquitto" / "mosquitto-docker.conf").read_text()
    assert "listener 1883\n" in text and "listener 8883\n" in text

    if not DYNSEC_PLUGIN:
        pytest.skip("needs Mosquitto's dynamic-security plugin")
    assert "plugin /usr/lib/mosquitto_dynamic_security.so\n" in text  # the eclipse-mosquitto image's path
    text = text.replace("plugin /usr/lib/mosquitto_dynamic_security.so\n", f"plugin {DYNSEC_PLUGIN}\n")
    text = (text.replace("/mosquitto/config/", f"{config_dir}/").replace("/mosquitto/data/", f"{data_dir}/")
            .replace("listener 1883\n", f"listener {plain_port} 127.0.0.1\n")
            .replace("listener 8883\n", f"listener {tls_port} 127.0.0.1\n"))
    import pwd

    data_dir.mkdir()
    broker = embedded.MosquittoBroker(tmp_path / "run", port=plain_port, binary=MOSQUITTO)
    broker.config_path.write_text(f"user {pwd.getpwuid(os.getuid()).pw_name}\n" + text)
    broker.start()
    received: list[str] = []
    got = threading.Event()
    sub = None
    try:
        stack = provision.parse_env(result.stack_env.read_text())
        ingest_url = mqtt.MqttUrl("127.0.0.1", plain_port, "ingest", stack["MIMAMORI_INGEST_MQTT_PASSWORD"])
        assert mqtt.negotiate_protocol(ingest_url) == mqtt.MQTTv5
        sub = mqtt.make_client(ingest_url, f"ingest-{uuid.uuid4().hex[:6]}")
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_message = lambda c, u, m: (received.append(m.topic), got.set())
        mqtt.connect(sub, ingest_url)
        sub.loop_start()
        sub.subscribe(protocol.shared(protocol.EVENT_FILTER), qos=1)
        assert subscribed.wait(5)

        gw_env = provision.parse_env(result.gateway_env["gw-a"].read_text())
        gw_url = mqtt.MqttUrl("127.0.0.1", tls_port, "gw-a", gw_env["MIMAMORI_MQTT_PASSWORD"], tls=True,
                              ca_file=gw_env["MIMAMORI_MQTT_CA_FILE"])
        pub = mqtt.make_client(gw_url, "gw-a")
        suback: list[list[object]] = []
        gw_subscribed = threading.Event()
        pub.on_subscribe = lambda c, u, mid, codes, p: (suback.append(codes), gw_subscribed.set())
        mqtt.connect(pub, gw_url)
        pub.loop_start()
        pub.subscribe(protocol.shared(protocol.EVENT_FILTER), qos=1)  # issue 17: refused at subscribe time
        assert gw_subscribed.wait(5) and suback[0][0].is_failure  # type: ignore[attr-defined]
        topic = protocol.event_topic("gw-a", "lamp")
        pub.publish(topic, protocol.encode_event(protocol.Event("lamp", 1, 1_767_225_600_000, "on")), qos=1).wait_for_publish(5)
        close_client(pub)
        assert got.wait(5) and received == [topic]

        anonymous = mqtt.MqttUrl("127.0.0.1", plain_port)
        probe = mqtt.make_client(anonymous, "anon")
        codes: list[object] = []
        probe.on_connect = lambda c, u, f, rc, p: codes.append(rc)
        mqtt.connect(probe, anonymous)
        for _ in range(50):
            if codes:
                break
            probe.loop(timeout=0.1)
        sock = probe.socket()
        if sock is not None:
            sock.close()
        assert codes and codes[0].is_failure  # type: ignore[attr-defined]
    finally:
        if sub is not None:
            close_client(sub)
        broker.stop()
