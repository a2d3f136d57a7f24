"""The stack one chaos fault runs on (``bench.chaos``): a scratch database behind a cuttable TCP proxy,
a Mosquitto, the stage under test and the simulator's fleet as subprocesses, and the counting of
what was published and stored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg

from mimamori.kernel import db, embedded

# Its sinks listen on loopback: allow them as an operator would an on-premises relay (issue 17 refuses
# private and loopback targets of people's channels otherwise). Worker processes inherit it.
os.environ.setdefault("MIMAMORI_ALERTS_PRIVATE_TARGETS", "127.0.0.0/8")

log = logging.getLogger("mimamori.chaos")



ROOT = Path(__file__).resolve().parents[1]


EVENT_KINDS_SQL = "kind <> 'heartbeat'"


@dataclass(frozen=True)
class ChaosPlan:
    """Sizes and durations. ``full()`` is what ``mimamori chaos`` runs; ``short()`` is CI-sized."""

    households: int = 100
    days: float = 1.0
    seed: int = 1
    broker_down_s: float = 5.0
    db_down_s: float = 60.0
    ingest_kills: int = 2
    offline_sim_s: float = 3600.0
    storm_gateways: int = 20
    storm_down_sim_s: float = 600.0
    #: Simulated seconds per real second for the gateway faults (``None``: as fast as possible).
    fault_speed: float | None = 3600.0
    #: Real seconds the gateways stay on after their last event, serving the ingest's resend requests
    #: (what a broker drops is only recovered that way: the gap sweeper runs every 30 s).
    linger_s: float = 60.0
    incidents: int = 100
    watchers: int = 2
    alert_kills: int = 2
    settle_timeout_s: float = 180.0

    @classmethod
    def full(cls, households: int | None = None) -> ChaosPlan:
        return cls() if households is None else cls(households=households)

    @classmethod
    def short(cls, households: int | None = None) -> ChaosPlan:
        return cls(households=households or 20, days=0.5, broker_down_s=2.0, db_down_s=5.0, ingest_kills=1,
                   fault_speed=None, linger_s=0.0, incidents=20, alert_kills=1, settle_timeout_s=60.0)


class PgProxy:
    """A TCP forwarder to PostgreSQL that the suite can cut (every connection dies, none accepted)
    and resume. ``target``: (host, port) or a Unix socket path (embedded PostgreSQL).
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.target = self._target_of(database_url)
        self.port = embedded.free_port()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.resume()

    @staticmethod
    def _target_of(url: str) -> tuple[str, int] | str:
        parts = urlsplit(url)
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        if query.get("host", "").startswith("/"):
            return f"{query['host']}/.s.PGSQL.{query.get('port', parts.port or 5432)}"
        return (parts.hostname or "127.0.0.1", parts.port or 5432)

    @property
    def url(self) -> str:
        parts = urlsplit(self.database_url)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        query = "&".join(p for p in parts.query.split("&") if p and not p.startswith(("host=", "port=")))
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}", query=query))

    def resume(self) -> None:
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", self.port))
        lsock.listen(64)
        self._listener = lsock
        threading.Thread(target=self._accept, args=(lsock,), daemon=True, name="pg-proxy").start()

    def _accept(self, lsock: socket.socket) -> None:
        while True:
            try:
                client, _ = lsock.accept()
            except OSError:
                return
            try:
                if isinstance(self.target, str):
                    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    upstream.connect(self.target)
                else:
                    upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def count(url: str, sql: str, *args: object) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(sql, args).fetchone()
    return int(row[0]) if row else 0


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Stack:
    """The processes of one fault: its database, its broker, its subprocesses (stopped on exit)."""

    def __init__(self, fault: str, admin_url: str, workdir: Path) -> None:
        self.fault = fault
        self.admin_url = admin_url
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.database_url = ""
        self.broker: embedded.MosquittoBroker | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ops_ports: dict[str, int] = {}
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Self:
        self.database_url = self._exit.enter_context(db.scratch_database(self.admin_url, f"scratch_chaos_{self.fault}"))
        self.broker = embedded.MosquittoBroker(self.workdir / "broker")
        self.broker.start()
        self._exit.callback(self.broker.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.stop(name)
        self._exit.close()

    @property
    def mqtt_url(self) -> str:
        if self.broker is None:
            raise RuntimeError("the stack is not started")
        return self.broker.url

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(MIMAMORI_DATABASE_URL=self.database_url, MIMAMORI_MQTT_URL=self.mqtt_url,
                   MIMAMORI_DATA_DIR=str(self.workdir / "data"), MIMAMORI_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
                   PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def start_ingest(self, database_url: str | None = None) -> subprocess.Popen[bytes]:
        """``mimamori ingest`` with its operations endpoint; returns once /readyz says ready."""
        port = self.ops_ports.setdefault("ingest", embedded.free_port())
        env = self.env(MIMAMORI_OPS_PORT=str(port), MIMAMORI_INGEST_CLIENT_ID=f"chaos-ingest-{self.fault}")
        if database_url:
            env["MIMAMORI_DATABASE_URL"] = database_url
        proc = self.spawn("ingest", ["-m", "mimamori.cli", "ingest"], env)
        if not wait_until(lambda: self.ready("ingest") or proc.poll() is not None, 60):
            raise RuntimeError(f"ingest not ready; see {self.workdir / 'ingest.log'}")
        if proc.poll() is not None:
            raise RuntimeError(f"ingest exited {proc.returncode}; see {self.workdir / 'ingest.log'}")
        return proc

    def ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_ports[name]}/readyz", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def scrape(self, name: str) -> dict[str, float]:
        """The stage's mimamori_* samples (counters and gauges) from its /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_ports[name]}/metrics", timeout=5) as r:
                text = r.read().decode()
        except (OSError, urllib.error.URLError):
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("mimamori_ingest") and not s.name.endswith(("_bucket", "_created")):
                    label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                    out[s.name + (f"{{{label}}}" if label else "")] = s.value
        return out

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, name: str) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_tail(self, name: str, chars: int = 1500) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def expected_events(households: int, days: float, seed: int) -> int:
    """Non-heartbeat events the fleet will generate (offline streams, same as the fleet's)."""
    import numpy as np

    from mimamori.firmware_sim.devices import KIND_CODES
    from mimamori.firmware_sim.offline import DAY, DEFAULT_START, simulate_household

    hb = KIND_CODES.index("heartbeat")
    return sum(int(np.count_nonzero(simulate_household(k, seed, DEFAULT_START, DEFAULT_START + days * DAY).kind != hb))
               for k in range(households))


def start_fleet(stack: Stack, plan: ChaosPlan, *, speed: float | None, faults: list[dict[str, Any]] = (),  # type: ignore[assignment]
                linger_s: float = 0.0) -> tuple[subprocess.Popen[bytes], Path]:
    out = stack.workdir / "fleet.json"
    args = ["-m", "mimamori.bench.chaos", "fleet", "--households", str(plan.households), "--days", str(plan.days),
            "--seed", str(plan.seed), "--speed", "max" if speed is None else str(speed),
            "--workdir", str(stack.workdir / "gateways"), "--linger", str(linger_s), "--out", str(out),
            "--faults", json.dumps(list(faults))]
    return stack.spawn("fleet", args, stack.env()), out


def fleet_main(argv: list[str]) -> int:
    """``python -m mimamori.bench.chaos fleet ...``: register the fleet, run it, write report + published set."""
    import mimamori.firmware_sim.fleet as fleet_mod
    from mimamori.firmware_sim.offline import DEFAULT_START

    p = argparse.ArgumentParser(prog="bench.chaos fleet")
    p.add_argument("--households", type=int, required=True)
    p.add_argument("--days", type=float, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--speed", default="max")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--linger", type=float, default=0.0)
    p.add_argument("--faults", default="[]", help="JSON list of {household, at_s (simulated, from start), kind, down_s}")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("MIMAMORI_LOG_LEVEL", "WARNING"))

    published: set[tuple[str, int]] = set()
    lock = threading.Lock()

    class Recording(fleet_mod._Delivered):  # noqa: SLF001 - the set of what the gateways got PUBACKs for
        def __call__(self, event: Any) -> None:
            super().__call__(event)
            if event.kind != "heartbeat":
                with lock:
                    published.add((event.device_id, event.seq))

    fleet_mod._Delivered = Recording  # type: ignore[misc]  # noqa: SLF001
    faults = [fleet_mod.GatewayFault(household=int(f["household"]), at=DEFAULT_START + float(f["at_s"]),
                                     kind=f.get("kind", "power_loss"), down_s=float(f.get("down_s", 0.0)))
              for f in json.loads(a.faults)]
    manifest = fleet_mod.fleet_manifest(a.households, a.seed)
    with psycopg.connect(os.environ["MIMAMORI_DATABASE_URL"]) as conn:
        fleet_mod.register_manifest(conn, manifest)
    report = fleet_mod.run_fleet(os.environ["MIMAMORI_MQTT_URL"], households=a.households, days=a.days,
                                 speed=None if a.speed == "max" else float(a.speed), seed=a.seed, workdir=a.workdir,
                                 faults=faults, linger_s=a.linger)
    with lock:
        rows = sorted(published)
    a.out.write_text(json.dumps({"report": report.to_json(), "published": rows}))
    return 0


@dataclass
class FaultResult:
    fault: str
    ok: bool = False
    fault_mid_run: bool = False
    events: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str | None = None


def stored_rows(url: str) -> int:
    return count(url, f"SELECT count(*) FROM events WHERE {EVENT_KINDS_SQL}")


def count_events(stack: Stack, fleet: subprocess.Popen[bytes], out: Path, timeout_s: float) -> dict[str, Any]:
    """Wait for the fleet to finish and the store to catch up; then compare by (device_id, seq)."""
    rc = fleet.wait(1800)
    if rc != 0 or not out.exists():
        raise RuntimeError(f"fleet exited {rc}: {stack.log_tail('fleet')}")
    data = json.loads(out.read_text())
    published = {(d, int(s)) for d, s in data["published"]}
    url = stack.database_url

    def distinct_stored() -> int:
        return count(url, f"SELECT count(DISTINCT (device_id, seq)) FROM events WHERE {EVENT_KINDS_SQL}")

    wait_until(lambda: distinct_stored() >= len(published), timeout_s, 0.5)
    time.sleep(1.0)  # anything arriving late would be a duplicate: look once more
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT device_id, seq, count(*) FROM events WHERE {EVENT_KINDS_SQL} GROUP BY 1, 2").fetchall()
        unassigned = conn.execute("SELECT count(*) FROM events WHERE household_id IS NULL").fetchone()[0]  # type: ignore[index]
        dead = dict(conn.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1").fetchall())
    stored = {(d, int(s)) for d, s, _ in rows}
    duplicated = sum(n - 1 for _, _, n in rows)
    lost = sorted(published - stored)
    report = data["report"]
    return {
        "published": len(published),
        "stored": len(stored & published),
        "lost": len(lost),
        "duplicated": duplicated,
        "stored_not_published": len(stored - published),  # PUBACK lost with a killed gateway: not a loss
        "lost_sample": [list(x) for x in lost[:20]],
        "rows": sum(n for _, _, n in rows),
        "events_unassigned_household": unassigned,
        "dead_letters": dead,
        "fleet": {k: report[k] for k in ("households", "devices", "activity_events_published", "heartbeats_published",
                                         "boots_published", "gateway_restarts", "flushed", "wall_s", "speed")},
    }


def when_rows(url: str, at_least: int, timeout: float = 300.0) -> int:
    wait_until(lambda: stored_rows(url) >= at_least, timeout, 0.05)
    return stored_rows(url)
