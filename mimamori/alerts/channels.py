"""Channels: in-app (a notifications table + LISTEN/NOTIFY), Web Push (VAPID), Apprise URLs, and the
MQTT downlink that blinks a bulb. Senders do network I/O only; what was sent is recorded by
``alerts.flows`` / ``alerts.service``.

For the app: ``notification_stream(database_url, person_id)`` is an async generator of a person's
in-app notifications (backlog first, then live through PostgreSQL NOTIFY), ready to be served as
Server-Sent Events.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlsplit

import psycopg
from psycopg.rows import dict_row
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mimamori.kernel import contract, mqtt, protocol
from mimamori.kernel.mqtt import MqttUrl

NOTIFICATIONS_CHANNEL = contract.CHANNEL_NOTIFICATIONS


class AlertSettings(BaseSettings):
    """Alert-engine settings from ``MIMAMORI_ALERTS_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MIMAMORI_ALERTS_", extra="ignore")

    #: VAPID private key (PEM text, a PEM file path, or the base64url raw key); unset = Web Push off.
    vapid_private_key: str | None = None
    #: VAPID "sub" claim: a mailto: or https: contact of the operator.
    vapid_subject: str = "mailto:operator@mimamori.invalid"
    #: The operator's mail server for ``email`` channels (a person's plain address): an Apprise
    #: mailto:// or mailtos:// URL without a recipient, e.g.
    #: ``mailtos://user:password@smtp.example.org?from=mimamori@example.org``. Unset: e-mail channels fail.
    smtp_url: str | None = None
    #: Private networks that people's own Apprise channels may reach anyway (comma-separated CIDRs,
    #: e.g. an on-premises ntfy server ``10.1.2.3/32``). Empty: only public addresses (issue 17: a
    #: channel URL must not make the service call its own loopback or LAN).
    private_targets: str = ""
    delivery_threads: int = 4
    #: Longest a worker sleeps between looks at the queue when no NOTIFY wakes it (seconds).
    poll_s: float = 0.2
    send_timeout_s: float = 10.0
    #: Seconds a blink waits for the gateway's answer (``protocol.ack_topic``: the device's own state
    #: reports echoed the blink) before it is recorded as "sent, not confirmed"; 0: a PUBACK is enough.
    blink_confirm_s: float = 0.0
    #: How often a worker refreshes the queue gauges of ``alerts.metrics`` (seconds, real time).
    metrics_every_s: float = 5.0
    #: At most this many messages a minute per channel kind (JSON, e.g. ``{"line": 60, "email": 600}``;
    #: kinds not listed are not limited); each worker process counts its own. Empty: no throttling.
    rates_per_minute: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None
    #: retrying cannot help (e.g. a Web Push subscription the browser dropped)
    permanent: bool = False


# --- Apprise ----------------------------------------------------------------------------------

_apprise_lock = threading.Lock()
_apprise_module: Any = None

APPRISE_CHANNEL_NAMES = {
    "mailto": "email", "mailtos": "email", "line": "line", "slack": "slack", "tgram": "telegram",
    "ntfy": "ntfy", "ntfys": "ntfy", "json": "webhook", "jsons": "webhook", "form": "webhook", "forms": "webhook",
    "discord": "discord", "msteams": "teams",
}


