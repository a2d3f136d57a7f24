"""What only a hypertable does, on TimescaleDB (the store this project is built for).

These run when the test server has TimescaleDB preloaded (CI installs it: ``.ci/run``); the header
line says which store the suite used. With ``MIMAMORI_REQUIRE_TIMESCALEDB=1`` (set by CI) a server
without it fails them instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest

from mimamori.detector import checkpoint
from mimamori.detector.service import DetectorService
from mimamori.firmware_sim.offline import DEFAULT_START, simulate_household
from mimamori.ingest.batch import Batch
from mimamori.ingest.store import prepare, write_batch
from mimamori.kernel import db, embedded
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.protocol import Event
from test_detector_service import store_household

pytestmark = [pytest.mark.integration, pytest.mark.timescaledb]
DAY = 86400.0


@pytest.fixture
def ts_url(pg_url: str) -> str:
    with psycopg.connect(pg_url) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if version is None:
        if os.environ.get("MIMAMORI_REQUIRE_TIMESCALEDB"):
            pytest.fail("MIMAMORI_REQUIRE_TIMESCALEDB is set but the test server has no TimescaleDB")
        pytest.skip("the test server has no TimescaleDB (the header says which store the suite used)")
    return pg_url


def _compress_older_than(conn: psycopg.Connection, age: timedelta) -> int:
    chunks = conn.execute("SELECT show_chunks('events', older_than => %s)", (age,)).fetchall()
    for (chunk,) in chunks:
        conn.execute("SELECT compress_chunk(%s, if_not_compressed => true)", (chunk,))
    return len(chunks)


def _home(conn: psycopg.Connection, household: str, gateway: str, device: str) -> None:
    conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, 'x', 'area-01')", (household,))
    conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES (%s, %s, 'area-01', 'online')",
                 (gateway, household))
    conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'motion')",
                 (device, gateway, household))


def test_events_is_a_compressed_hypertable_with_retention_and_a_continuous_aggregate(ts_url: str) -> None:
    with psycopg.connect(ts_url) as conn:
        assert conn.execute("SELECT compression_enabled FROM timescaledb_information.hypertables"
                            " WHERE hypertable_name = 'events'").fetchone() == (True,)
        jobs = {r[0] for r in conn.execute("SELECT proc_name FROM timescaledb_information.jobs")}
        assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= jobs
        assert conn.execute("SELECT materialized_only FROM timescaledb_information.continuous_aggregates"
                            " WHERE view_name = 'activity_15m'").fetchone() == (False,)


def test_a_gateway_back_after_8_days_delivers_into_compressed_chunks_exactly_once(ts_url: str) -> None:
    now = time.time()
    with psycopg.connect(ts_url) as conn:
        _home(conn, "h1", "gw-1", "m1")
        conn.commit()
        prepare(conn)
        # The home's first days were delivered live; then its gateway went offline for 8 days.
        live = Batch()
        for i in range(40):
            live.add_event("gw-1", Event("m1", i, int((now - 12 * DAY + i * 600) * 1000), "motion"))
        write_batch(conn, live, now - 12 * DAY + 40 * 600)
        assert _compress_older_than(conn, timedelta(days=7)) >= 1
        conn.commit()
        # It comes back: everything it kept in its outbox, some of it re-sent twice, plus a duplicate of old rows.
        back = Batch()
        for i in range(40, 200):
            back.add_event("gw-1", Event("m1", i, int((now - 8 * DAY + (i - 40) * 900) * 1000), "motion"))
        write_batch(conn, back, now)
        again = Batch()
        for i in list(range(30, 50)) + list(range(150, 200)):
            ts = now - 12 * DAY + i * 600 if i < 40 else now - 8 * DAY + (i - 40) * 900
            again.add_event("gw-1", Event("m1", i, int(ts * 1000), "motion"))
        write_batch(conn, again, now + 5)
        rows = conn.execute("SELECT count(*), count(DISTINCT seq) FROM events WHERE device_id = 'm1'").fetchone()
        assert rows == (200, 200)
        compressed = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'events' AND is_compressed").fetchone()[0]
        assert compressed >= 1


def _plain_activity(conn: psycopg.Connection) -> list[tuple]:
    """The plain view of 0001 (what PostgreSQL without TimescaleDB answers), computed directly."""
    return conn.execute(
        """SELECT household_id, time_bucket(INTERVAL '15 minutes', time) AS bucket, count(*) FROM events
           WHERE kind IN ('on', 'off', 'motion', 'open', 'close') AND household_id IS NOT NULL
           GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()


def _run_job(conn: psycopg.Connection, proc: str) -> None:
    job = conn.execute("SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = %s", (proc,)).fetchone()[0]
    conn.execute("CALL run_job(%s)", (job,))


