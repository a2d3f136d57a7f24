"""Prometheus metrics of the ingest stage (default registry; served by ``mimamori.kernel.observability``).

Counters are bumped once per batch, never per message: the hot path (``_on_raw_publish``) stays
free of locks. Gauges that describe the running consumers (unacknowledged messages, lag) are read
at scrape time from the live ``IngestService`` objects of this process.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram

from .batch import Batch
from .store import BatchResult


class IngestService(Protocol):
    """What the gauges read of a running ``ingest.consumer.IngestService`` (described here, not imported:
    the consumer imports this module, and metrics must not import the consumer back).
    """

    @property
    def unacked_messages(self) -> int: ...
    def lag_now(self) -> float | None: ...


MESSAGES_RECEIVED = Counter(
    "mimamori_ingest_messages_received_total",
    "MQTT messages taken into a batch (events, statuses, heartbeats and bad payloads; re-deliveries included).",
)
ROWS_STORED = Counter("mimamori_ingest_rows_stored_total", "New rows committed to the events table.")
DUPLICATES = Counter(
    "mimamori_ingest_duplicates_ignored_total",
    "Events dropped because the same (device_id, seq, time) was already stored or in the same batch.",
)
DEAD_LETTERS_NOT_KEPT = Counter(
    "mimamori_ingest_dead_letters_not_kept_total",
    "Dead letters over their source's budget (counted and acknowledged, not stored), by reason.", ["reason"]
)
DEAD_LETTERS = Counter(
    "mimamori_ingest_dead_letters_total", "Messages stored as dead letters, by reason.", ["reason"]
)
DEVICE_HEARTBEATS = Counter("mimamori_ingest_device_heartbeats_total", "Device heartbeats folded into device_state.")
BATCHES = Counter("mimamori_ingest_batches_total", "Batches committed.")
DATABASE_ERRORS = Counter(
    "mimamori_ingest_database_errors_total", "Failed attempts to write a batch (the batch is retried, nothing acked)."
)
RESEND_REQUESTS = Counter(
    "mimamori_ingest_gap_resend_requests_total", "Resend commands published to gateways for gaps in a device's seq."
)
BATCH_SIZE = Histogram(
    "mimamori_ingest_batch_size_messages",
    "Messages per committed batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000),
)
COMMIT_LATENCY = Histogram(
    "mimamori_ingest_commit_latency_seconds",
    "Time to write and commit one batch (the successful attempt).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
UNACKED = Gauge(
    "mimamori_ingest_unacked_messages",
    "Messages received and handed to the database writers, not yet committed and acknowledged.",
)
LAG = Gauge(
    "mimamori_ingest_lag_seconds",
    "Now (service clock) minus the device time of the newest event this process has stored; 0 before the first.",
)

_live: weakref.WeakSet[IngestService] = weakref.WeakSet()
_live_lock = threading.Lock()


def track(service: IngestService) -> None:
    """Count ``service`` in the scrape-time gauges while it runs."""
    with _live_lock:
        _live.add(service)


def untrack(service: IngestService) -> None:
    with _live_lock:
        _live.discard(service)


def _services() -> list[IngestService]:
    with _live_lock:
        return list(_live)


def _unacked() -> float:
    return float(sum(max(0, s.unacked_messages) for s in _services()))


def _lag() -> float:
    lags = [s.lag_now() for s in _services()]
    lags = [lag for lag in lags if lag is not None]
    return min(lags) if lags else 0.0


UNACKED.set_function(_unacked)
LAG.set_function(_lag)


def count_batch(batch: Batch, result: BatchResult) -> None:
    """One committed batch, once (never per message)."""
    BATCHES.inc()
    BATCH_SIZE.observe(batch.received)
    ROWS_STORED.inc(result.stored)
    DUPLICATES.inc(result.duplicates)
    DEVICE_HEARTBEATS.inc(result.heartbeats)
    reasons: dict[str, int] = {}
    for dl in batch.dead_letters:
        reasons[dl.reason] = reasons.get(dl.reason, 0) + 1
    for reason, n in result.refused.items():  # issue 17: future_ts, foreign_device (made by store.write_batch)
        reasons[reason] = reasons.get(reason, 0) + n
    # Items the database refused one by one (store.write_batch_singly):
    refused = result.dead_letters - len(batch.dead_letters) - sum(result.refused.values())
    if refused > 0:
        reasons["db_rejected"] = reasons.get("db_rejected", 0) + refused
    for reason, n in reasons.items():
        DEAD_LETTERS.labels(reason).inc(n)
