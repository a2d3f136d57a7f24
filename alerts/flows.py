"""Side effects: sending what the outbox holds.

``deliver_one`` locks the next due ``alert_deliveries`` row (FOR UPDATE SKIP LOCKED, so several
workers never send the same row), sends it while holding the lock, and records the outcome in the
same transaction.

Crash semantics, honestly:
- the intent is recorded with the step (see ``service.enqueue_notice``), so a crash before sending
  loses nothing: the row stays ``pending`` and the next worker sends it;
- a crash *after* the channel accepted the message but *before* our COMMIT leaves the row pending
  too (the lock dies with the connection), so it is sent again. SMTP, Apprise's targets and the
  MQTT command have no idempotency key we could pass, so this window (milliseconds: between the
  channel's "accepted" and our commit) can duplicate a message; it cannot lose one. For a welfare
  alert a rare duplicate beats a lost alert. Web Push has no message id either (Topic collapses
  only undelivered pushes, and our payload carries ``incident_id``/``notice`` so the service
  worker can ignore a repeat). In-app notifications are rows written in the step's own
  transaction: exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from alerts import service
from alerts.channels import AppriseSender, MqttBlinkSender, SendResult, WebPushSender, apprise_channel_name
from mimamori.clock import Clock

log = logging.getLogger(__name__)


@dataclass
class Senders:
    apprise: AppriseSender
    webpush: WebPushSender
    mqtt: MqttBlinkSender | None = None


def channel_name(row: dict[str, Any]) -> str:
    if row["channel"] == "mqtt":
        return "mqtt"
    if row.get("channel_kind") == "apprise" and row.get("target"):
        return apprise_channel_name(row["target"])
    return str(row["channel"]).split(":", 1)[0]


def send(row: dict[str, Any], senders: Senders) -> SendResult:
    payload = row["payload"]
    if row["channel"] == "mqtt":
        if senders.mqtt is None:
            return SendResult(False, "no MQTT broker configured for this worker")
        return senders.mqtt.send(payload["gateway_id"], payload["device_id"], payload.get("args", {}))
    if row.get("target") is None or not row.get("channel_enabled", False):
        return SendResult(False, "channel removed or disabled", permanent=True)
    if row["channel_kind"] == "apprise":
        return senders.apprise.send(row["target"], payload["title"], payload["body"])
    if row["channel_kind"] == "webpush":
        return senders.webpush.send(row["target"], payload, bool(row["urgent"]))
    return SendResult(False, f"unknown channel {row['channel']}", permanent=True)


def _superseded(row: dict[str, Any]) -> str | None:
    """An alert (or blink) for an incident someone already claimed or closed is not worth sending."""
    if row["notice"] in ("alert", "blink") and row["incident_status"] != "open":
        return f"incident already {row['incident_status']}"
    return None


def deliver_one(conn: psycopg.Connection, clock: Clock, senders: Senders) -> bool:
    """Send the next due outbox row, if any. Returns whether there was one."""
    now = clock.now()
    with conn.transaction():
        row = service.next_delivery(conn, now)
        if row is None:
            return False
        name = channel_name(row)
        reason = _superseded(row)
        if reason:
            service.record_delivery(conn, row, ok=False, error=reason, now=now, channel_name=name, skip=True)
            return True
        try:
            result = send(row, senders)
        except Exception as exc:  # a channel library bug must not kill the worker; retry later
            log.exception("send failed: delivery %s", row["delivery_id"])
            result = SendResult(False, f"{type(exc).__name__}: {exc!s:.300}")
        # a permanent failure (no retry can help) fails now, and reports the person if unreachable
        service.record_delivery(conn, row, ok=result.ok, error=result.error, now=clock.now(), channel_name=name,
                                final=result.permanent)
        if not result.ok:
            log.warning("delivery %s via %s failed: %s", row["delivery_id"], name, result.error)
    return True