class _LazyTlsContext:
    """Stands in for ``ssl.create_default_context()`` inside Apprise's SMTP controller, which builds
    one for every e-mail, even plain SMTP that never uses it. Loading the CA store takes ~45 ms of
    CPU (holding the GIL) per message; this builds the real context only when TLS is actually
    used (SMTPS / STARTTLS), with the same settings Apprise applied to it.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_settings", {})
        object.__setattr__(self, "_real", None)

    def _context(self) -> ssl.SSLContext:
        if self._real is None:
            real = ssl.create_default_context()
            for name, value in self._settings.items():  # check_hostname before verify_mode, as set
                setattr(real, name, value)
            object.__setattr__(self, "_real", real)
        return self._real  # type: ignore[return-value]

    def __setattr__(self, name: str, value: Any) -> None:
        if self._real is None:
            self._settings[name] = value
        else:
            setattr(self._real, name, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context(), name)


class _SslForApprise:
    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(*args: Any, **kwargs: Any) -> Any:
        return _LazyTlsContext() if not args and not kwargs else ssl.create_default_context(*args, **kwargs)


def _apprise() -> Any:
    """Import Apprise once; its e-mail plugin imports the deprecated ``imghdr`` (a warning we silence)."""
    global _apprise_module  # noqa: PLW0603 - imported once per process, under a lock
    with _apprise_lock:
        if _apprise_module is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import apprise
                from apprise.manager_plugins import NotificationManager

                NotificationManager().load_modules()
            _pin_message_ids()
            try:
                from apprise.plugins.email import smtp as apprise_smtp

                if getattr(apprise_smtp, "ssl", None) is ssl:
                    apprise_smtp.ssl = _SslForApprise()  # type: ignore[assignment]
            except ImportError:  # another Apprise layout: no shortcut, same behaviour
                pass
            _apprise_module = apprise
    return _apprise_module


#: A header we hand to Apprise's e-mail plugin; it never leaves the process: the wrapper below turns
#: it into the message's Message-ID (Apprise otherwise makes a random one per attempt).
_MESSAGE_ID_HEADER = "X-Mimamori-Message-Id"


def _pin_message_ids() -> None:
    """Let a caller choose the Message-ID of an e-mail sent through Apprise.

    A re-send of the same delivery (after a crash between the SMTP server's 250 and our commit) then
    carries the same Message-ID, so mail systems and people's clients recognise it as the same
    message. Apprise builds the message in ``NotifyEmail.prepare_emails`` and sets a random
    Message-ID after the extra headers; we wrap that function and swap the header.
    """
    try:
        from apprise.plugins.email.base import NotifyEmail
    except ImportError:  # another Apprise layout: Message-IDs stay random (documented in README)
        return
    original = NotifyEmail.__dict__.get("prepare_emails")
    if not isinstance(original, staticmethod) or getattr(original.__func__, "_mimamori", False):
        return
    inner = original.__func__

    def prepare_emails(*args: Any, **kwargs: Any) -> Any:
        headers = dict(kwargs.get("headers") or {})
        pinned = headers.pop(_MESSAGE_ID_HEADER, None)
        kwargs["headers"] = headers
        for message in inner(*args, **kwargs):
            if pinned:
                message.body = _replace_message_id(message.body, pinned)
            yield message

    prepare_emails._mimamori = True  # type: ignore[attr-defined]  # noqa: SLF001 - our mark on the patched function
    NotifyEmail.prepare_emails = staticmethod(prepare_emails)  # type: ignore[method-assign]


def _replace_message_id(raw: str, message_id: str) -> str:
    head, sep, body = raw.partition("\n\n")
    lines = head.split("\n")
    out = [f"Message-ID: {message_id}" if line.lower().startswith("message-id:") else line for line in lines]
    if not any(line.lower().startswith("message-id:") for line in lines):
        out.append(f"Message-ID: {message_id}")
    return "\n".join(out) + sep + body


def message_id_for(delivery_id: int, incident_id: int, created_at_ms: int, domain: str) -> str:
    """The Message-ID of a delivery: the same for every attempt, unique per delivery."""
    return f"<alert.{incident_id}.{delivery_id}.{created_at_ms}@{domain}>"


#: Apprise schemes a person may register (the ones the app names). Others (``https://`` native
#: webhooks, ``xml://``, ``mqtt://``, ``syslog://`` ...) are refused at registration and at send.
ALLOWED_APPRISE_SCHEMES: Final = frozenset(APPRISE_CHANNEL_NAMES)
#: Schemes whose URL names the host the service connects to (the rest go to a fixed cloud service
#: and the URL's "host" is a token or a team name).
_HOST_SCHEMES: Final = frozenset({"mailto", "mailtos", "json", "jsons", "form", "forms"})


def private_target_nets(text: str | None = None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``AlertSettings.private_targets`` parsed (``text`` overrides the environment)."""
    raw = AlertSettings().private_targets if text is None else text
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())


