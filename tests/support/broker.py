"""A real Mosquitto with the production stack's security, and a paho client that records what it receives
(the broker provisioning and broker security tests; the ``secure`` fixture is in conftest).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho

from mimamori.gateway import provision
from mimamori.kernel import embedded, mqtt, protocol

T0 = 1_767_225_600_000

MOSQUITTO = embedded.shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DYNSEC_PLUGIN = next((p for p in ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                                  "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
                                  "/usr/lib/mosquitto_dynamic_security.so",
                                  "/usr/local/lib/mosquitto_dynamic_security.so") if Path(p).exists()), "")


def close_client(client: paho.Client) -> None:
    """Disconnect and stop the network thread, then close the socket if loop_stop won the race against the
    DISCONNECT write (paho leaves it open, and a collected client then warns ResourceWarning).
    """
    client.disconnect()
    client.loop_stop()
    sock = client.socket()
    if sock is not None:
        sock.close()


def secure_config(port: int, broker_dir: Path, data_dir: Path) -> str:
    """The settings of deploy/mosquitto/mosquitto-docker.conf that matter here, on a test port."""
    tls = broker_dir / "tls"
    return "\n".join([
        f"user {os.environ.get('USER') or __import__('pwd').getpwuid(os.getuid()).pw_name}",
        f"listener {port} 127.0.0.1",
        f"certfile {tls / 'server.crt'}",
        f"keyfile {tls / 'server.key'}",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        # Accounts and ACL through the dynamic-security plugin, as deploy/mosquitto/mosquitto-docker.conf
        # (the acl_file cannot refuse a SUBSCRIBE; issue 17).
        f"plugin {DYNSEC_PLUGIN}",
        f"plugin_opt_config_file {broker_dir / provision.DYNSEC_FILE}",
        "max_queued_messages 10000000",
        "max_inflight_messages 1000",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        f"# data {data_dir}",
    ]) + "\n"


@dataclass
class SecureBroker:
    port: int
    broker: embedded.MosquittoBroker
    result: provision.ProvisionResult
    ca_file: str

    def url(self, user: str | None, password: str | None) -> mqtt.MqttUrl:
        return mqtt.MqttUrl(host="127.0.0.1", port=self.port, username=user, password=password, tls=True, ca_file=self.ca_file)

    def password(self, user: str) -> str:
        return self.result.new_passwords[user]


@contextmanager
def secure_broker(root: Path) -> Iterator[SecureBroker]:
    """A Mosquitto on a free port with what `mimamori gateway provision` writes (accounts for gw-a and gw-b,
    dynamic security, a TLS listener with the generated CA), stopped on exit.
    """
    port = embedded.free_port()
    result = provision.provision(
        root / "mosquitto", root / "secrets", gateways=["gw-a", "gw-b"],
        uplink_url=f"mqtts://localhost:{port}", tls_hosts=["localhost", "127.0.0.1"],
    )
    broker = embedded.MosquittoBroker(root / "run", port=port, binary=MOSQUITTO)
    broker.config_path.write_text(secure_config(port, root / "mosquitto", root / "run"))
    broker.start()
    try:
        assert result.tls is not None
        yield SecureBroker(port, broker, result, str(result.tls.ca_cert))
    finally:
        broker.stop()


class Client:
    """A paho client on its own network thread that records what it receives."""

    def __init__(self, url: mqtt.MqttUrl, client_id: str | None = None, *, protocol_version: int = mqtt.MQTTv5) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connack: object = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.make_client(url, client_id or f"t-{uuid.uuid4().hex[:10]}", protocol=protocol_version)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.url = url

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        self.connack = rc
        self.connected.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def start(self) -> Client:
        mqtt.connect(self.client, self.url)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"
        return self

    @property
    def accepted(self) -> bool:
        return not getattr(self.connack, "is_failure", True)

    def subscribe(self, *filters: str) -> None:
        self.subscribed.clear()
        self.client.subscribe([(f, 1) for f in filters])
        assert self.subscribed.wait(5)

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.messages]

    def close(self) -> None:
        close_client(self.client)


def event_payload(device: str, seq: int) -> bytes:
    return protocol.encode_event(protocol.Event(device, seq, T0 + seq, "on"))
