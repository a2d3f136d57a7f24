"""Fault suite (``mimamori chaos``): real processes, real faults, counted end to end.

Every fault runs on a stack of its own: a fresh scratch database (``scratch_chaos_<fault>_<hex>``
on the configured PostgreSQL server, dropped afterwards), a Mosquitto started by the suite with the
project's configuration, the stage under test as a subprocess (``mimamori ingest`` with its
operations endpoint, or ``python -m alerts.worker``), and the simulator's fleet as a subprocess
(``python -m bench.chaos fleet ...``: ``firmware_sim.fleet.run_fleet`` through real gateways; it
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
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.header
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
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from mimamori import contract, db, embedded

# Its sinks listen on loopback: allow them as an operator would an on-premises relay (issue 17 refuses
# private and loopback targets of people's channels otherwise). Worker processes inherit it.
os.environ.setdefault("MIMAMORI_ALERTS_PRIVATE_TARGETS", "127.0.0.0/8")

log = logging.getLogger("mimamori.chaos")

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ("broker_restart", "db_unavailable_60s", "ingest_sigkill", "alert_worker_sigkill",
          "gateway_offline_hour", "reconnect_storm_20")
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


# ---------------------------------------------------------------------------------------------
# Infrastructure: a database proxy, processes, the stack of one fault
# ---------------------------------------------------------------------------------------------


class PgProxy:
    """A TCP forwarder to PostgreSQL that the suite can cut (every connection dies, none accepted)
    and resume. ``target``: (host, port) or a Unix socket path (embedded PostgreSQL)."""

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


def _count(url: str, sql: str, *args: object) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(sql, args).fetchone()
    return int(row[0]) if row else 0


def _wait(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
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

    def __enter__(self) -> Stack:
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
        assert self.broker is not None
        return self.broker.url

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(MIMAMORI_DATABASE_URL=self.database_url, MIMAMORI_MQTT_URL=self.mqtt_url,
                   MIMAMORI_DATA_DIR=str(self.workdir / "data"), MIMAMORI_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
                   PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as out:
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
        if not _wait(lambda: self.ready("ingest") or proc.poll() is not None, 60):
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


# ---------------------------------------------------------------------------------------------
# The fleet subprocess
# ---------------------------------------------------------------------------------------------


def expected_events(households: int, days: float, seed: int) -> int:
    """Non-heartbeat events the fleet will generate (offline streams, same as the fleet's)."""
    import numpy as np

    from firmware_sim.devices import KIND_CODES
    from firmware_sim.offline import DAY, DEFAULT_START, simulate_household

    hb = KIND_CODES.index("heartbeat")
    return sum(int(np.count_nonzero(simulate_household(k, seed, DEFAULT_START, DEFAULT_START + days * DAY).kind != hb))
               for k in range(households))


def start_fleet(stack: Stack, plan: ChaosPlan, *, speed: float | None, faults: list[dict[str, Any]] = (),  # type: ignore[assignment]
                linger_s: float = 0.0) -> tuple[subprocess.Popen[bytes], Path]:
    out = stack.workdir / "fleet.json"
    args = ["-m", "bench.chaos", "fleet", "--households", str(plan.households), "--days", str(plan.days),
            "--seed", str(plan.seed), "--speed", "max" if speed is None else str(speed),
            "--workdir", str(stack.workdir / "gateways"), "--linger", str(linger_s), "--out", str(out),
            "--faults", json.dumps(list(faults))]
    return stack.spawn("fleet", args, stack.env()), out


def _fleet_main(argv: list[str]) -> int:
    """``python -m bench.chaos fleet ...``: register the fleet, run it, write report + published set."""
    import firmware_sim.fleet as fleet_mod
    from firmware_sim.offline import DEFAULT_START

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


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


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


def _stored_rows(url: str) -> int:
    return _count(url, f"SELECT count(*) FROM events WHERE {EVENT_KINDS_SQL}")


def _count_events(stack: Stack, fleet: subprocess.Popen[bytes], out: Path, timeout_s: float) -> dict[str, Any]:
    """Wait for the fleet to finish and the store to catch up; then compare by (device_id, seq)."""
    rc = fleet.wait(1800)
    if rc != 0 or not out.exists():
        raise RuntimeError(f"fleet exited {rc}: {stack.log_tail('fleet')}")
    data = json.loads(out.read_text())
    published = {(d, int(s)) for d, s in data["published"]}
    url = stack.database_url

    def distinct_stored() -> int:
        return _count(url, f"SELECT count(DISTINCT (device_id, seq)) FROM events WHERE {EVENT_KINDS_SQL}")

    _wait(lambda: distinct_stored() >= len(published), timeout_s, 0.5)
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


def _when_rows(url: str, at_least: int, timeout: float = 300.0) -> int:
    _wait(lambda: _stored_rows(url) >= at_least, timeout, 0.05)
    return _stored_rows(url)


# ---------------------------------------------------------------------------------------------
# Event faults
# ---------------------------------------------------------------------------------------------


def _fault_broker_restart(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    stack.start_ingest()
    fleet, out = start_fleet(stack, plan, speed=None, linger_s=plan.linger_s)
    at = _when_rows(stack.database_url, expected // 3)
    assert stack.broker is not None
    stack.broker.stop()
    time.sleep(plan.broker_down_s)
    stack.broker.start()
    res.evidence.update(rows_at_fault=at, broker_down_s=plan.broker_down_s)
    res.events = _count_events(stack, fleet, out, plan.settle_timeout_s)
    res.fault_mid_run = at < res.events["published"]


def _fault_db_unavailable(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    proxy = PgProxy(stack.database_url)
    try:
        stack.start_ingest(proxy.url)
        fleet, out = start_fleet(stack, plan, speed=None)
        at = _when_rows(stack.database_url, expected // 4)
        proxy.cut()
        cut_at = time.monotonic()
        time.sleep(0.2)
        rows_at_cut = _stored_rows(stack.database_url)  # a commit in flight at the cut may still land
        ready_during: list[bool] = []
        while time.monotonic() - cut_at < plan.db_down_s:
            ready_during.append(stack.ready("ingest"))
            time.sleep(min(2.0, plan.db_down_s / 4))
        rows_end_of_outage = _stored_rows(stack.database_url)
        metrics_during = stack.scrape("ingest")
        proxy.resume()
        res.evidence.update(rows_at_fault=at, rows_at_cut=rows_at_cut, rows_end_of_outage=rows_end_of_outage,
                            db_down_s=plan.db_down_s,
                            ingest_ready_during_outage=any(ready_during),
                            unacked_during_outage=metrics_during.get("mimamori_ingest_unacked_messages"),
                            db_errors_during_outage=metrics_during.get("mimamori_ingest_database_errors_total"))
        res.events = _count_events(stack, fleet, out, plan.settle_timeout_s)
        res.fault_mid_run = rows_at_cut < res.events["published"] and rows_end_of_outage == rows_at_cut
    finally:
        proxy.cut()


def _fault_ingest_sigkill(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    stack.start_ingest()
    fleet, out = start_fleet(stack, plan, speed=None)
    kills = []
    for k in range(plan.ingest_kills):
        at = _when_rows(stack.database_url, expected * (k + 1) // (plan.ingest_kills + 2))
        stack.kill("ingest")
        kills.append(at)
        time.sleep(1.0)
        stack.start_ingest()
    res.evidence.update(rows_at_kills=kills)
    res.events = _count_events(stack, fleet, out, plan.settle_timeout_s)
    res.fault_mid_run = bool(kills) and max(kills) < res.events["published"]


def _fault_gateway_offline_hour(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    stack.start_ingest()
    at_s = round(plan.days * 86400.0 * 0.3)  # a third into the run
    faults = [{"household": 0, "at_s": at_s, "kind": "power_loss", "down_s": plan.offline_sim_s}]
    fleet, out = start_fleet(stack, plan, speed=plan.fault_speed, faults=faults)
    res.events = _count_events(stack, fleet, out, plan.settle_timeout_s)
    gw = _gateway_of(stack, 0, plan)
    with psycopg.connect(stack.database_url) as conn:
        status = conn.execute("SELECT status FROM gateways WHERE gateway_id = %s", (gw,)).fetchone()
        offline_window = conn.execute(
            """SELECT count(*) FROM events e JOIN devices d USING (device_id)
               WHERE d.gateway_id = %s AND e.kind <> 'heartbeat'
                 AND e.time >= to_timestamp(%s) AND e.time < to_timestamp(%s)""",
            (gw, _sim_start() + at_s, _sim_start() + at_s + plan.offline_sim_s)).fetchone()
    res.evidence.update(gateway=gw, offline_sim_s=plan.offline_sim_s, speed=plan.fault_speed,
                        gateway_status_after_fleet_stopped=status[0] if status else None,  # retained 'offline' of a graceful stop
                        events_stored_from_offline_hour=offline_window[0] if offline_window else 0,
                        gateway_restarts=res.events["fleet"]["gateway_restarts"])
    res.fault_mid_run = res.events["fleet"]["gateway_restarts"] >= 1


def _fault_reconnect_storm(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    stack.start_ingest()
    n = min(plan.storm_gateways, plan.households)
    at_s = plan.days * 86400.0 * 0.5
    faults = [{"household": k, "at_s": at_s, "kind": "power_loss", "down_s": plan.storm_down_sim_s} for k in range(n)]
    fleet, out = start_fleet(stack, plan, speed=plan.fault_speed, faults=faults)
    res.events = _count_events(stack, fleet, out, plan.settle_timeout_s)
    res.evidence.update(gateways_reconnecting=n, down_sim_s=plan.storm_down_sim_s, speed=plan.fault_speed,
                        gateway_restarts=res.events["fleet"]["gateway_restarts"])
    res.fault_mid_run = res.events["fleet"]["gateway_restarts"] >= n


def _sim_start() -> float:
    from firmware_sim.offline import DEFAULT_START

    return DEFAULT_START


def _gateway_of(stack: Stack, household: int, plan: ChaosPlan) -> str:
    from firmware_sim.homes import make_household

    return make_household(household, plan.seed).gateway_id


# ---------------------------------------------------------------------------------------------
# Alert fault
# ---------------------------------------------------------------------------------------------


class SmtpSink:
    """aiosmtpd handler keeping (recipient, subject, Message-ID) of every accepted message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        logging.getLogger("mail.log").setLevel(logging.WARNING)  # one line per SMTP command otherwise
        self.port = embedded.free_port()
        self.mails: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content)
        subject = str(email.header.make_header(email.header.decode_header(msg.get("Subject", ""))))
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.mails.append((rcpt, subject, str(msg.get("Message-ID", ""))))
        return "250 OK"

    def snapshot(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return list(self.mails)

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def _fault_alert_worker_sigkill(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    url = stack.database_url
    run = uuid.uuid4().hex[:6]
    with SmtpSink() as sink:
        addresses: set[str] = set()
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            households = [(f"h{i}-{run}", f"chaos {i}", "chaos") for i in range(plan.incidents)]
            cur.executemany("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)", households)
            for i, (hid, _, _) in enumerate(households):
                for w in range(plan.watchers):
                    pid = f"w{i}.{w}-{run}"
                    addr = f"{pid}@chaos.test"
                    addresses.add(addr)
                    cur.execute("INSERT INTO people (person_id, display_name, role) VALUES (%s, %s, 'watcher')", (pid, pid))
                    cur.execute("INSERT INTO household_watchers (household_id, person_id, tier) VALUES (%s, %s, 1)", (hid, pid))
                    cur.execute("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)",
                                (pid, f"mailto://127.0.0.1:{sink.port}?from=alerts@chaos.test&to={addr}&mode=insecure"))
        env = stack.env(MIMAMORI_ALERTS_POLL_S="0.05")
        worker_args = ["-m", "alerts.worker", "--database-url", url]

        def start_worker(k: int) -> None:
            stack.spawn("alerts", [*worker_args, "--worker-id", f"chaos-{k}"], env)
            _wait(lambda: _count(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND query LIKE %s", f"LISTEN {contract.CHANNEL_ALERT_DELIVERIES}%") >= 1, 30, 0.05)

        start_worker(0)
        with psycopg.connect(url, autocommit=True) as conn:
            for hid, _, _ in households:
                conn.execute("""INSERT INTO incidents (household_id, kind, status, opened_at, updated_at, rule)
                                VALUES (%s, %s, 'open', now(), now(), 'chaos')""", (hid, contract.INACTIVITY))
        due = plan.incidents * plan.watchers
        kills = []
        for k in range(plan.alert_kills):
            target = due * (k + 1) // (plan.alert_kills + 2)
            _wait(lambda: len(sink.snapshot()) >= target, 60, 0.005)
            stack.kill("alerts")
            kills.append(len(sink.snapshot()))
            stack.procs.pop("alerts", None)
            time.sleep(0.5)
            start_worker(k + 1)
        _wait(lambda: len({m[0] for m in sink.snapshot()} & addresses) >= due, plan.settle_timeout_s, 0.2)
        _wait(lambda: _count(url, "SELECT count(*) FROM alert_deliveries WHERE status = 'pending'") == 0, 30, 0.2)
        time.sleep(1.0)
        mails = [m for m in sink.snapshot() if m[0] in addresses]
    with psycopg.connect(url) as conn:
        deliveries = dict(conn.execute("""SELECT status, count(*) FROM alert_deliveries
                                          WHERE notice = 'alert' AND channel LIKE %s GROUP BY 1""", ("apprise:%",)).fetchall())
        inapp_rows = conn.execute("""SELECT person_id, incident_id, count(*) FROM notifications WHERE notice = 'alert'
                                     GROUP BY 1, 2""").fetchall()
        inapp_sent = _count(url, "SELECT count(*) FROM alert_deliveries WHERE notice = 'alert' AND channel = 'inapp' AND status = 'sent'")
        escalations = _count(url, "SELECT count(*) FROM alert_escalations")
    # Each recipient is due exactly one alert mail. A message is identified by its Message-ID when the
    # engine sets one (a resend with the same Message-ID is the same message to mail systems):
    # duplicated = distinct messages beyond one per recipient; copies = every extra copy received.
    per_recipient = Counter(m[0] for m in mails)
    messages: dict[str, set[str]] = {}
    for rcpt, subject, message_id in mails:
        messages.setdefault(rcpt, set()).add(message_id or f"{subject}#{len(messages.get(rcpt, ()))}")
    duplicated = sum(len(ids) - 1 for ids in messages.values())
    copies = sum(n - 1 for n in per_recipient.values())
    email_res = {"due": due, "sent": deliveries.get("sent", 0), "received": len(per_recipient),
                 "lost": due - len(per_recipient), "duplicated": duplicated,
                 "extra_copies_same_message_id": copies - duplicated, "deliveries_by_status": deliveries}
    inapp_res = {"due": due, "sent": inapp_sent, "received": len(inapp_rows), "lost": due - len(inapp_rows),
                 "duplicated": sum(n - 1 for _, _, n in inapp_rows)}
    res.alerts = {
        "due": email_res["due"] + inapp_res["due"],
        "sent": email_res["sent"] + inapp_res["sent"],
        "lost": email_res["lost"] + inapp_res["lost"],
        "duplicated": email_res["duplicated"] + inapp_res["duplicated"],
        "email": email_res,
        "inapp": inapp_res,
    }
    if copies:
        res.evidence["recipients_with_extra_copies"] = [[r, n, len(messages[r])] for r, n in per_recipient.items() if n > 1][:20]
        res.evidence["extra_copies_note"] = (
            "the SMTP server accepted the same alert more than once (a send in flight at the SIGKILL: accepted by "
            "SMTP, not yet recorded as sent); the copies carry the same Message-ID, so mail systems that key on "
            "it show one message" if copies and not duplicated else
            "the same alert arrived as distinct messages (different Message-IDs)")
    res.evidence.update(incidents=plan.incidents, watchers_per_household=plan.watchers, mails_at_kills=kills,
                        escalations=escalations)
    res.fault_mid_run = bool(kills) and all(0 < k < due for k in kills)


# ---------------------------------------------------------------------------------------------
# Suite
# ---------------------------------------------------------------------------------------------

_RUNNERS: dict[str, Callable[[Stack, ChaosPlan, FaultResult, int], None]] = {
    "broker_restart": _fault_broker_restart,
    "db_unavailable_60s": _fault_db_unavailable,
    "ingest_sigkill": _fault_ingest_sigkill,
    "alert_worker_sigkill": _fault_alert_worker_sigkill,
    "gateway_offline_hour": _fault_gateway_offline_hour,
    "reconnect_storm_20": _fault_reconnect_storm,
}


def run_fault(fault: str, plan: ChaosPlan, admin_url: str, workdir: Path) -> FaultResult:
    res = FaultResult(fault)
    t0 = time.monotonic()
    expected = expected_events(plan.households, plan.days, plan.seed) if fault != "alert_worker_sigkill" else 0
    try:
        with Stack(fault, admin_url, workdir / fault) as stack:
            _RUNNERS[fault](stack, plan, res, expected)
            if "ingest" in stack.procs:
                res.evidence["ingest_metrics"] = {k: v for k, v in stack.scrape("ingest").items()
                                                  if not k.endswith(("_sum", "_count"))}
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
    unknown = [f for f in faults if f not in _RUNNERS]
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
        out = subprocess.run([binary, "-h"], capture_output=True, timeout=5).stdout.decode(errors="replace")
        info["mosquitto"] = out.splitlines()[0].strip() if out else None
    with contextlib.suppress(OSError):
        info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


def postgres_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fleet":
        sys.exit(_fleet_main(sys.argv[2:]))
    print("usage: mimamori chaos ... (or python -m bench.chaos fleet ... for the fleet subprocess)", file=sys.stderr)
    sys.exit(2)
