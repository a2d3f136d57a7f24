"""Prometheus metrics of the alert engine (default registry; served by ``mimamori.kernel.observability``).

Counters are bumped by the process that did the work (each worker counts its own sends). The queue
gauges (due steps, lag of the oldest due step, incidents by status, outbox by status) describe the
shared database, so any worker may set them: ``refresh(conn, now)`` runs a few cheap queries and is
called by the worker loop every few seconds.
"""

from __future__ import annotations

from typing import Any

import psycopg
from prometheus_client import Counter, Gauge

from mimamori.alerts import policy
from mimamori.kernel.clock import as_datetime

NOTIFICATIONS = Counter(
    "mimamori_alerts_notifications_total",
    "Notification sends by channel (inapp, email, webpush, mqtt, line, slack ...) and outcome: sent, retry "
    "(failed, will be tried again), failed (given up), skipped (incident already claimed or closed), "
    "stale (an attempt another worker took over).",
    ["channel", "outcome"],
)
RETRIES = Counter("mimamori_alerts_retries_total", "Failed sends scheduled to be tried again (backoff).", ["channel"])
RESENDS = Counter(
    "mimamori_alerts_in_doubt_resends_total",
    "Sends found in doubt (the sender died between 'sending' and recording the outcome) and sent again "
    "with the same Message-ID.",
    ["channel"],
)
RESIDENTS_ASKED = Counter(
    "mimamori_alerts_residents_asked_total",
    "Residents asked by message, with an answer link, before their team hears of an alert (resident checks).",
)
RESIDENT_ANSWERS = Counter(
    "mimamori_alerts_resident_answers_total",
    "Residents' answers to resident checks: fine, away, help (the answer rate is these over residents asked).",
    ["answer"],
)
STEPS = Counter("mimamori_alerts_steps_total", "Escalation passes run (adopted incidents and due steps).", ["kind"])
DUE_STEPS = Gauge("mimamori_alerts_due_steps", "Escalations whose next step is due now (engine clock).")
STEP_LAG = Gauge(
    "mimamori_alerts_step_lag_seconds", "How late the oldest due escalation step is (engine clock); 0 when none is due."
)
UNADOPTED = Gauge("mimamori_alerts_unadopted_incidents", "Open incidents no worker has taken on yet.")
INCIDENTS = Gauge("mimamori_alerts_incidents", "Incidents by status.", ["status"])
DELIVERIES = Gauge("mimamori_alerts_outbox_deliveries", "Outbox rows by status (inapp excluded).", ["status"])

_STATUSES = ("open", "claimed", "resolved", "cancelled")
_OUTBOX = ("pending", "sending", "sent", "failed", "skipped")


def count_notification(channel: str, outcome: str, n: int = 1) -> None:
    NOTIFICATIONS.labels(channel, outcome).inc(n)


def count_send(channel: str, row: dict[str, Any], ok: bool, permanent: bool, current: bool) -> None:
    """Count one finished attempt of ``flows.deliver_one``."""
    if row.get("resend"):
        RESENDS.labels(channel).inc()
    if not current:
        outcome = "stale"
    elif ok:
        outcome = "sent"
    elif permanent or policy.retry_delay(int(row["attempts"]) + 1) is None:
        outcome = "failed"
    else:
        outcome = "retry"
        RETRIES.labels(channel).inc()
    NOTIFICATIONS.labels(channel, outcome).inc()


def refresh(conn: psycopg.Connection, now: float) -> dict[str, float]:
    """Set the queue gauges from the database; returns what it set (for logs and tests)."""
    row = conn.execute(
        "SELECT count(*), min(next_step_at) FROM alert_escalations WHERE next_step_at <= %s", (as_datetime(now),)
    ).fetchone()
    assert row is not None  # noqa: S101
    due, oldest = int(row[0]), row[1]
    lag = max(0.0, now - oldest.timestamp()) if oldest is not None else 0.0
    unadopted = conn.execute(
        """SELECT count(*) FROM incidents i WHERE i.status = 'open'
           AND NOT EXISTS (SELECT 1 FROM alert_escalations e WHERE e.incident_id = i.incident_id)"""
    ).fetchone()
    by_status = dict(conn.execute("SELECT status, count(*) FROM incidents GROUP BY status").fetchall())
    outbox = dict(conn.execute("SELECT status, count(*) FROM alert_deliveries WHERE channel <> 'inapp' GROUP BY status").fetchall())
    DUE_STEPS.set(due)
    STEP_LAG.set(lag)
    UNADOPTED.set(int(unadopted[0]) if unadopted else 0)
    for status in _STATUSES:
        INCIDENTS.labels(status).set(int(by_status.get(status, 0)))
    for status in _OUTBOX:
        DELIVERIES.labels(status).set(int(outbox.get(status, 0)))
    return {"due_steps": float(due), "step_lag_seconds": lag, **{f"incidents_{k}": float(by_status.get(k, 0)) for k in _STATUSES}}
