"""``mimamori bench all``: the ingest, detector and alerts benchmarks and memory figures, in one run,
one JSON object.

Each benchmark runs in a subprocess of its own (``python -m mimamori.bench.bench_all one <name> <json>``) so
that its peak RSS is its own: ``ru_maxrss`` of the process that drained the ingest backlog (the
``IngestService`` under load, publishers excluded: they are separate processes), and of the process
that held the detector state for the whole fleet. The suite starts a Mosquitto of its own with the
project's configuration; the ingest benchmark writes into a scratch database (dropped afterwards),
the alerts benchmark makes its own.

The machine is shared (two cores, other engineers' work running): absolute figures move from run to
run by tens of percent; ratios measured side by side in the same run (database vs null sink) are
the steadier figures.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mimamori.kernel import db, embedded

ROOT = Path(__file__).resolve().parents[1]


def _one(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one benchmark in this process (called in the subprocess)."""
    if name == "ingest":
        from mimamori.bench.ingest_bench import run_ingest_bench
        from mimamori.kernel.mqtt import MqttUrl

        with db.scratch_database(kwargs.pop("database_url"), "scratch_bench_ingest") as url:
            result = run_ingest_bench(url, MqttUrl.parse(kwargs.pop("mqtt_url")), **kwargs)
    elif name == "detector":
        from mimamori.bench.detector_bench import run_detector_bench

        result = run_detector_bench(**kwargs)
    elif name == "alerts":
        from mimamori.bench.alerts_bench import run_alerts_bench

        result = run_alerts_bench(kwargs.pop("database_url"), **kwargs)
    else:
        raise ValueError(name)
    result["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _isolated(name: str, kwargs: dict[str, Any], timeout_s: float = 1800) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MIMAMORI_LOG_LEVEL": "WARNING"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mimamori.bench.bench_all", "one", name, json.dumps(kwargs)], cwd=ROOT, env=env,  # noqa: PLW1510
                          capture_output=True, timeout=timeout_s)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr.decode(errors="replace")[-3000:]}
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


def machine(database_url: str) -> dict[str, Any]:
    from mimamori.bench.chaos import machine_info, postgres_version

    info = machine_info()
    try:
        info["postgresql"] = postgres_version(database_url)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        info["postgresql"] = f"unknown ({exc})"
    return info


def run_bench_all(database_url: str, *, mqtt_url: str | None = None, events: int = 200_000,
                  households: int = 1_000_000, incidents: int = 1000, alert_rate: float = 20.0) -> dict[str, Any]:
    """Run the three benchmarks one after another; return one JSON-able dict with a summary table."""
    t0 = time.monotonic()
    broker = None
    if not mqtt_url:
        broker = embedded.MosquittoBroker(Path(tempfile.mkdtemp(prefix="mimamori-bench-broker-")))
        broker.start()
        mqtt_url = broker.url
    info = machine(database_url)
    load_before = info.get("loadavg")
    try:
        ingest = _isolated("ingest", {"database_url": database_url, "mqtt_url": mqtt_url, "events": events})
    finally:
        if broker is not None:
            broker.stop()
    detector = _isolated("detector", {"households": households})
    alerts = _isolated("alerts", {"database_url": database_url, "incidents": incidents, "rate_per_s": alert_rate})
    from mimamori.bench.chaos import machine_info

    load_after = machine_info().get("loadavg")
    memory = {
        "ingest_peak_rss_mb": ingest.get("process_peak_rss_mb"),
        "ingest_receive_maximum": ingest.get("receive_maximum"),
        "detector_state_bytes_per_household": detector.get("state_bytes_per_household"),
        "detector_peak_rss_mb": detector.get("process_peak_rss_mb"),
        "detector_peak_rss_bytes_per_household": (round(detector["process_peak_rss_mb"] * 1024 * 1024 / households, 1)
                                                  if detector.get("process_peak_rss_mb") else None),
    }
    return {
        "suite": "bench_all",
        "machine": info | {"loadavg_before": load_before, "loadavg_after": load_after},
        "wall_s": round(time.monotonic() - t0, 1),
        "table": summary_table(ingest, detector, alerts, memory),
        "ingest": ingest,
        "detector": detector,
        "alerts": alerts,
        "memory": memory,
        "parameters": {"events": events, "households": households, "incidents": incidents, "alert_rate_per_s": alert_rate},
    }


def summary_table(ingest: dict[str, Any], detector: dict[str, Any], alerts: dict[str, Any],
                  memory: dict[str, Any]) -> list[dict[str, Any]]:
    def row(area: str, what: str, value: Any, unit: str) -> dict[str, Any]:
        return {"area": area, "measure": what, "value": value, "unit": unit}

    email = alerts.get("email") or {}
    inapp = alerts.get("inapp") or {}
    scored = detector.get("households")
    per_hh_us = (round(detector["score_pass_s"] / scored * 1e6, 3) if detector.get("score_pass_s") and scored else None)
    return [
        row("ingest", "published → committed (database sink)", ingest.get("events_per_s"), "events/s"),
        row("ingest", "same client stack, null sink", ingest.get("null_sink_events_per_s"), "events/s"),
        row("ingest", "ratio database / null sink (same run)", ingest.get("ratio"), ""),
        row("ingest", "preload into Mosquitto (2 raw publishers)", ingest.get("preload_events_per_s"), "events/s"),
        row("ingest", "every event stored exactly once", ingest.get("stored_exactly_once"), ""),
        row("detector", f"one scoring pass, {scored} households, one core", detector.get("score_pass_s"), "s"),
        row("detector", "scoring cost per household", per_hh_us, "µs"),
        row("detector", f"online update, one event per household ({scored})", detector.get("observe_batch_s"), "s"),
        row("alerts", "incident → in-app notification p50 / p99",
            f"{inapp.get('p50_s')} / {inapp.get('p99_s')}", "s"),
        row("alerts", "incident → e-mail accepted by SMTP p50 / p99",
            f"{email.get('p50_s')} / {email.get('p99_s')}", "s"),
        row("alerts", "lost (in-app, e-mail)", f"{inapp.get('lost')}, {email.get('lost')}", ""),
        row("memory", "ingest process peak RSS under load", memory["ingest_peak_rss_mb"], "MB"),
        row("memory", "detector state per household", memory["detector_state_bytes_per_household"], "bytes"),
        row("memory", f"detector process peak RSS ({scored} households)", memory["detector_peak_rss_mb"], "MB"),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "one":
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(_one(sys.argv[2], json.loads(sys.argv[3])), default=str))
        sys.exit(0)
    print("usage: mimamori bench all [--json]", file=sys.stderr)
    sys.exit(2)
