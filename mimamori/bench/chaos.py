"""Fault suite (``mimamori chaos``): real processes, real faults, counted end to end.

Every fault runs on a stack of its own: a fresh scratch database (``scratch_chaos_<fault>_<hex>``
on the configured PostgreSQL server, dropped afterwards), a Mosquitto started by the suite with the
project's configuration, the stage under test as a subprocess (``mimamori ingest`` with its
operations endpoint, or ``python -m mimamori.alerts.worker``), and the simulator's fleet as a subprocess
(``python -m mimamori.bench.chaos fleet ...``: ``firmware_sim.fleet.run_fleet`` through real gateways; it
writes the exact set of ``(device_id, seq)`` whose PUBACK the gateways received).

Faults:

- ``broker_restart``: Mosquitto stopped (SIGTERM, persistence saved) mid-run and started again.
- ``db_unavailable_60s``: a TCP proxy between the ingest and PostgreSQL is cut for 60 s (every
  connection reset, none accepted). The shared PostgreSQL itself is never stopped.
- ``ingest_sigkill``: the ingest process SIGKILLed mid-run (twice), restarted a second later.
- ``alert_worker_sigkill``: incidents opened for households whose watchers have e-mail (a real
  aiosmtpd server run by the suite); the alert worker SIGKILLed while it sends, then restarted.
- ``gateway_offline_hour``: one gateway loses power for a simulated hour (the fleet runs on an
  accelerated clock), its devices keep their events, and it comes back with the backlog.
- ``reconnect_storm_20``: 20 gateways lose power at the same instant and all come back together
  (simulated ten minutes later) with their backlogs.

Per fault: events published (distinct non-heartbeat ``(device_id, seq)`` PUBACKed to a gateway),
stored, lost (published and not stored), duplicated (rows beyond one per ``(device_id, seq)``),
and for the alert fault: alerts due, sent, lost, duplicated (e-mail counted at the SMTP server,
in-app in ``notifications``). ``ok`` is false if any lost/duplicated count is non-zero or a fault
did not land mid-run.

Split by responsibility: ``bench.chaos_stack`` (the plan, the stack of one fault, the fleet
subprocess, counting), ``bench.chaos_faults`` (one function per fault) and this module (the suite).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg

from mimamori.bench.chaos_faults import RUNNERS
from mimamori.bench.chaos_stack import ChaosPlan, FaultResult, Stack, expected_events, fleet_main
from mimamori.kernel import embedded

log = logging.getLogger("mimamori.chaos")

__all__ = ["FAULTS", "ChaosPlan", "FaultResult", "machine_info", "postgres_version", "run_chaos", "run_fault", "table_row"]

FAULTS = ("broker_restart", "db_unavailable_60s", "ingest_sigkill", "alert_worker_sigkill",
          "gateway_offline_hour", "reconnect_storm_20")


def run_fault(fault: str, plan: ChaosPlan, admin_url: str, workdir: Path) -> FaultResult:
    res = FaultResult(fault)
    t0 = time.monotonic()
    expected = expected_events(plan.households, plan.days, plan.seed) if fault != "alert_worker_sigkill" else 0
    try:
        with Stack(fault, admin_url, workdir / fault) as stack:
            RUNNERS[fault](stack, plan, res, expected)
            if "ingest" in stack.procs:
                res.evidence["ingest_metrics"] = {k: v for k, v in stack.scrape("ingest").items()
                                                  if not k.endswith(("_sum", "count"))}
                res.evidence["ingest_exit_code"] = stack.stop("ingest")
    except Exception as exc:  # a fault that could not be run is reported, never hidden
        log.exception("fault %s failed to run", fault)
        res.error = f"{type(exc).__name__}: {exc}"[:2000]
    res.wall_s = round(time.monotonic() - t0, 1)
    counts = [c for part in (res.events, res.alerts) if part for c in (part["lost"], part["duplicated"])]
    res.ok = res.error is None and res.fault_mid_run and bool(counts) and not any(counts)
    return res


def run_chaos(faults: list[str], plan: ChaosPlan, admin_url: str, workdir: Path,
              progress: Callable[[FaultResult], None] | None = None) -> dict[str, Any]:
    unknown = [f for f in faults if f not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    t0 = time.monotonic()
    results = []
    for fault in faults:
        log.info("chaos: %s ...", fault)
        r = run_fault(fault, plan, admin_url, workdir)
        results.append(r)
        if progress is not None:
            progress(r)
    return {
        "suite": "chaos",
        "ok": all(r.ok for r in results),
        "plan": asdict(plan),
        "machine": machine_info(),
        "wall_s": round(time.monotonic() - t0, 1),
        "faults": {r.fault: asdict(r) for r in results},
        "table": [table_row(r) for r in results],
    }


def table_row(r: FaultResult) -> dict[str, Any]:
    ev, al = r.events or {}, r.alerts or {}
    return {"fault": r.fault, "ok": r.ok,
            "published": ev.get("published"), "stored": ev.get("stored"), "lost": ev.get("lost"),
            "duplicated": ev.get("duplicated"),
            "alerts_due": al.get("due"), "alerts_sent": al.get("sent"), "alerts_lost": al.get("lost"),
            "alerts_duplicated": al.get("duplicated"),
            "alerts_extra_copies": (al.get("email") or {}).get("extra_copies_same_message_id"), "wall_s": r.wall_s}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["ram_gb"] = round(kb / 1024 / 1024, 1)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        binary = embedded.shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        out = subprocess.run([binary, "-h"], capture_output=True, timeout=5, check=False).stdout.decode(errors="replace")
        info["mosquitto"] = out.splitlines()[0].strip() if out else None
    with contextlib.suppress(OSError):
        info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


def postgres_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fleet":
        sys.exit(fleet_main(sys.argv[2:]))
    print("usage: mimamori chaos ... (or python -m mimamori.bench.chaos fleet ... for the fleet subprocess)", file=sys.stderr)
    sys.exit(2)
