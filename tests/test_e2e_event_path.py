"""End to end, in separate processes as an operator runs them: `mimamori serve`/`ingest` and
`mimamori sim` over a real Mosquitto into a real PostgreSQL. Every resident-activity event whose
PUBACK the simulated gateways received is stored exactly once — also when the ingest process is
SIGKILLed mid-run and when the broker is down for 30 s mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from mimamori.kernel.embedded import EmbeddedBroker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOUSEHOLDS, DAYS, SEED = 200, 1, 1
#: The fault variants run a smaller town (the fault suite, `mimamori chaos`, runs them at 100 homes x 1 day
#: with more faults); the CI time budget is 15 minutes for everything.
FAULT_HOUSEHOLDS, FAULT_DAYS = 100, 1


def _env(pg_url: str, broker: EmbeddedBroker, tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MIMAMORI_DATABASE_URL=pg_url,
        MIMAMORI_MQTT_URL=broker.url,
        MIMAMORI_DATA_DIR=str(tmp / "data"),
        MIMAMORI_LOG_LEVEL="WARNING",
        MIMAMORI_APP_PORT="0",  # serve's web app on any free port
        PYTHONUNBUFFERED="1",
    )
    return env


def _mimamori(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "mimamori.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _run_sim(env: dict[str, str], tmp: Path, linger_s: float = 0.0, households: int = HOUSEHOLDS, days: float = DAYS) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "mimamori.cli", "sim", "--households", str(households), "--days", str(days),
         "--speed", "max", "--seed", str(SEED), "--json", "--workdir", str(tmp / "gateways"), "--linger", str(linger_s)],
        env=env, capture_output=True, timeout=900, check=False,  # the assert shows its stderr
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _activity_rows(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE kind IN ('on','off','motion','open','close')").fetchone()[0]


def _wait_for_rows(pg_url: str, expected: int, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    rows = _activity_rows(pg_url)
    while rows < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = _activity_rows(pg_url)
    time.sleep(1.0)  # anything arriving late would be a duplicate or an extra: look once more
    return _activity_rows(pg_url)


def _duplicates(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        return conn.execute(
            "SELECT count(*) FROM (SELECT device_id, seq FROM events GROUP BY device_id, seq HAVING count(*) > 1) d"
        ).fetchone()[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _assert_exactly_once(pg_url: str, report: dict) -> None:
    published = report["activity_events_published"]
    assert published > HOUSEHOLDS * DAYS * 20, report  # a believable amount of activity was simulated
    assert _wait_for_rows(pg_url, published) == published
    assert _duplicates(pg_url) == 0
    with psycopg.connect(pg_url) as conn:
        unassigned = conn.execute("SELECT count(*) FROM events WHERE household_id IS NULL").fetchone()[0]
    assert unassigned == 0  # the fleet registered its devices, so every event has its household


def test_serve_and_sim_store_every_published_event_once(pg_url: str, own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    env = _env(pg_url, own_broker, tmp_path)
    serve = _mimamori("serve", env=env, log=tmp_path / "serve.log")
    try:
        report = _run_sim(env, tmp_path)
        _assert_exactly_once(pg_url, report)
    finally:
        _stop(serve)


def test_ingest_sigkill_mid_run_loses_and_duplicates_nothing(pg_url: str, own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    env = _env(pg_url, own_broker, tmp_path)
    log = tmp_path / "ingest.log"
    ingest = _mimamori("ingest", env=env, log=log)
    kills = []

    def killer() -> None:
        nonlocal ingest
        # Wait until the ingest is visibly busy, then kill it without warning, twice.
        for _ in range(2):
            start = _activity_rows(pg_url)
            deadline = time.monotonic() + 120
            while _activity_rows(pg_url) < start + 1000 and time.monotonic() < deadline:
                time.sleep(0.05)
            ingest.send_signal(signal.SIGKILL)
            ingest.wait()
            kills.append(_activity_rows(pg_url))
            time.sleep(1.0)
            ingest = _mimamori("ingest", env=env, log=log)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        report = _run_sim(env, tmp_path, households=FAULT_HOUSEHOLDS, days=FAULT_DAYS)
        thread.join(300)
        assert len(kills) == 2, "the ingest was not killed mid-run"
        assert kills[-1] < report["activity_events_published"], "the kill came after everything was stored"
        _assert_exactly_once(pg_url, report)
    finally:
        thread.join(1)
        _stop(ingest)


def test_broker_down_for_30s_mid_run_loses_and_duplicates_nothing(pg_url: str, own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    env = _env(pg_url, own_broker, tmp_path)
    serve = _mimamori("serve", env=env, log=tmp_path / "serve.log")
    outage: list[int] = []

    def outage_maker() -> None:
        deadline = time.monotonic() + 120
        while _activity_rows(pg_url) < 1500 and time.monotonic() < deadline:
            time.sleep(0.05)
        own_broker.stop()
        outage.append(_activity_rows(pg_url))
        time.sleep(30)
        own_broker.start()

    thread = threading.Thread(target=outage_maker)
    thread.start()
    try:
        # Mosquitto 2.0 does not restore shared subscriptions from its persistence file: what the
        # gateways publish after the restart, before the ingest has subscribed again, is PUBACKed and
        # dropped. The gateways re-publish what they sent in the 30 s after reconnecting, and the
        # ingest's gap sweeper asks for the rest, so they stay on a while, as real ones would.
        report = _run_sim(env, tmp_path, linger_s=45, households=FAULT_HOUSEHOLDS, days=FAULT_DAYS)
        thread.join(300)
        assert outage, "the broker was never stopped"
        assert outage[0] < report["activity_events_published"], "the outage came after everything was stored"
        _assert_exactly_once(pg_url, report)
    finally:
        thread.join(1)
        _stop(serve)
