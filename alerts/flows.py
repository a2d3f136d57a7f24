"""Side effects: sending what the outbox holds.

Every send is three steps (see ``service.begin_delivery``):

1. a committed transaction marks the next due ``alert_deliveries`` row ``sending`` with a fresh
   attempt id, while this worker holds the delivery's session advisory lock;
2. the network call, outside any transaction; e-mail carries a Message-ID derived from the delivery
   (the same for every attempt), Web Push a Topic and the delivery id, a blink command its id;
3. a second transaction records the outcome (sent / retry with backoff / failed), only if the
   attempt is still the current one; then the lock is dropped.

Crash semantics, honestly:
- killed before step 1 commits: the row is still ``pending``; the next worker sends it. Nothing lost.
- killed between 1 and 3: the row stays ``sending`` and the lock dies with the connection, so
  another worker (or the restarted one) finds it *in doubt* and sends it again, with the same
  Message-ID, counting it in ``resends`` and on the timeline (``resend_in_doubt``). Whether the
  first copy reached the channel cannot be known: SMTP, Apprise's targets and MQTT have no
  idempotency key a sender can query. So the guarantee is: no notification is lost; no
  notification exists twice as a *distinct* message (a receiver or mail client that de-duplicates
  on Message-ID shows it once); a raw re-transmission is possible only for sends in flight at the
  crash, at most one per delivery thread per crash, and each one is recorded.
- in-app notifications are rows written in the step's own transaction: exactly once, no window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg.types.json import Jsonb

from alerts import metrics, service
from alerts.channels import (
    AppriseSender,
    MqttBlinkSender,
    SendResult,
    WebPushSender,
    channel_kind_name,
    mail_url,
    message_id_for,
    private_target_nets,
    refused_target,
)
from alerts.models import Conflict, InvalidInput, NotFound, render_notice
from mimamori.clock import Clock, as_datetime

log = logging.getLogger(__name__)


@dataclass
class Senders:
    apprise: AppriseSender
    webpush: WebPushSender
    mqtt: MqttBlinkSender | None = None
    #: the operator's mail server for ``email`` channels (``AlertSettings.smtp_url``)
    smtp_url: str | None = None

    def apprise_url(self, kind: str, target: str) -> str | None:
        """The Apprise URL a channel sends through: its own, or the mail server's to its address."""
        if kind == "email":
            return mail_url(self.smtp_url, target) if self.smtp_url else None
        return target

    def message(self, kind: str, target: str, title: str, body: str, *, message_id: str | None = None) -> SendResult:
        """Send a text message on an ``apprise`` or ``email`` channel."""
        url = self.apprise_url(kind, target)
        if url is None:
            return SendResult(False, "no mail server configured (MIMAMORI_ALERTS_SMTP_URL)", permanent=True)
        if kind == "apprise":  # a person's own URL (the operator's mail server is trusted): issue 17, SSRF
            refused = refused_target(url, private_target_nets())
            if refused is not None:
                return SendResult(False, f"target refused: {refused}", permanent=True)
        return self.apprise.send(url, title, body, message_id=message_id)


def channel_name(row: dict[str, Any]) -> str:
    if row["channel"] == "mqtt":
        return "mqtt"
    if row.get("channel_kind"):
        return channel_kind_name(row["channel_kind"], row.get("target"))
    return str(row["channel"]).split(":", 1)[0]


def _domain_of(url: str | None) -> str:
    """The Message-ID's domain: the sender address's domain, else the SMTP host."""
    if not url:
        return "mimamori.invalid"
    parts = urlsplit(url)
    sender = parse_qs(parts.query).get("from", [""])[0]
    if "@" in sender:
        return sender.rsplit("@", 1)[1].strip(">") or "mimamori.invalid"
    return parts.hostname or "mimamori.invalid"


def message_id(row: dict[str, Any], smtp_url: str | None = None) -> str | None:
    """The pinned Message-ID of an e-mail delivery (None for other channels); ``smtp_url``: the
    operator's mail server, whose sender domain an ``email`` channel's messages carry."""
    if channel_name(row) != "email":
        return None
    created_ms = int(row["created_at"].timestamp() * 1000)
    url = smtp_url if row.get("channel_kind") == "email" else row.get("target")
    return message_id_for(int(row["delivery_id"]), int(row["incident_id"]), created_ms, _domain_of(url))


