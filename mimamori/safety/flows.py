"""Side effects: the safety check's rows of the one outbox (blinks over MQTT, messages on people's
channels), sent with the alert engine's ``Senders`` by the outbox's protocol (``mimamori.kernel.outbox``:
claimed with an attempt id and an advisory lock, sent outside any transaction, recorded if the
attempt is still current; a row left in doubt by a dead worker is sent again, never lost), throttled
per channel kind.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import psycopg

from mimamori.alerts import flows as alert_flows
from mimamori.kernel import outbox
from mimamori.kernel.clock import Clock
from mimamori.kernel.db import fetch_dict
from mimamori.safety import metrics, records

log = logging.getLogger(__name__)

#: The one ``Senders`` (kept under this name for callers of the safety module).
Senders = alert_flows.Senders

#: Seconds before the next try after 1, 2, 3, 4 failed ones; then the row fails.
RETRY_DELAYS_S = (5.0, 30.0, 120.0, 600.0)


class SafetyOutbox:
    """The safety check's rows of the outbox (``outbox.source = 'safety'``)."""

    name = records.SOURCE

    def superseded(self, conn: psycopg.Connection, row: dict[str, Any]) -> str | None:
        closed = fetch_dict(conn, "SELECT closed_at FROM safety_checks WHERE check_id = %s", (row["check_id"],))
        return "check closed" if closed is None or closed["closed_at"] is not None else None

    def retry_delay(self, attempts: int) -> float | None:
        return RETRY_DELAYS_S[attempts - 1] if attempts <= len(RETRY_DELAYS_S) else None

    def recorded(self, conn: psycopg.Connection, row: dict[str, Any], outcome: str, error: str | None, now: float) -> None:
        household_id = row["payload"].get("household_id")
        if outcome == "sent" and row["channel"] == "mqtt":
            records.audit(conn, row["check_id"], household_id, now, None, "blinked", "mqtt",
                           {"device_id": row["payload"].get("device_id")})
        elif outcome == "failed":
            records.audit(conn, row["check_id"], household_id, now, None, "delivery_failed", row["throttle_key"],
                           {"recipient": row["recipient"], "error": error})
        elif outcome == "resend":
            records.audit(conn, row["check_id"], household_id, now, None, "resend_in_doubt", row["throttle_key"],
                           {"recipient": row["recipient"], "previous_worker": row["sending_by"],
                            "sending_since": row["sending_since"].isoformat() if row["sending_since"] else None})


#: The outbox sources a safety worker serves.
SOURCES: dict[str, outbox.OutboxSource] = {records.SOURCE: SafetyOutbox()}


def send(row: dict[str, Any], senders: alert_flows.Senders) -> Any:
    """One row on its channel (the one ``alerts.flows.send``)."""
    return alert_flows.send(row, senders)


def deliver_one(conn: psycopg.Connection, clock: Clock, senders: alert_flows.Senders, throttle: outbox.Throttle,
                keys: Collection[str], worker_id: str = "safety", *, recover: bool = True) -> bool:
    """Send the next due safety row whose channel kind has a token (or an in-doubt one). Returns
    whether there was one.
    """

    def observe(row: dict[str, Any], result: Any, outcome: str | None) -> None:
        if outcome == "skipped":
            metrics.DELIVERIES.labels(row["throttle_key"], "skipped").inc()
            return
        metrics.DELIVERIES.labels(row["throttle_key"], "sent" if result.ok else "failed").inc()
        if not result.ok:
            log.warning("safety delivery %s via %s failed: %s", row["delivery_id"], row["throttle_key"], result.error)

    return outbox.deliver_one(conn, SOURCES, lambda row: send(row, senders), clock.now, worker_id, recover=recover,
                              throttle=throttle, throttle_keys=keys,
                              message_id=lambda r: alert_flows.message_id(r, senders.smtp_url), observe=observe)

