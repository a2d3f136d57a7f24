"""Prometheus metrics of the safety check (default registry; served by ``mimamori.kernel.observability``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ANSWERS_RECOGNISED = Counter(
    "mimamori_safety_answers_recognised_total", "Answers recognised in events (double toggle = safe, activity = sign of life).",
    ["state"])
RECOGNITION_LATENCY = Histogram(
    "mimamori_safety_recognition_latency_seconds",
    "From the ingest storing the completing event (received_at) to the answer being recorded.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
DELIVERIES = Counter(
    "mimamori_safety_deliveries_total", "Outbox sends (blinks and messages), by channel kind and outcome.",
    ["kind", "outcome"])
PASSES = Counter("mimamori_safety_recognition_passes_total", "Looks at new events by the safety worker.")