def send(row: dict[str, Any], senders: Senders) -> SendResult:
    payload = row["payload"]
    if row["channel"] == "mqtt":
        if senders.mqtt is None:
            return SendResult(False, "no MQTT broker configured for this worker")
        args = {**payload.get("args", {}), "command_id": f"alert-{row['delivery_id']}"}
        return senders.mqtt.send(payload["gateway_id"], payload["device_id"], args)
    if row.get("target") is None or not row.get("channel_enabled", False):
        return SendResult(False, "channel removed or disabled", permanent=True)
    if row["channel_kind"] in ("apprise", "email"):
        return senders.message(row["channel_kind"], row["target"], payload["title"], payload["body"],
                               message_id=row.get("message_id"))
    if row["channel_kind"] == "webpush":
        return senders.webpush.send(row["target"], {**payload, "delivery_id": row["delivery_id"]}, bool(row["urgent"]),
                                    topic=f"alert-{row['delivery_id']}")
    return SendResult(False, f"unknown channel {row['channel']}", permanent=True)


#: A person may test a channel this often (seconds): enough to check a new address, not to flood one.
TEST_EVERY_S = 60.0


def send_test(conn: psycopg.Connection, actor: Any, person_id: str, channel_id: int, senders: Senders, *,
              clock: Clock, locale: str = "ja") -> SendResult:
    """Send a test message on one of a person's text channels (e-mail address or Apprise URL) now,
    so whoever registered it sees that it arrives. The person themselves, their area's coordinator or
    an operator; once a minute per channel; the outcome goes to ``alert_admin_log``."""
    now = clock.now()
    with conn.transaction():  # checked and recorded before the send: a second click waits, then sees this one
        service._may_manage_person(conn, actor, person_id)
        ch = service._one(conn, """SELECT kind, target FROM person_channels WHERE channel_id = %s AND person_id = %s
                                   AND enabled FOR UPDATE""", (channel_id, person_id))
        if ch is None:
            raise NotFound("no such channel")
        if ch["kind"] not in ("email", "apprise"):
            raise InvalidInput("only e-mail and chat channels can be tested from here")
        recent = service._one(conn, """SELECT 1 AS ok FROM alert_admin_log WHERE subject = %s AND action = 'channel_tested'
                                       AND (data->>'channel_id')::bigint = %s AND at > %s""",
                              (person_id, channel_id, as_datetime(now - TEST_EVERY_S)))
        if recent:
            raise Conflict("a test was sent to this channel less than a minute ago")
        entry = service._admin_log(conn, now, actor, "channel_tested", person_id, {"channel_id": channel_id, "kind": ch["kind"]})
    title, body = render_notice("test", locale, name="")
    result = senders.message(ch["kind"], ch["target"], title, body)  # the network call, outside any transaction
    # Issue 17: whoever tested sees only "sent" or "failed". The error text of a connection (refused,
    # timed out, a banner) would map the service's network for them; it goes to the server's log only.
    if not result.ok:
        log.warning("channel test failed: person %s channel %s: %s", person_id, channel_id, result.error)
        result = SendResult(False, "failed", permanent=result.permanent)
    conn.execute("UPDATE alert_admin_log SET data = data || %s WHERE entry_id = %s",
                 (Jsonb({"ok": result.ok, "error": result.error}), entry))
    return result


def deliver_one(conn: psycopg.Connection, clock: Clock, senders: Senders, worker_id: str = "worker", *,
                recover: bool = True) -> bool:
    """Send the next due outbox row (or, with ``recover``, an in-doubt one), if any. Returns whether
    there was one. ``conn`` is in autocommit mode (this function commits twice)."""
    row = service.begin_delivery(conn, clock.now(), worker_id, message_id=lambda r: message_id(r, senders.smtp_url),
                                 recover=recover)
    if row is None:
        return False
    name = channel_name(row)
    if row["skipped"]:
        metrics.count_notification(name, "skipped")
        return True
    try:
        try:
            result = send(row, senders)
        except Exception as exc:  # a channel library bug must not kill the worker; retry later
            log.exception("send failed: delivery %s", row["delivery_id"])
            result = SendResult(False, f"{type(exc).__name__}: {exc!s:.300}")
        # a permanent failure (no retry can help) fails now, and reports the person if unreachable
        current = service.finish_delivery(conn, row, ok=result.ok, error=result.error, now=clock.now(), channel_name=name,
                                          final=result.permanent)
    finally:
        service.release_delivery(conn, row)
    metrics.count_send(name, row, result.ok, result.permanent, current)
    if not result.ok:
        log.warning("delivery %s via %s failed: %s", row["delivery_id"], name, result.error)
    return True
