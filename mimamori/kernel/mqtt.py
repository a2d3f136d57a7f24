"""MQTT connection helpers shared by every stage (paho-mqtt 2).

- ``MqttUrl.parse("mqtt://user:pw@host:1883")`` (``mqtts://`` for TLS, default port 8883, ``?ca=FILE``
  for a private CA); ``url_from_settings(settings)`` adds ``mqtt_username``/``mqtt_password``/
  ``mqtt_ca_file`` from the settings when the URL carries none.
- ``negotiate_protocol(url)``: MQTT v5 when the broker speaks it, else 3.1.1 (amqtt speaks only
  3.1.1 and has no shared subscriptions); stages adapt to what this returns.
- ``make_client(...)`` / ``connect(...)``: a paho client set up the same way everywhere.
"""

from __future__ import annotations

import socket
import ssl
import struct
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from mimamori.kernel.config import Settings

MQTTv5 = paho.MQTTv5
MQTTv311 = paho.MQTTv311


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str) -> MqttUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            ca_file=query.get("ca"),
        )

    def __str__(self) -> str:
        auth = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"

    def with_defaults(self, *, username: str | None = None, password: str | None = None, ca_file: str | None = None) -> MqttUrl:
        """Fill in what the URL does not say: credentials (only when it has no user) and the CA file."""
        url = self
        if url.username is None and username:
            url = replace(url, username=username, password=password)
        if url.ca_file is None and ca_file:
            url = replace(url, ca_file=ca_file)
        return url


def url_from_settings(settings: Settings, url: str | None = None) -> MqttUrl:
    """``url`` (default ``settings.mqtt_url``) completed with the settings' credentials and CA file."""
    raw = url or settings.mqtt_url
    if not raw:
        raise ValueError("no MQTT URL configured (MIMAMORI_MQTT_URL)")
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password is not None else None
    return MqttUrl.parse(raw).with_defaults(username=settings.mqtt_username, password=password, ca_file=settings.mqtt_ca_file)


def _utf8_field(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _v5_connect_packet(client_id: str, username: str | None = None, password: str | None = None) -> bytes:
    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password is not None else 0)
    variable = b"\x00\x04MQTT" + bytes([5, flags]) + struct.pack("!H", 10) + b"\x00"
    payload = _utf8_field(client_id)
    if username:
        payload += _utf8_field(username)
        if password is not None:
            payload += _utf8_field(password)
    body = variable + payload
    return b"\x10" + _remaining_length(len(body)) + body


def negotiate_protocol(url: MqttUrl, preference: Literal["auto", "5", "3.1.1"] = "auto", timeout: float = 5.0) -> int:
    """Return ``MQTTv5`` or ``MQTTv311``: the newest protocol the broker accepts.

    Probes with a v5 CONNECT (a clean, throwaway session, with the URL's credentials); a broker that
    answers anything but a v5 CONNACK, or hangs up, gets 3.1.1. A v5 CONNACK that refuses (e.g. bad
    credentials) still means v5: the real connection then reports the refusal.
    """
    if preference == "5":
        return MQTTv5
    if preference == "3.1.1":
        return MQTTv311
    raw = socket.create_connection((url.host, url.port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if url.tls:
            ctx = ssl.create_default_context(cafile=url.ca_file)
            sock = ctx.wrap_socket(raw, server_hostname=url.host)
        sock.sendall(_v5_connect_packet(f"mimamori-probe-{uuid.uuid4().hex[:12]}", url.username, url.password))
        try:
            head = sock.recv(5)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return MQTTv311
        # v5 CONNACK: 0x20, remaining length (>= 3: flags, reason code, properties), ack flags,
        # reason code (0 = success). A 3.1.1 CONNACK has remaining length 2.
        is_connack = len(head) >= 4 and head[0] == 0x20
        ok = is_connack and head[3] == 0
        refused_v5 = is_connack and head[1] >= 3 and head[3] >= 0x80
        if ok:
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        return MQTTv5 if ok or refused_v5 else MQTTv311
    finally:
        sock.close()  # the TLS wrapper owns the connection once made
        raw.close()


def make_client(
    url: MqttUrl,
    client_id: str,
    *,
    protocol: int = MQTTv5,
    manual_ack: bool = False,
    clean_start: bool = True,
    userdata: object = None,
    client_class: type[paho.Client] = paho.Client,
) -> paho.Client:
    """A paho client with credentials and TLS from ``url``.

    For MQTT 3.1.1 the persistent-session choice is made here (``clean_session``); for v5 it is
    made at ``connect`` (``clean_start`` + session expiry). ``client_class`` lets a stage use a
    paho subclass (ingest's buffered, batch-acking client).
    """
    client = client_class(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        # paho refuses clean_session for v5 (that choice is clean_start, at connect)
        clean_session=None if protocol == MQTTv5 else clean_start,
        protocol=MQTTProtocolVersion(protocol),
        userdata=userdata,
        manual_ack=manual_ack,
    )
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set(ca_certs=url.ca_file)
    # Keep QoS 1 messages flowing while earlier ones await PUBACK (paho's default is 20).
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


def connect_properties(*, session_expiry_s: int | None = None, receive_maximum: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho's Properties is not annotated
    if session_expiry_s is not None:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def connect(
    client: paho.Client,
    url: MqttUrl,
    *,
    keepalive: int = 30,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    asynchronous: bool = False,
) -> None:
    """Connect ``client`` (made by ``make_client``); v5 options are ignored on 3.1.1."""
    if client.protocol == MQTTv5:
        props = connect_properties(session_expiry_s=session_expiry_s, receive_maximum=receive_maximum)
        fn = client.connect_async if asynchronous else client.connect
        fn(url.host, url.port, keepalive, clean_start=clean_start, properties=props)
    else:
        fn = client.connect_async if asynchronous else client.connect
        fn(url.host, url.port, keepalive)
