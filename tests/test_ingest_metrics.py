"""Ingest metrics and readiness: events through a real broker into ``run_ingest``, counters read back
from the default Prometheus registry (deltas: other tests in the process count too).
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid

import pytest
from prometheus_client import REGISTRY

from mimamori.bench.chaos_stack import PgProxy
from mimamori.bench.ingest_bench import publish_raw
from mimamori.ingest.consumer import IngestService, run_ingest
from mimamori.kernel import embedded, protocol
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.observability import OpsServer, readiness
from support.waiting import wait_for as wait_until
from test_ingest_consumer import count, event_msg

pytestmark = pytest.mark.integration

NAMES = {
    "received": ("mimamori_ingest_messages_received_total", {}),
    "stored": ("mimamori_ingest_rows_stored_total", {}),
    "duplicates": ("mimamori_ingest_duplicates_ignored_total", {}),
    "bad_json": ("mimamori_ingest_dead_letters_total", {"reason": "bad_json"}),
    "device_mismatch": ("mimamori_ingest_dead_letters_total", {"reason": "device_mismatch"}),
    "batches": ("mimamori_ingest_batch_size_messages_count", {}),
    "batched_messages": ("mimamori_ingest_batch_size_messages_sum", {}),
    "commits": ("mimamori_ingest_commit_latency_seconds_count", {}),
    "db_errors": ("mimamori_ingest_database_errors_total", {}),
}


def sample(key: str) -> float:
    name, labels = NAMES[key]
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    return {k: sample(k) for k in NAMES}


def delta(before: dict[str, float]) -> dict[str, float]:
    return {k: sample(k) - v for k, v in before.items()}


def start(pg_url: str, mqtt_url: MqttUrl, stop: threading.Event) -> tuple[threading.Thread, IngestService]:
    holder: list[IngestService] = []
    settings = Settings(ingest_batch_size=100, ingest_batch_max_wait_s=0.02, ingest_session_expiry_s=60)
    thread = threading.Thread(
        target=run_ingest,
        kwargs={"settings": settings, "database_url": pg_url, "mqtt_url": mqtt_url, "stop": stop,
                "client_id": f"metrics-{uuid.uuid4().hex[:8]}", "service": holder},
        daemon=True,
    )
    thread.start()
    wait_until(lambda: holder and holder[0].subscribed.is_set(), 15, "ingest subscribed")
    return thread, holder[0]


def test_counters_histograms_gauges_and_readiness_follow_the_traffic(pg_url: str, own_broker: embedded.EmbeddedBroker) -> None:
    url = MqttUrl.parse(own_broker.url)
    gw = f"gwm{uuid.uuid4().hex[:6]}"
    events = [event_msg(gw, f"{gw}-d{i % 4}", i // 4) for i in range(400)]
    again = events[:30]  # a gateway retry: the same identities
    bad = [(protocol.event_topic(gw, "d1").encode(), b"{nope")] * 7
    bad += [(protocol.event_topic(gw, "d1").encode(), protocol.encode_event(protocol.Event("d2", 1, 1, "on")))] * 3
    before = snapshot()
    stop = threading.Event()
    thread, svc = start(pg_url, url, stop)
    ops = OpsServer("127.0.0.1", 0).start()
    try:
        publish_raw(url, events + again + bad)
        wait_until(lambda: svc.stats.acked >= 440, 20, "all acked")
        d = delta(before)
        assert d["received"] == 440
        assert d["stored"] == 400 == count(pg_url, "SELECT count(*) FROM events")
        assert d["duplicates"] == 30
        assert (d["bad_json"], d["device_mismatch"]) == (7, 3)
        assert d["batches"] == d["commits"] >= 5  # batch size 100
        assert d["batched_messages"] == 440
        assert d["db_errors"] == 0
        # events are from 2026-01-01 with seq-second spacing; the lag is now minus the newest one
        newest = 1_767_225_600 + 99  # TS + seq 99 seconds (event_msg)
        lag = REGISTRY.get_sample_value("mimamori_ingest_lag_seconds")
        assert lag is not None and abs(lag - (time.time() - newest)) < 60
        assert REGISTRY.get_sample_value("mimamori_ingest_unacked_messages") == 0
        ok, checks = readiness()
        assert checks["ingest"] is True and ok in (True, False)  # other stages' checks are not ours
        with urllib.request.urlopen(f"http://127.0.0.1:{ops.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for name in ("mimamori_ingest_messages_received_total", "mimamori_ingest_commit_latency_seconds_bucket",
                     'mimamori_ingest_dead_letters_total{reason="bad_json"}', "mimamori_ingest_gap_resend_requests_total",
                     "mimamori_ingest_lag_seconds", "mimamori_ingest_unacked_messages"):
            assert name in text, name
    finally:
        ops.close()
        stop.set()
        thread.join(30)
    assert "ingest" not in readiness()[1]  # a stopped consumer no longer answers


def test_readiness_fails_while_the_database_is_unreachable(pg_url: str, own_broker: embedded.EmbeddedBroker) -> None:
    url = MqttUrl.parse(own_broker.url)
    proxy = PgProxy(pg_url)
    gw = f"gwr{uuid.uuid4().hex[:6]}"
    stop = threading.Event()
    thread, svc = start(proxy.url, url, stop)
    before = snapshot()
    try:
        publish_raw(url, [event_msg(gw, "d", i) for i in range(10)])
        wait_until(lambda: svc.stats.acked >= 10, 20, "acked")
        assert svc.ready()
        proxy.cut()
        publish_raw(url, [event_msg(gw, "d", i) for i in range(10, 20)])
        wait_until(lambda: svc.stats.db_errors >= 1, 20, "a database error")
        assert not svc.ready() and readiness()[1]["ingest"] is False
        assert REGISTRY.get_sample_value("mimamori_ingest_unacked_messages") == 10
        assert delta(before)["db_errors"] >= 1
        proxy.resume()
        wait_until(lambda: svc.stats.acked >= 20, 30, "acked after the outage")
        assert svc.ready()
    finally:
        proxy.cut()
        stop.set()
        thread.join(30)
    assert count(pg_url, "SELECT count(*) FROM events") == 20