def refused_target(url: str, allowed: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
                   resolve: Callable[[str], list[str]] | None = None) -> str | None:
    """Why the service must not send to a person's Apprise ``url`` (None: it may). Issue 17 (SSRF):
    only the schemes the app offers, and every address the target host resolves to must be public
    (not loopback, private, link-local, multicast, reserved or unspecified) unless an operator allowed
    its network. Checked right before each send (the host may resolve differently later: a DNS
    rebinding between this check and Apprise's own connection remains possible).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_APPRISE_SCHEMES:
        return f"scheme {scheme or '?'} not allowed"
    hosts: list[str] = []
    query = parse_qs(parts.query)
    if scheme in _HOST_SCHEMES or (scheme in ("ntfy", "ntfys") and parts.path.strip("/")):
        hosts.append(parts.hostname or "")
    for key in ("smtp", "to_host", "host"):  # Apprise lets a query name the server
        hosts.extend(query.get(key, []))
    resolve = resolve or _resolve
    allowed = tuple(allowed)
    for host in hosts:
        if not host:
            return "no host"
        try:
            addresses = resolve(host)
        except OSError:
            return "host does not resolve"
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if any(ip in net for net in allowed):
                continue
            if not ip.is_global or ip.is_multicast:
                return "private or local address"
    return None


def _resolve(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def apprise_channel_name(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    return APPRISE_CHANNEL_NAMES.get(scheme, scheme or "apprise")


def channel_kind_name(kind: str, target: str | None) -> str:
    """What a person's channel is for metrics and throttling: email, line, slack ..., webpush."""
    if kind == "apprise" and target:
        return apprise_channel_name(target)
    return kind


#: A plain e-mail address (kind ``email``): one @, a dot in the domain, no spaces or URL syntax.
EMAIL_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def mail_url(smtp_url: str, address: str) -> str:
    """The Apprise URL that sends to ``address`` through the operator's mail server."""
    return f"{smtp_url}{'&' if '?' in smtp_url else '?'}to={quote(address, safe='@')}"


class AppriseSender:
    """Sends through one Apprise URL per call (a fresh ``Apprise`` object: safe across threads)."""

    def send(self, url: str, title: str, body: str, *, message_id: str | None = None) -> SendResult:
        """``message_id``: the Message-ID of an e-mail (ignored by other kinds of targets)."""
        apprise = _apprise()
        app = apprise.Apprise()
        if not app.add(url):
            return SendResult(False, "not a valid Apprise URL", permanent=True)
        if message_id:
            for server in app:
                if isinstance(getattr(server, "headers", None), dict) and hasattr(server, "smtp_host"):
                    server.headers[_MESSAGE_ID_HEADER] = message_id
        with apprise.LogCapture(level=apprise.logging.WARNING) as log:
            ok = bool(app.notify(title=title, body=body))
            detail = log.getvalue().strip()
        return SendResult(True) if ok else SendResult(False, (detail or "apprise: send failed")[-500:])


# --- Web Push ---------------------------------------------------------------------------------


def _load_vapid(key: str) -> Any:
    """A VAPID key from PEM text, a PEM/DER file, or the base64url raw/DER string."""
    from py_vapid import Vapid02

    if key.lstrip().startswith("-----BEGIN"):
        return Vapid02.from_pem(key.strip().encode())
    if Path(key).is_file():
        return Vapid02.from_file(key)
    return Vapid02.from_string(key)


class WebPushSender:
    def __init__(self, vapid_private_key: str | None, subject: str, timeout_s: float = 10.0) -> None:
        self.vapid_private_key = _load_vapid(vapid_private_key) if vapid_private_key else None
        self.subject = subject
        self.timeout_s = timeout_s

    def send(self, subscription_json: str, payload: dict[str, Any], urgent: bool, *, topic: str | None = None) -> SendResult:
        """``topic``: Web Push Topic header (a push service replaces an undelivered message with the same topic)."""
        if not self.vapid_private_key:
            return SendResult(False, "Web Push is not configured (MIMAMORI_ALERTS_VAPID_PRIVATE_KEY)", permanent=True)
        from pywebpush import WebPushException, webpush

        try:
            subscription = json.loads(subscription_json)
            webpush(
                subscription_info=subscription,
                data=json.dumps(payload, ensure_ascii=False),
                vapid_private_key=self.vapid_private_key,
                vapid_claims={"sub": self.subject},
                ttl=24 * 3600,
                timeout=self.timeout_s,
                headers={"Urgency": "high" if urgent else "normal", **({"Topic": topic} if topic else {})},
            )
        except WebPushException as exc:
            status = getattr(exc.response, "status_code", None)
            # 404/410: the browser dropped the subscription; retrying cannot help
            return SendResult(False, f"web push: {status} {str(exc)[:300]}", permanent=status in (404, 410))
        except (ValueError, OSError) as exc:
            return SendResult(False, f"web push: {exc!s:.300}")
        return SendResult(True)


