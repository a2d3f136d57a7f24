"""Prometheus metrics of the detector stage (default registry; served by ``mimamori.kernel.observability``).

Updated once per tick by ``DetectorService.tick`` (never per event), so scoring stays free of locks.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from mimamori.kernel import contract

INCIDENT_KINDS = tuple(sorted(contract.DETECTOR_KINDS))

TICK_SECONDS = Histogram(
    "mimamori_detector_tick_seconds",
    "Wall time of one detector tick (read new events, score every household, write incidents).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
HOUSEHOLDS = Gauge("mimamori_detector_households", "Households the detector scores on each tick.")
EVENTS_TAKEN = Counter("mimamori_detector_events_total", "Events taken into the model (new (device, seq) only).")
INCIDENTS_OPENED = Counter("mimamori_detector_incidents_opened_total", "Incident rows opened, by kind.", ["kind"])
INCIDENTS_CLOSED = Counter(
    "mimamori_detector_incidents_closed_total", "Incident rows the detector closed because the condition cleared, by kind.", ["kind"]
)
OPEN_INCIDENTS = Gauge("mimamori_detector_open_incidents", "Incidents open or claimed right now, by kind.", ["kind"])
LAG_SECONDS = Gauge(
    "mimamori_detector_lag_seconds",
    "Now (the detector's clock) minus the device time of the newest event the detector has seen.",
)
LAST_TICK = Gauge("mimamori_detector_last_tick_timestamp_seconds", "The detector's clock at its latest finished tick.")

for _kind in INCIDENT_KINDS:  # export zeros from the start, so rates and alerts work before the first incident
    INCIDENTS_OPENED.labels(_kind)
    INCIDENTS_CLOSED.labels(_kind)
    OPEN_INCIDENTS.labels(_kind).set(0)


def record_tick(*, seconds: float, households: int, opened: dict[str, int], closed: dict[str, int],
                open_now: dict[str, int], lag_s: float | None, now: float) -> None:
    TICK_SECONDS.observe(seconds)
    HOUSEHOLDS.set(households)
    for kind, n in opened.items():
        if n:
            INCIDENTS_OPENED.labels(kind).inc(n)
    for kind, n in closed.items():
        if n:
            INCIDENTS_CLOSED.labels(kind).inc(n)
    for kind in set(INCIDENT_KINDS) | set(open_now):
        OPEN_INCIDENTS.labels(kind).set(open_now.get(kind, 0))
    if lag_s is not None:
        LAG_SECONDS.set(lag_s)
    LAST_TICK.set(now)
