"""Alert latency: incident opened -> notification accepted by the channel.

``run_alerts_bench(database_url, incidents=1000, smtp=True)`` creates a scratch database beside
``database_url`` (dropped afterwards), seeds one household per incident with a tier-1 watcher who has
an e-mail channel, starts alert worker process(es) (``python -m mimamori.alerts.worker``, the real thing),
opens the incidents at a steady rate the way the detector does (INSERT into ``incidents``), and
measures per incident:

- in-app: until the ``notifications`` row's NOTIFY reaches a listening client (what the app's SSE
  stream sees);
- e-mail: until a real SMTP server (aiosmtpd, in this process) accepted the message.

Targets: p99 <= 1 s in-app, <= 2 s e-mail.
"""

from __future__ import annotations

import email
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg

from mimamori.kernel import contract, db, embedded

# Its sinks listen on loopback: allow them as an operator would an on-premises relay (issue 17 refuses
# private and loopback targets of people's channels otherwise). Worker processes inherit it.
os.environ.setdefault("MIMAMORI_ALERTS_PRIVATE_TARGETS", "127.0.0.0/8")

ROOT = Path(__file__).resolve().parents[1]
TARGET_INAPP_P99_S = 1.0
TARGET_EMAIL_P99_S = 2.0


class _Sink:
    """aiosmtpd handler: receipt time per recipient."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.message_ids: set[str] = set()
        self.count = 0

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        now = time.time()
        msg = email.message_from_bytes(envelope.content)  # parse, like a real server would store it
        for rcpt in envelope.rcpt_tos:
            self.received.setdefault(rcpt, now)
        self.message_ids.add(str(msg.get("Message-ID", "")))
        self.count += 1
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"received": 0, "p50_s": None, "p99_s": None, "max_s": None}
    arr = np.asarray(latencies)
    return {"received": len(latencies), "p50_s": round(float(np.percentile(arr, 50)), 4),
            "p99_s": round(float(np.percentile(arr, 99)), 4), "max_s": round(float(arr.max()), 4),
            "mean_s": round(float(arr.mean()), 4)}


def run_alerts_bench(database_url: str, *, incidents: int = 1000, smtp: bool = True, rate_per_s: float = 20.0,
                     workers: int = 1, delivery_threads: int = 8, timeout_s: float = 120.0) -> dict[str, Any]:
    """Open ``incidents`` incidents at ``rate_per_s`` and measure how fast watchers are told."""
    from aiosmtpd.controller import Controller

    scratch = f"bench_alerts_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(database_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    url = urlunsplit(parts._replace(path=f"/{scratch}"))
    embedded.create_database(admin_url, scratch)
    procs: list[subprocess.Popen[bytes]] = []
    controller = None
    sink = _Sink()
    try:
        db.migrate(url)
        port = _free_port()
        if smtp:
            controller = Controller(sink, hostname="127.0.0.1", port=port)
            controller.start()
        run = uuid.uuid4().hex[:6]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO people (person_id, display_name, role, area) VALUES (%s, 'coordinator', 'coordinator', 'bench')",
                         (f"c-{run}",))
            with conn.cursor() as cur:
                households = [(f"h{i}-{run}", f"bench {i}", "bench") for i in range(incidents)]
                watchers = [(f"w{i}-{run}", f"watcher {i}", "watcher") for i in range(incidents)]
                cur.executemany("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)", households)
                cur.executemany("INSERT INTO people (person_id, display_name, role) VALUES (%s, %s, %s)", watchers)
                cur.executemany("INSERT INTO household_watchers (household_id, person_id, tier) VALUES (%s, %s, 1)",
                                [(h[0], w[0]) for h, w in zip(households, watchers, strict=True)])
                if smtp:
                    cur.executemany(
                        "INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)",
                        [(w[0], f"mailto://127.0.0.1:{port}?from=alerts@bench.test&to={w[0]}@bench.test&mode=insecure")
                         for w in watchers])
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "MIMAMORI_ALERTS_DELIVERY_THREADS": str(delivery_threads), "MIMAMORI_ALERTS_POLL_S": "0.1",
               "MIMAMORI_LOG_LEVEL": "WARNING"}
        procs.extend(subprocess.Popen([sys.executable, "-m", "mimamori.alerts.worker", "--database-url", url, "--worker-id", f"bench-{k}"],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for k in range(workers))

        # an in-app client: LISTEN like the app's SSE stream does
        inapp_at: dict[int, float] = {}
        listener = psycopg.connect(url, autocommit=True)
        listener.execute(f"LISTEN {contract.CHANNEL_NOTIFICATIONS}")
        listening = threading.Event()
        done = threading.Event()

        def listen() -> None:
            import json

            listening.set()
            while not done.is_set():
                for note in listener.notifies(timeout=0.2):
                    inapp_at[json.loads(note.payload)["notification_id"]] = time.time()

        listen_thread = threading.Thread(target=listen, daemon=True)
        listen_thread.start()
        listening.wait(5)
        # the clock starts when every worker listens (its last statement on that connection)
        ready_deadline = time.monotonic() + 60
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < ready_deadline:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
                                   (f"LISTEN {contract.CHANNEL_ALERT_DELIVERIES}",)).fetchone()
                if row and row[0] >= workers:
                    break
                time.sleep(0.05)
        time.sleep(0.3)

        opened_at: dict[int, float] = {}
        person_of: dict[int, str] = {}
        start = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(incidents):
                due = start + i / rate_per_s
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                t0 = time.time()
                row = conn.execute(
                    """INSERT INTO incidents (household_id, kind, status, opened_at, updated_at, rule)
                       VALUES (%s, %s, 'open', now(), now(), 'bench') RETURNING incident_id""",
                    (households[i][0], contract.INACTIVITY)).fetchone()
                if row is None:
                    raise RuntimeError("the incident insert returned no id")
                opened_at[row[0]] = t0
                person_of[row[0]] = watchers[i][0]
            send_s = time.monotonic() - start
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if len(inapp_at) >= incidents and (not smtp or len(sink.received) >= incidents):
                    break
                time.sleep(0.1)
            done.set()
            listen_thread.join(5)
            listener.close()
            notif = dict(conn.execute("SELECT notification_id, incident_id FROM notifications WHERE notice = 'alert'").fetchall())
        inapp = [inapp_at[n] - opened_at[i] for n, i in notif.items() if n in inapp_at and i in opened_at]
        mail = [sink.received[f"{person_of[i]}@bench.test"] - opened_at[i] for i in opened_at
                if f"{person_of[i]}@bench.test" in sink.received]
        result: dict[str, Any] = {
            "bench": "alerts",
            "incidents": incidents,
            "rate_per_s": rate_per_s,
            "achieved_rate_per_s": round(incidents / send_s, 1) if send_s > 0 else None,
            "workers": workers,
            "delivery_threads": delivery_threads,
            "inapp": {**_stats(inapp), "lost": incidents - len(inapp), "target_p99_s": TARGET_INAPP_P99_S},
        }
        if smtp:
            # duplicates: mails beyond one per recipient; distinct_message_ids: what a receiver that
            # de-duplicates on Message-ID keeps (a re-send after a crash carries the same id)
            result["email"] = {**_stats(mail), "lost": incidents - len(mail), "duplicates": sink.count - len(sink.received),
                               "distinct_message_ids": len(sink.message_ids), "target_p99_s": TARGET_EMAIL_P99_S}
        headline = result["email"] if smtp else result["inapp"]
        result["p50_s"] = headline["p50_s"]
        result["p99_s"] = headline["p99_s"]
        ok = result["inapp"]["lost"] == 0 and (result["inapp"]["p99_s"] or 1e9) <= TARGET_INAPP_P99_S
        if smtp:
            ok = ok and result["email"]["lost"] == 0 and (result["email"]["p99_s"] or 1e9) <= TARGET_EMAIL_P99_S
        result["meets_targets"] = ok
        return result
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if controller is not None:
            controller.stop()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    import json
    import logging

    logging.basicConfig(level=logging.WARNING)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(json.dumps(run_alerts_bench(os.environ.get("MIMAMORI_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                                      incidents=n), indent=2))
