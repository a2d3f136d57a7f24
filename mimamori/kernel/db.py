"""Database access: one psycopg pool per process, and the migration runner.

Migrations are numbered ``NNNN_name.sql`` files in ``mimamori/kernel/migrations``, applied once each in
order and recorded in ``schema_migrations``. Header lines change how a file is applied:

- ``-- mimamori:requires-extension NAME``: applied only when the extension is available on the
  server; otherwise recorded as skipped (and tried again by a later ``migrate`` if it appears).
- ``-- mimamori:no-transaction``: run statement by statement outside a transaction (needed for
  some TimescaleDB DDL, e.g. continuous aggregates).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "mimamori.kernel.migrations"
_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Serialises concurrent `migrate` calls (several processes starting at once).
_MIGRATION_LOCK_KEY = 0x6D696D616D6F7269  # "mimamori"


def connect(url: str, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(url, **kwargs)  # type: ignore[arg-type]


def fetch_dicts(conn: psycopg.Connection, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Rows as dicts keyed by column name (``[]`` for a statement that returns none)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def fetch_dict(conn: psycopg.Connection, sql: str, params: Any = None) -> dict[str, Any] | None:
    rows = fetch_dicts(conn, sql, params)
    return rows[0] if rows else None


def make_pool(url: str, *, min_size: int = 1, max_size: int = 4, name: str = "mimamori") -> ConnectionPool:
    pool = ConnectionPool(url, min_size=min_size, max_size=max_size, name=name, open=False)
    pool.open(wait=True, timeout=30)
    return pool


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def required_extension(self) -> str | None:
        m = re.search(r"^--\s*mimamori:requires-extension\s+(\w+)", self.sql, re.MULTILINE)
        return m.group(1) if m else None

    @property
    def transactional(self) -> bool:
        return re.search(r"^--\s*mimamori:no-transaction\b", self.sql, re.MULTILINE) is None


def load_migrations(directory: Path | None = None) -> list[Migration]:
    # Only ``*.sql`` files: an installed package also holds ``__init__.py`` and ``__pycache__/``.
    folder = resources.files(MIGRATIONS_PACKAGE) if directory is None else directory
    migrations = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        m = _NAME_RE.match(entry.name)
        if not m:
            raise ValueError(f"migration file name must look like 0001_name.sql: {entry.name}")
        migrations.append(Migration(int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    migrations.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers: {versions}")
    return migrations


def _split_statements(sql: str) -> list[str]:
    """Split a no-transaction migration on semicolons at line ends (those files keep to that)."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*\n", body) if s.strip().rstrip(";")]


class MigrationError(RuntimeError):
    """A migration cannot be applied on this server as it is configured (the message says the fix)."""


def extension_available(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = %s", (name,)).fetchone()
    return row is not None


def _check_preloaded(conn: psycopg.Connection, name: str) -> None:
    """TimescaleDB's files can be installed without its library being preloaded (a common operator
    mistake); ``CREATE EXTENSION`` then fails deep inside the migration and takes the connection
    down ("the connection is closed"). Say what is wrong and how to fix it instead.
    """
    if name != "timescaledb":
        return
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s", (name,)).fetchone():
        return  # already created, so it is loaded
    preload = str(conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0])  # type: ignore[index]
    if name not in [lib.strip().strip('"') for lib in preload.split(",")]:
        raise MigrationError(
            "TimescaleDB is installed on this PostgreSQL server but not preloaded: add "
            "shared_preload_libraries = 'timescaledb' to postgresql.conf and restart the server "
            f"(now: shared_preload_libraries = '{preload}'), or uninstall the extension's files to use "
            "plain PostgreSQL tables"
        )


@dataclass(frozen=True)
class MigrationResult:
    applied: list[str]
    skipped: list[str]


def migrate(url: str, directory: Path | None = None) -> MigrationResult:
    """Apply pending migrations. Safe to call from several processes at once."""
    migrations = load_migrations(directory)
    applied: list[str] = []
    skipped: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       status text NOT NULL CHECK (status IN ('applied', 'skipped')),
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done: dict[int, str] = dict(conn.execute("SELECT version, status FROM schema_migrations").fetchall())
            for mig in migrations:
                if done.get(mig.version) == "applied":
                    continue
                ext = mig.required_extension
                if ext and not extension_available(conn, ext):
                    if mig.version not in done:
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, status) VALUES (%s, %s, 'skipped')",
                            (mig.version, mig.name),
                        )
                    skipped.append(mig.name)
                    continue
                if ext:
                    _check_preloaded(conn, ext)
                log.info("applying migration %s", mig.name)
                if mig.transactional:
                    with conn.transaction():
                        conn.execute(mig.sql.encode())
                        _record(conn, mig)
                else:
                    for statement in _split_statements(mig.sql):
                        conn.execute(statement.encode())
                    _record(conn, mig)
                applied.append(mig.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return MigrationResult(applied, skipped)


def database_identity(conn: psycopg.Connection) -> str:
    """A short, stable name for this database: its identity row (0046) and its oid, hashed. Two
    databases never share it, not even two cloned from one template or two fresh servers.
    """
    row = conn.execute(
        """SELECT (SELECT identity::text FROM database_identity),
                  (SELECT oid::text FROM pg_database WHERE datname = current_database())"""
    ).fetchone()
    if row is None:  # a single-row SELECT always answers; a None would be a driver fault
        raise RuntimeError("the database did not say which database it is")
    return hashlib.sha256(f"{row[0]}/{row[1]}".encode()).hexdigest()[:12]


@contextlib.contextmanager
def scratch_database(url: str, prefix: str = "mimamori_scratch") -> Iterator[str]:
    """A migrated database of its own on the server of ``url``, dropped afterwards (benchmarks)."""
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        scratch = urlunsplit(parts._replace(path=f"/{name}"))
        migrate(scratch)
        yield scratch
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def _record(conn: psycopg.Connection, mig: Migration) -> None:
    conn.execute(
        """INSERT INTO schema_migrations (version, name, status) VALUES (%s, %s, 'applied')
           ON CONFLICT (version) DO UPDATE SET status = 'applied', applied_at = now()""",
        (mig.version, mig.name),
    )