# --- MQTT downlink (resident check) -----------------------------------------------------------


class MqttBlinkSender:
    """Publishes ``blink`` commands (QoS 1) and waits for the broker's PUBACK; with ``confirm_s``, also
    for the gateway's ack (the device's own state reports echoed the blink): ``SendResult(True,
    "sent, not confirmed")`` when none came in time.
    """

    def __init__(self, url: MqttUrl, client_id: str, *, protocol_preference: Any = "auto", timeout_s: float = 10.0,
                 confirm_s: float = 0.0) -> None:
        version = mqtt.negotiate_protocol(url, protocol_preference)
        self.client = mqtt.make_client(url, client_id, protocol=version)
        self.timeout_s = timeout_s
        self.confirm_s = confirm_s
        self._acks: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._acked = threading.Condition()
        if confirm_s > 0:
            self.client.on_connect = lambda c, *_: c.subscribe(protocol.ACK_FILTER, qos=1)
            self.client.on_message = self._on_ack
        mqtt.connect(self.client, url)
        self.client.loop_start()

    def _on_ack(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            topic = protocol.parse_topic(message.topic)
            ack = json.loads(message.payload)
        except (protocol.ProtocolError, ValueError):
            return
        if topic.channel == "ack" and topic.device_id is not None and isinstance(ack, dict):
            with self._acked:
                self._acks[(topic.gateway_id, topic.device_id)] = (time.monotonic(), ack)
                self._acked.notify_all()

    def send(self, gateway_id: str, device_id: str, args: dict[str, Any]) -> SendResult:
        topic = protocol.command_topic(gateway_id, device_id)
        started = time.monotonic()
        info = self.client.publish(topic, protocol.encode_command(protocol.Command("blink", dict(args))), qos=1)
        try:
            info.wait_for_publish(timeout=self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            return SendResult(False, f"mqtt: {exc}")
        if not info.is_published():
            return SendResult(False, "mqtt: no PUBACK in time")
        if self.confirm_s <= 0:
            return SendResult(True)
        deadline = started + self.confirm_s
        with self._acked:
            while True:
                got = self._acks.get((gateway_id, device_id))
                if got is not None and got[0] >= started:
                    ack = got[1]
                    if ack.get("confirmed"):
                        return SendResult(True)
                    return SendResult(True, f"sent, not confirmed: {ack.get('refused') or 'no state report from the device'}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return SendResult(True, "sent, not confirmed: no answer from the gateway")
                self._acked.wait(remaining)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- in-app -----------------------------------------------------------------------------------


async def notification_stream(database_url: str, person_id: str, *, after_id: int = 0,
                              idle_timeout_s: float | None = None) -> AsyncIterator[dict[str, Any]]:
    """A person's in-app notifications: those after ``after_id`` first, then each new one as it commits.

    The app serves this as Server-Sent Events (use ``notification_id`` as the SSE id so a reconnecting
    browser resumes with Last-Event-ID). LISTEN starts before the backlog query, so nothing falls in
    between. Yields dicts (JSON-ready). With ``idle_timeout_s`` set, yields ``{"keepalive": True}``
    after that long without news (a chance to send an SSE comment and notice a gone client).
    One database connection per stream: fine for a town's watchers; a large deployment would fan out
    one LISTEN connection in the app.
    """
    last = after_id
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {NOTIFICATIONS_CHANNEL}")

        async def fetch() -> list[dict[str, Any]]:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute("""SELECT notification_id, person_id, incident_id, notice, urgent, title, body, data,
                                            created_at, read_at FROM notifications
                                     WHERE person_id = %s AND notification_id > %s ORDER BY notification_id""",
                                  (person_id, last))
                return await cur.fetchall()

        while True:
            for row in await fetch():
                last = row["notification_id"]
                row["created_at"] = row["created_at"].isoformat()
                row["read_at"] = row["read_at"].isoformat() if row["read_at"] else None
                yield row
            woken = False
            async for _note in conn.notifies(timeout=idle_timeout_s, stop_after=1):
                woken = True  # for anyone: the query above filters to this person
            if not woken and idle_timeout_s is not None:
                yield {"keepalive": True}
