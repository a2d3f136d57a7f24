"""The area safety check (安否確認) at town scale, on the real services, side by side.

``run_safety_bench(households=2000, seed=0, database_url=None, mqtt_url=None)`` makes a scratch
database (migrated, dropped afterwards) on the PostgreSQL server of ``database_url`` and, unless
``mqtt_url`` is given, starts a Mosquitto of its own with the project's configuration. It seeds a
town from ``firmware_sim.fleet`` (households, gateways, bulbs/plugs/sensors, one resident per home,
one watcher per ten homes whose channel is a webhook on a local HTTP server), then runs, in this
process as ``tests/test_safety_e2e.py`` does, the real ingest (``IngestService``, what
``ingest.consumer.run_ingest`` runs), the real safety worker (``run_safety_worker``, default
``SafetySettings``) and the simulated residents (``firmware_sim.safety.SafetyResidents``), all on a
``SystemClock``, and measures:

- ``start_check_s``: the service call that starts the check over all households (one transaction:
  answers, blinks, in-app messages with personal links, the outbox);
- recognition: ``ANSWER_SHARE`` of the homes switch the blinking bulb twice (safe),
  ``SIGN_OF_LIFE_SHARE`` once (sign of life), the rest stay silent. ``recognition_latency_*`` is
  from the completing switch's publish to the ``recognised_at`` the worker records (the e2e test's
  measure; the worker stamps it once it has read the events). ``board_visible_latency_*`` is from the same publish
  until a client LISTENing like the board (NOTIFY of migration 0041, then a read) sees the home
  safe: after the commit, an upper bound by one small query. ``all_recognised_after_s``: from the
  start of the check until that client has seen every answering home safe;
- ``board_query_s``: one ``safety.service.board`` over all households (what the board page and its
  API call), best of 3; the board's counts must be exact;
- blinks: every bulb blinked (plugs only with ``devices.blink_allowed``) (sent by the worker, received by the simulated homes) and how
  long the outbox took at the ``mqtt`` rate; messages: the webhook outbox's drain at its throttled rate.

Households ids are prefixed per run, so a broker shared with other runs (retained gateway statuses,
commands) cannot disturb the figures. The machine is shared: the load average before and after is
in the result.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psycopg

from mimamori.firmware_sim.fleet import fleet_manifest, register_manifest
from mimamori.firmware_sim.safety import Home, SafetyResidents
from mimamori.ingest.consumer import IngestService
from mimamori.kernel import contract, db, embedded
from mimamori.kernel.clock import SystemClock
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.signing import signer
from mimamori.safety import service
from mimamori.safety.models import Actor, SafetySettings
from mimamori.safety.worker import run_safety_worker

# Its sinks listen on loopback: allow them as an operator would an on-premises relay (issue 17 refuses
# private and loopback targets of people's channels otherwise). Worker processes inherit it.
os.environ.setdefault("MIMAMORI_ALERTS_PRIVATE_TARGETS", "127.0.0.0/8")

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ANSWER_SHARE = 0.6          # homes that answer "safe" by a double toggle
SIGN_OF_LIFE_SHARE = 0.1    # homes that switch once (a sign of life, not an answer)
HOMES_PER_WATCHER = 10
BOARD_REPEATS = 3
POLL_S = 0.1
MESSAGE = "震度6弱の地震がありました。無事ですか？"


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 4) if values else None


def _webhook_server() -> tuple[ThreadingHTTPServer, list[tuple[float, str]]]:
    """A local HTTP endpoint standing in for a webhook provider: arrival time and path per POST."""
    arrivals: list[tuple[float, str]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            arrivals.append((time.monotonic(), self.path))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, name="bench-safety-webhook", daemon=True).start()
    return server, arrivals


def _town(households: int, seed: int, prefix: str) -> dict[str, Any]:
    """The fleet's homes with every id prefixed by this run's ``prefix``."""
    manifest = fleet_manifest(households, seed=seed)
    for h in manifest["households"]:
        h["household_id"] = prefix + h["household_id"]
        h["gateway_id"] = prefix + h["gateway_id"]
        for d in h["devices"]:
            d["device_id"] = prefix + d["device_id"]
    return manifest


def _seed(url: str, manifest: dict[str, Any], prefix: str, hook_port: int) -> tuple[str, int]:
    """Register the town, an operator, one resident per home (in-app only) and one watcher per
    ``HOMES_PER_WATCHER`` homes with a webhook channel. Returns (operator id, watchers).
    """
    hids = [h["household_id"] for h in manifest["households"]]
    operator = f"{prefix}oper"
    groups = [hids[i:i + HOMES_PER_WATCHER] for i in range(0, len(hids), HOMES_PER_WATCHER)]
    with psycopg.connect(url, autocommit=True) as conn:
        register_manifest(conn, manifest)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("INSERT INTO people (person_id, display_name, role) VALUES (%s, '市役所 防災課', 'operator')",
                        (operator,))
            cur.executemany("INSERT INTO people (person_id, display_name, role, household_id) VALUES (%s, %s, 'resident', %s)",
                            [(f"res-{h}", f"住人 {h}", h) for h in hids])
            cur.executemany("INSERT INTO people (person_id, display_name, role) VALUES (%s, %s, 'watcher')",
                            [(f"{prefix}w{j}", f"見守り {j}") for j in range(len(groups))])
            cur.executemany("INSERT INTO household_watchers (household_id, person_id) VALUES (%s, %s)",
                            [(h, f"{prefix}w{j}") for j, group in enumerate(groups) for h in group])
            cur.executemany("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)",
                            [(f"{prefix}w{j}", f"json://127.0.0.1:{hook_port}/w{j}") for j in range(len(groups))])
    return operator, len(groups)


def _plan(manifest: dict[str, Any], seed: int) -> tuple[list[Home], dict[str, str]]:
    """Which homes answer how: exact shares, homes drawn at random (``seed``)."""
    homes = manifest["households"]
    n = len(homes)
    n_safe, n_sign = round(n * ANSWER_SHARE), round(n * SIGN_OF_LIFE_SHARE)
    order = np.random.default_rng(seed).permutation(n)
    behaviour = ["silent"] * n
    for rank, k in enumerate(order):
        behaviour[k] = "double_toggle" if rank < n_safe else "single_toggle" if rank < n_safe + n_sign else "silent"
    sim, expected = [], {}
    state_of = {"double_toggle": "safe", "single_toggle": "sign_of_life", "silent": "no_answer"}
    for h, planned in zip(homes, behaviour, strict=True):
        # plugs are not blinked unless a coordinator allows it (devices.blink_allowed; issue 13)
        bulbs = [d["device_id"] for d in h["devices"] if d["kind"] == "bulb"]
        sensors = [(d["device_id"], d["kind"]) for d in h["devices"] if d["kind"] in ("motion", "door")]
        b = planned if bulbs else "silent"  # a home without a bulb cannot be asked by a blink: stays silent
        sim.append(Home(h["household_id"], h["gateway_id"], bulbs, sensors, b))  # type: ignore[arg-type]
        expected[h["household_id"]] = state_of[b]
    return sim, expected


def _wait_listening(url: str, channel: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
                               (f"LISTEN {channel}",)).fetchone()
            if row and row[0] >= 1:
                return True
            time.sleep(0.05)
    return False


class _BoardWatcher:
    """A client of the board: LISTENs on the app's live channel (migration 0041: a NOTIFY per
    ``safety_answers`` row written, ids only) and, on each batch of notifications, reads which of
    those households are now safe. ``seen_safe``: household -> epoch seconds when this client first
    saw it safe (after the commit, so never before the completing switch was published).
    """

    CHANNEL = contract.CHANNEL_APP_LIVE

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {self.CHANNEL}")
        self.seen_safe: dict[str, float] = {}
        self.notifications = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="bench-safety-board-watcher", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        import json

        while not self.stop.is_set():
            touched = set()
            for note in self.conn.notifies(timeout=0.02):
                self.notifications += 1
                data = json.loads(note.payload)
                if data.get("t") == "safety" and data.get("h") not in self.seen_safe:
                    touched.add(data["h"])
            if touched:
                rows = self.conn.execute("SELECT household_id FROM safety_answers WHERE state = 'safe' AND household_id = ANY(%s)",
                                         (sorted(touched),)).fetchall()
                now = time.time()
                for (hid,) in rows:
                    self.seen_safe.setdefault(hid, now)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.conn.close()


def _drop_ingest_session(url: MqttUrl, client_id: str) -> None:
    """Remove the ingest's persistent session from a broker we do not own."""
    from mimamori.bench.ingest_bench import _drop_session

    with contextlib.suppress(Exception):  # best effort; it expires by itself
        _drop_session(url, client_id)


