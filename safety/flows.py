"""Side effects: sending the safety check's outbox (blinks over MQTT, Apprise and Web Push
messages), throttled per channel kind. The channel senders are the alert engine's
(``alerts.channels``); what was sent is recorded by ``safety.service.record_delivery`` in the
transaction that holds the row's lock (FOR UPDATE SKIP LOCKED: several workers never send one row
twice; a crash between the channel's "accepted" and our commit can repeat one message, never lose it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from alerts import flows as alert_flows
from alerts.channels import MqttBlinkSender, SendResult
from mimamori.clock import Clock
from safety import metrics, service
from safety.throttle import Throttle

log = logging.getLogger(__name__)


@dataclass
class Senders(alert_flows.Senders):
    """The alert engine's senders, with the MQTT blink sender made on first use."""

    #: makes ``mqtt`` on first use (a broker down when the worker starts must not stop it)
    mqtt_factory: Callable[[], MqttBlinkSender] | None = None

    def blink_sender(self) -> MqttBlinkSender | None:
        if self.mqtt is None and self.mqtt_factory is not None:
            try:
                self.mqtt = self.mqtt_factory()
            except Exception as exc:  # broker down (or refused): the blink is retried with backoff
                log.warning("safety: cannot reach the MQTT broker yet: %s", exc)
        return self.mqtt


def send(row: dict[str, Any], senders: Senders) -> SendResult:
    payload = row["payload"]
    if row["channel"] == "mqtt":
        sender = senders.blink_sender()
        if sender is None:
            return SendResult(False, "no MQTT broker reachable for this worker")
        return sender.send(payload["gateway_id"], payload["device_id"], payload.get("args", {}))
    if row.get("target") is None or not row.get("channel_enabled", False):
        return SendResult(False, "channel removed or disabled", permanent=True)
    if row["channel_kind"] in ("apprise", "email"):
        return senders.message(row["channel_kind"], row["target"], payload["title"], payload["body"])
    if row["channel_kind"] == "webpush":
        return senders.webpush.send(row["target"], payload, True)
    return SendResult(False, f"unknown channel {row['channel']}", permanent=True)


def deliver_one(conn: psycopg.Connection, clock: Clock, senders: Senders, throttle: Throttle,
                keys: list[str]) -> bool:
    """Send the next due outbox row whose channel kind has a token. Returns whether one was sent."""
    now = clock.now()
    with conn.transaction():
        row = service.next_delivery(conn, now, throttle.blocked(keys, now))
        if row is None:
            return False
        if not throttle.try_take(row["throttle_key"], now):
            return False
        try:
            result = send(row, senders)
        except Exception as exc:  # a channel library bug must not kill the worker; retry later
            log.exception("safety send failed: delivery %s", row["delivery_id"])
            result = SendResult(False, f"{type(exc).__name__}: {exc!s:.300}")
        service.record_delivery(conn, row, ok=result.ok, error=result.error, now=clock.now(), permanent=result.permanent)
        metrics.DELIVERIES.labels(row["throttle_key"], "sent" if result.ok else "failed").inc()
    return True