def test_the_continuous_aggregate_answers_as_the_plain_view_does(ts_url: str) -> None:
    now = time.time()
    rng = np.random.default_rng(3)
    with psycopg.connect(ts_url, autocommit=True) as conn:
        for h in ("h1", "h2"):
            _home(conn, h, f"gw-{h}", f"m-{h}")
        with conn.cursor().copy("COPY events (time, household_id, device_id, seq, kind) FROM STDIN") as copy:
            for h in ("h1", "h2"):
                times = np.sort(now - rng.uniform(0, 10 * DAY, 3000))
                for seq, t in enumerate(times.tolist()):
                    kind = ["motion", "on", "off", "boot"][seq % 4]
                    copy.write_row((datetime.fromtimestamp(t, UTC), h, f"m-{h}", seq, kind))
        expected = _plain_activity(conn)
        query = "SELECT household_id, bucket, events FROM activity_15m ORDER BY 1, 2"
        assert conn.execute(query).fetchall() == expected  # real time, nothing materialised yet
        _run_job(conn, "policy_refresh_continuous_aggregate")  # what the policy materialises every 5 minutes
        _compress_older_than(conn, timedelta(days=7))
        assert conn.execute(query).fetchall() == expected  # materialised, over compressed chunks
        # New rows (the real-time part) and a gateway back after 8 days (late rows in the materialised
        # part): counted once the policy has run again.
        conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (now(), 'h1', 'm-h1', 99999, 'motion')")
        assert conn.execute(query).fetchall() == _plain_activity(conn)
        late = datetime.fromtimestamp(now - 8 * DAY, UTC)
        conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (%s, 'h2', 'm-h2', 99998, 'motion')", (late,))
        _run_job(conn, "policy_refresh_continuous_aggregate")
        assert conn.execute(query).fetchall() == _plain_activity(conn)
        # A household's events deleted (its data removed): its counts go too.
        conn.execute("DELETE FROM events WHERE household_id = 'h2' AND time < now() - interval '5 days'")
        _run_job(conn, "policy_refresh_continuous_aggregate")
        assert conn.execute(query).fetchall() == _plain_activity(conn)


def test_retention_drops_old_chunks_and_keeps_recent_ones(ts_url: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(ts_url, autocommit=True) as conn:
        _home(conn, "h1", "gw-1", "m1")
        for seq, age in enumerate((500, 420, 399, 30, 1)):
            conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (%s, 'h1', 'm1', %s, 'motion')",
                         (now - timedelta(days=age), seq))
        job = conn.execute("SELECT job_id FROM timescaledb_information.jobs"
                           " WHERE proc_name = 'policy_retention' AND hypertable_name = 'events'").fetchone()[0]
        conn.execute("CALL run_job(%s)", (job,))
        ages = sorted(round((now - t).total_seconds() / DAY) for (t,) in conn.execute("SELECT time FROM events"))
    assert ages == [1, 30, 399]


def test_the_detector_reads_its_history_over_compressed_chunks(ts_url: str) -> None:
    k = next(i for i in range(40) if simulate_household(i, 9, DEFAULT_START, DEFAULT_START + DAY).info.has_sensors)
    end = DEFAULT_START + 21 * DAY
    store_household(ts_url, simulate_household(k, 9, DEFAULT_START, end), end)
    clock = ManualClock(end)
    before = DetectorService(ts_url, clock, restore=False)
    try:
        packed = checkpoint.pack_rows(before.state)
    finally:
        before.close(save=False)
    with psycopg.connect(ts_url, autocommit=True) as conn:
        # The chunks are dated in the simulated past: compress all but the last few days of it.
        chunks = conn.execute("SELECT show_chunks('events', older_than => %s::timestamptz)",
                              (datetime.fromtimestamp(end - 3 * DAY, UTC),)).fetchall()
        assert len(chunks) >= 10
        for (chunk,) in chunks:
            conn.execute("SELECT compress_chunk(%s)", (chunk,))
    after = DetectorService(ts_url, clock, restore=False)
    try:
        assert after.state.n == 1 and not np.isnan(after.state.last_activity[0])
        assert checkpoint.pack_rows(after.state).tobytes() == packed.tobytes()
    finally:
        after.close(save=False)


# -- a server with TimescaleDB's files but without the preload --------------------------------------

_PG15 = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def unpreloaded_server(pg_server) -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster (the machine's binaries, which have TimescaleDB's files) whose
    configuration does not preload it: the operator's mistake, reproduced.
    """
    if not (_PG15 / "initdb").exists():
        pytest.skip("no PostgreSQL 15 binaries on this machine")
    with psycopg.connect(pg_server.admin_url) as conn:
        if not db.extension_available(conn, "timescaledb"):
            pytest.skip("TimescaleDB's files are not installed on this machine")
    work = Path(tempfile.mkdtemp(prefix="mimamori-pg15-"))
    work.chmod(0o777)
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    port = embedded.free_port()
    try:
        subprocess.run([*as_user, str(_PG15 / "initdb"), "-D", str(work / "data"), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)
        subprocess.run([*as_user, str(_PG15 / "pg_ctl"), "start", "-D", str(work / "data"), "-w", "-l", str(work / "log"),
                        "-o", f"-p {port} -k {work} -c listen_addresses=''"], check=True, capture_output=True)
        yield f"postgresql://postgres@/postgres?host={work}&port={port}"
    finally:
        # check=False: the server may be down already
        subprocess.run([*as_user, str(_PG15 / "pg_ctl"), "-D", str(work / "data"), "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_installed_but_not_preloaded_is_a_clear_error(unpreloaded_server: str) -> None:
    with pytest.raises(db.MigrationError, match="shared_preload_libraries = 'timescaledb'"):
        db.migrate(unpreloaded_server)
    with psycopg.connect(unpreloaded_server) as conn:
        # Everything before the TimescaleDB migration is applied; the connection was never lost.
        assert conn.execute("SELECT status FROM schema_migrations WHERE version = 1").fetchone() == ("applied",)
        assert conn.execute("SELECT count(*) FROM schema_migrations WHERE version = 2").fetchone() == (0,)