def run_safety_bench(households: int = 2000, *, seed: int = 0, database_url: str | None = None,
                     mqtt_url: str | None = None) -> dict[str, Any]:
    """Start a safety check over ``households`` simulated homes and measure it (see the module
    docstring). ``database_url``: any database on the PostgreSQL server to use (a scratch database
    is made beside it); None = ``MIMAMORI_DATABASE_URL`` or the local server. ``mqtt_url``: a broker
    to use; None = a Mosquitto of our own (stopped afterwards). Returns a JSON-serialisable dict.
    """
    if households < 1:
        raise ValueError("households must be at least 1")
    wall0 = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    admin_url = database_url or os.environ.get("MIMAMORI_DATABASE_URL") or DEFAULT_DATABASE_URL
    workdir = Path(tempfile.mkdtemp(prefix="mimamori-bench-safety-"))
    broker: embedded.EmbeddedBroker | None = None
    try:
        if mqtt_url is None:
            broker = embedded.start_broker(workdir / "broker")
            mqtt_url = broker.url
        with db.scratch_database(admin_url, "scratch_bench_safety") as url:
            result = _run(url, mqtt_url, households, seed, workdir, own_broker=broker is not None)
        result["broker"] = broker.kind if broker is not None else "given"
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["loadavg_start"] = load_start
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.monotonic() - wall0, 1)
    return result


