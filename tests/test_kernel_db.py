"""Migrations on a real PostgreSQL."""

import psycopg
import pytest

from mimamori.kernel import db

pytestmark = pytest.mark.integration


def test_migrations_are_recorded_and_idempotent(pg_url: str) -> None:
    again = db.migrate(pg_url)
    assert again.applied == []
    with psycopg.connect(pg_url) as conn:
        rows = dict(conn.execute("SELECT name, status FROM schema_migrations").fetchall())
        ts = db.extension_available(conn, "timescaledb")
    assert rows["0001_core.sql"] == "applied"
    expected = "applied" if ts else "skipped"
    assert rows["0002_timescale_hypertable.sql"] == expected


def test_schema_contract(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'events' ORDER BY ordinal_position")]
        assert cols == ["time", "household_id", "device_id", "seq", "kind", "value", "received_at"]
        for table in ("households", "gateways", "devices", "device_state", "dead_letters"):
            assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] == table


def test_activity_view_counts_only_activity(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO households (household_id, display_name) VALUES ('h1', 'Tanaka')")
        conn.execute(
            """INSERT INTO events (time, household_id, device_id, seq, kind) VALUES
               ('2026-01-01 10:01+00', 'h1', 'd1', 1, 'on'), ('2026-01-01 10:14+00', 'h1', 'd1', 2, 'off'),
               ('2026-01-01 10:16+00', 'h1', 'd1', 3, 'boot'), ('2026-01-01 10:20+00', 'h1', 'd1', 4, 'motion')""")
        rows = conn.execute("SELECT bucket, events FROM activity_15m ORDER BY bucket").fetchall()
    assert [r[1] for r in rows] == [2, 1]
