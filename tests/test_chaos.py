"""The fault suite, CI-sized: real processes (ingest, alert worker, the simulator's fleet), a
Mosquitto and a scratch database per fault. Nothing lost, nothing duplicated, and each fault really
landed mid-run. The full suite is ``mimamori chaos --json`` (report in mimamori/bench/results/chaos.json).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mimamori.bench.chaos import ChaosPlan, run_chaos

pytestmark = pytest.mark.e2e


def test_short_faults_lose_and_duplicate_nothing(pg_server, tmp_path: Path) -> None:
    report = run_chaos(["ingest_sigkill", "db_unavailable_60s", "alert_worker_sigkill"], ChaosPlan.short(),
                       pg_server.admin_url, tmp_path)
    faults = report["faults"]
    for name, fault in faults.items():
        assert fault["error"] is None, (name, fault["error"])
        assert fault["fault_mid_run"], (name, fault["evidence"])
    for name in ("ingest_sigkill", "db_unavailable_60s"):
        events = faults[name]["events"]
        assert events["published"] > 500, events  # a believable amount of traffic went through
        assert (events["lost"], events["duplicated"]) == (0, 0), (name, events["lost_sample"])
        assert events["stored"] == events["published"]
    outage = faults["db_unavailable_60s"]["evidence"]
    assert outage["ingest_ready_during_outage"] is False  # readiness tells the operator
    assert outage["rows_end_of_outage"] == outage["rows_at_cut"]
    alerts = faults["alert_worker_sigkill"]["alerts"]
    assert alerts["due"] == alerts["sent"] == 2 * 20 * 2  # e-mail and in-app, 20 incidents x 2 watchers
    assert (alerts["lost"], alerts["duplicated"]) == (0, 0), faults["alert_worker_sigkill"]["evidence"]
    assert report["ok"], report["table"]