def _run(url: str, mqtt_url: str, households: int, seed: int, workdir: Path, *, own_broker: bool) -> dict[str, Any]:
    murl = MqttUrl.parse(mqtt_url)
    run = uuid.uuid4().hex[:6]
    prefix = f"s{run}-"
    t_seed = time.monotonic()
    hook, arrivals = _webhook_server()
    try:
        manifest = _town(households, seed, prefix)
        operator, watchers = _seed(url, manifest, prefix, hook.server_address[1])
    except BaseException:
        hook.shutdown()
        hook.server_close()
        raise
    sim_homes, expected = _plan(manifest, seed)
    seed_s = time.monotonic() - t_seed
    n_safe = sum(1 for s in expected.values() if s == "safe")
    n_sign = sum(1 for s in expected.values() if s == "sign_of_life")
    answering = [h.household_id for h in sim_homes if h.behaviour == "double_toggle"]
    blinks_expected = sum(len(h.bulbs) for h in sim_homes)

    cfg = SafetySettings()
    settings = Settings(database_url=url, mqtt_url=mqtt_url, data_dir=workdir / "data",
                        secret_key=f"bench-safety-{run}")  # type: ignore[arg-type]
    clock = SystemClock()
    stop = threading.Event()
    ingest = IngestService(settings, database_url=url, mqtt_url=murl, clock=clock, client_id=f"bench-safety-ingest-{run}",
                           share_group=f"bench-safety-{run}")
    ingest.stop_event = stop
    threads = [threading.Thread(target=ingest.run, name="bench-safety-ingest", daemon=True),
               threading.Thread(target=run_safety_worker, args=(settings,), name="bench-safety-worker", daemon=True,
                                kwargs={"database_url": url, "mqtt_url": murl, "clock": clock, "stop": stop,
                                        "safety_settings": cfg})]
    residents: SafetyResidents | None = None
    watcher: _BoardWatcher | None = None
    try:
        for t in threads:
            t.start()
        residents = SafetyResidents(murl, sim_homes, client_id=f"bench-safety-residents-{run}")
        if not ingest.subscribed.wait(20):
            raise RuntimeError("the ingest did not subscribe within 20 s")
        if not _wait_listening(url, service.NOTIFY_CHANNEL, 20):
            raise RuntimeError("the safety worker did not listen within 20 s")

        watcher = _BoardWatcher(url)
        actor = Actor(operator, "operator")
        links = service.Links(signer(settings, "safety-answer"), "http://127.0.0.1:8000", cfg.link_max_age_s)
        hids = [h["household_id"] for h in manifest["households"]]
        with psycopg.connect(url, autocommit=True) as conn:
            t_start, t_start_epoch = time.monotonic(), time.time()
            check_id = service.start_check(conn, actor, message=MESSAGE, clock=clock, links=links, household_ids=hids,
                                           blinks=cfg.blinks)
            start_check_s = time.monotonic() - t_start

            # follow the check as a client would, until everything expected has happened
            deadline = t_start + 60.0 + 3.0 * blinks_expected / cfg.rates.get("mqtt", cfg.rates.get("default", 5.0)) \
                + 3.0 * watchers / cfg.rates.get("webhook", cfg.rates.get("default", 5.0))
            recognised_after = blinks_after = messages_after = None
            while True:
                row = conn.execute(
                    """SELECT (SELECT count(*) FROM safety_answers WHERE check_id = %(c)s AND state = 'safe'),
                              (SELECT count(*) FROM safety_answers WHERE check_id = %(c)s AND state = 'sign_of_life'),
                              (SELECT count(*) FROM safety_deliveries WHERE check_id = %(c)s AND channel = 'mqtt'
                                                                      AND status = 'sent'),
                              (SELECT count(*) FROM safety_deliveries WHERE check_id = %(c)s AND channel <> 'mqtt'
                                                                      AND status = 'sent')""", {"c": check_id}).fetchone()
                if row is None:
                    raise RuntimeError("the safety counts query returned no row")
                safe, sign, blinks_sent, messages_sent = (int(x) for x in row)
                now = time.monotonic()
                if recognised_after is None and safe >= n_safe:
                    recognised_after = now - t_start
                if blinks_after is None and blinks_sent >= blinks_expected:
                    blinks_after = now - t_start
                if messages_after is None and messages_sent >= watchers and len(arrivals) >= watchers:
                    messages_after = now - t_start
                if (None not in (recognised_after, blinks_after, messages_after) and sign >= n_sign) or now > deadline:
                    break
                time.sleep(POLL_S)
            timed_out = time.monotonic() > deadline

            board_times = []
            board: dict[str, Any] = {}
            for _ in range(BOARD_REPEATS):
                t0 = time.perf_counter()
                board = service.board(conn, actor, check_id)
                board_times.append(time.perf_counter() - t0)

            recognised_at = {r[0]: float(r[1]) for r in conn.execute(
                """SELECT household_id, (data->>'recognised_at')::float8 FROM safety_audit
                   WHERE check_id = %s AND action = 'recognised_safe'""", (check_id,))}
            blink_rows = conn.execute("SELECT count(*) FROM safety_deliveries WHERE check_id = %s AND channel = 'mqtt'",
                                      (check_id,)).fetchone()
            in_app = conn.execute("SELECT count(*) FROM notifications WHERE notice = 'safety_check'").fetchone()
            links_made = conn.execute("SELECT count(*) FROM safety_links WHERE check_id = %s", (check_id,)).fetchone()
            events_stored = conn.execute("SELECT count(*) FROM events WHERE household_id = ANY(%s)", (hids,)).fetchone()
    finally:
        if watcher is not None:
            watcher.close()
        stop.set()
        if residents is not None:
            residents.close()
        for t in threads:
            t.join(30)
        hook.shutdown()
        hook.server_close()
        if not own_broker:
            _drop_ingest_session(murl, f"bench-safety-ingest-{run}")

    published_last = {hid: residents.published[hid][-1][2] for hid in answering if residents.published.get(hid)}
    latencies = [recognised_at[h] - published_last[h] for h in answering if h in recognised_at and h in published_last]
    if watcher is None:
        raise RuntimeError("the board watcher never started")
    seen = watcher.seen_safe
    visible = [seen[h] - published_last[h] for h in answering if h in seen and h in published_last]
    all_seen_after = (max(seen[h] for h in answering) - t_start_epoch) if answering and all(h in seen for h in answering) else None
    got = {h["household_id"]: h["state"] for h in board["households"]}
    counts = {k: int(v) for k, v in board["counts"].items()}
    want_counts = {s: sum(1 for v in expected.values() if v == s) for s in counts if s != "total"} | {"total": households}
    webhook_times = sorted(t for t, _path in arrivals)
    burst = int(max(1.0, cfg.rates.get("webhook", cfg.rates.get("default", 5.0))))
    steady = (round((len(webhook_times) - burst) / (webhook_times[-1] - webhook_times[burst - 1]), 2)
              if len(webhook_times) > burst + 1 and webhook_times[-1] > webhook_times[burst - 1] else None)
    mqtt_rate = cfg.rates.get("mqtt", cfg.rates.get("default", 5.0))
    return {
        "bench": "safety",
        "households": households,
        "seed": seed,
        "answering_households": n_safe,
        "sign_of_life_households": n_sign,
        "watchers": watchers,
        "seed_s": round(seed_s, 2),
        "start_check_s": round(start_check_s, 3),
        "recognised": len(recognised_at),
        "recognised_expected": n_safe,
        "recognition_latency_p50_s": _percentile(latencies, 50),
        "recognition_latency_p99_s": _percentile(latencies, 99),
        "recognition_latency_max_s": round(max(latencies), 4) if latencies else None,
        "recognition_latency_min_s": round(min(latencies), 4) if latencies else None,
        "recognition_latency_mean_s": round(statistics.fmean(latencies), 4) if latencies else None,
        "board_visible_latency_p50_s": _percentile(visible, 50),
        "board_visible_latency_p99_s": _percentile(visible, 99),
        "board_visible_latency_max_s": round(max(visible), 4) if visible else None,
        "board_visible_latency_min_s": round(min(visible), 4) if visible else None,
        "board_visible": len(visible),
        "board_notifications": watcher.notifications,
        "all_recognised_after_s": round(all_seen_after if all_seen_after is not None else recognised_after, 2)
        if (all_seen_after is not None or recognised_after is not None) else None,
        "board_query_s": round(min(board_times), 4),
        "board_query_all_s": [round(t, 4) for t in board_times],
        "board_counts": counts,
        "board_counts_expected": want_counts,
        "board_counts_exact": counts == want_counts,
        "board_states_exact": got == expected,
        "blinks_expected": blinks_expected,
        "blinks_queued": int(blink_rows[0]) if blink_rows else 0,
        "blinks_sent": blinks_sent,
        "blinks_received": int(sum(residents.blinks_received.values())),
        "blinks_all_sent_after_s": round(blinks_after, 2) if blinks_after is not None else None,
        "blinks_rate_per_s": round(blinks_sent / blinks_after, 1) if blinks_after else None,
        "blinks_rate_limit_per_s": mqtt_rate,
        "in_app_messages": int(in_app[0]) if in_app else 0,
        "in_app_messages_expected": households + watchers,
        "answer_links": int(links_made[0]) if links_made else 0,
        "messages_kind": "webhook",
        "messages_expected": watchers,
        "messages_sent": messages_sent,
        "messages_received": len(arrivals),
        "messages_distinct_recipients": len({p for _t, p in arrivals}),
        "messages_first_after_s": round(webhook_times[0] - t_start, 2) if webhook_times else None,
        "messages_all_sent_after_s": round(messages_after, 2) if messages_after is not None else None,
        "messages_span_s": round(webhook_times[-1] - webhook_times[0], 2) if len(webhook_times) > 1 else None,
        "messages_steady_rate_per_s": steady,
        "messages_rate_limit_per_s": cfg.rates.get("webhook", cfg.rates.get("default", 5.0)),
        "events_stored": int(events_stored[0]) if events_stored else 0,
        "events_published": int(sum(len(v) for v in residents.published.values())),
        "timed_out": timed_out,
        "scratch_database": urlsplit(url).path.lstrip("/"),  # also for a socket URL (?host=/dir)
        "mqtt_url": str(murl),
        "settings": {"poll_s": cfg.poll_s, "lookback_s": cfg.lookback_s,
                     "double_toggle_window_s": cfg.double_toggle_window_s, "rates": dict(cfg.rates),
                     "ingest_batch_max_wait_s": settings.ingest_batch_max_wait_s},
        "topology": "one process: ingest, safety worker and simulated residents as threads (as tests/test_safety_e2e.py)",
    }


if __name__ == "__main__":  # pragma: no cover - python -m mimamori.bench.safety_bench [households]
    import json
    import logging
    import sys

    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run_safety_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 2000), indent=2))
