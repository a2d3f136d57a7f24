"""alerts.metrics after a real run: sends by channel and outcome, retries, queue gauges, readiness."""

from __future__ import annotations

import threading

import psycopg
import pytest
from prometheus_client import REGISTRY

from mimamori.alerts import metrics, service
from mimamori.alerts.channels import AlertSettings
from mimamori.alerts.models import Actor
from mimamori.alerts.worker import run_alert_worker
from mimamori.kernel import observability
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.config import Settings
from support.town import SmtpSink, open_incident, seed_town
from support.waiting import wait_for

pytestmark = pytest.mark.integration


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_sends_retries_and_describe_the_queue(pg_url: str, conn: psycopg.Connection, smtp: SmtpSink) -> None:
    clock = ManualClock()
    town = seed_town(conn, smtp, tier1=2, tier2=1)
    broken = town.tier1[1]
    conn.execute("UPDATE person_channels SET target = 'mailto://127.0.0.1:9?from=a@b.test&to=x@y.test&mode=insecure' "
                 "WHERE person_id = %s", (broken,))
    before = {
        "email_sent": sample("mimamori_alerts_notifications_total", channel="email", outcome="sent"),
        "email_retry": sample("mimamori_alerts_notifications_total", channel="email", outcome="retry"),
        "inapp_sent": sample("mimamori_alerts_notifications_total", channel="inapp", outcome="sent"),
        "retries": sample("mimamori_alerts_retries_total", channel="email"),
    }
    stop = threading.Event()
    worker = threading.Thread(target=run_alert_worker, args=(Settings(),), daemon=True, kwargs={
        "database_url": pg_url, "mqtt_url": None, "clock": clock, "stop": stop, "worker_id": "m",
        "alert_settings": AlertSettings(poll_s=0.05, delivery_threads=1, metrics_every_s=0.1)})
    worker.start()
    try:
        iid = open_incident(conn, town.household_id, clock.now())
        wait_for(lambda: len(smtp.to(town.emails[town.tier1[0]])) == 1, what="tier-1 mail")
        wait_for(lambda: sample("mimamori_alerts_retries_total", channel="email") - before["retries"] >= 1,
                 what="the broken channel's first failure counted as a retry")
        wait_for(lambda: sample("mimamori_alerts_notifications_total", channel="email", outcome="sent") - before["email_sent"] == 1,
                 what="the e-mail counted")
        assert sample("mimamori_alerts_notifications_total", channel="inapp", outcome="sent") - before["inapp_sent"] == 2
        assert sample("mimamori_alerts_notifications_total", channel="email", outcome="retry") - before["email_retry"] == 1
        # the worker refreshes the queue gauges: one open incident, waiting (nothing due)
        wait_for(lambda: sample("mimamori_alerts_incidents", status="open") == 1, what="incident gauge")
        assert sample("mimamori_alerts_due_steps") == 0 and sample("mimamori_alerts_step_lag_seconds") == 0
        _ok, checks = observability.readiness()
        assert checks.get("alerts") is True
    finally:
        stop.set()
        worker.join(15)
    assert "alerts" not in observability.readiness()[1]  # a stopped worker is no longer a readiness check
    # with no worker running, the wait comes due and goes unserved: the gauges show the backlog and how late
    clock.advance(15 * 60 + 42)
    figures = metrics.refresh(conn, clock.now())
    assert figures["due_steps"] == 1 and sample("mimamori_alerts_due_steps") == 1
    assert 41 <= sample("mimamori_alerts_step_lag_seconds") <= 43
    service.resolve(conn, Actor(town.tier1[0], "watcher"), iid, "fine", clock=clock)
    metrics.refresh(conn, clock.now())
    assert sample("mimamori_alerts_incidents", status="open") == 0
    assert sample("mimamori_alerts_incidents", status="resolved") == 1
    assert sample("mimamori_alerts_due_steps") == 0
    body, _ = observability.render_metrics()
    assert b'mimamori_alerts_notifications_total{channel="email",outcome="sent"}' in body
