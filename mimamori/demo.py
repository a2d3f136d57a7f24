"""``mimamori demo``: the whole service on embedded defaults with a simulated town.

Part of the CLI layer (it wires stages together), so it imports stages lazily.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from mimamori.kernel.clock import Clock, ManualClock, PacedClock, ScaledClock, as_datetime
from mimamori.kernel.config import Settings
from mimamori.runtime import services

log = logging.getLogger(__name__)
_TOWN_TZ = ZoneInfo("Asia/Tokyo")  # the simulated town's households live in Japan
HOUR = 3600.0
DAY = 86400.0

_COUNTS_SQL = """
SELECT (SELECT count(*) FROM events WHERE kind IN ('on', 'off', 'motion', 'open', 'close')),
       (SELECT count(*) FROM incidents WHERE status IN ('open', 'claimed')),
       (SELECT count(*) FROM events),
       (SELECT count(*) FROM dead_letters),
       (SELECT count(*) FROM gateways WHERE status = 'online'),
       (SELECT count(*) FROM devices WHERE household_id IS NULL),
       (SELECT count(*) FROM device_state WHERE power = 'on')
"""


#: The demo's story: the town's first 14 days are history (loaded straight into the database, so the
#: detector has learned every home's rhythm), the live part starts at 08:00 on the next day, and the
#: resident of the first home on watcher1's team collapses at 09:30 with no one around.
HISTORY_DAYS = 14.0
LIVE_FROM_LOCAL_H = 8.0
FALL_LOCAL_H = 9.5
#: Simulated seconds per real second until the first welfare alert opens (so it comes within the
#: first minute), then ``speed`` so a person can follow the escalation in the web app.
FAST_FORWARD = 3600.0
#: The second story: at 13:00 an earthquake bulletin (a real one, replayed: mimamori/demo_data/README.md)
#: reaches the first area, whose safety check (安否確認) starts by itself.
QUAKE_LOCAL_H = 13.0
QUAKE_DOCUMENT = Path(__file__).parent / "demo_data" / "quake_suruga_2009_vxse51.xml"
QUAKE_REGION = "442"  # 静岡県中部, 震度6弱 in that bulletin
_WELFARE_KINDS = ("inactivity", "long_on")

_FIRST_ALERT_SQL = """
SELECT i.incident_id, i.household_id, h.display_name, i.kind, i.opened_at
FROM incidents i JOIN households h USING (household_id)
WHERE i.kind = ANY(%s) AND i.household_id = %s ORDER BY i.opened_at LIMIT 1
"""


class _Progress:
    def __init__(self) -> None:
        self.fleet: dict[str, Any] = {}
        self.db: tuple[int, ...] = (0,) * 7
        self.history_activity = 0
        self.first_alert: tuple[Any, ...] | None = None
        self.first_alert_after_s: float | None = None
        self.done = False
        self.report: Any = None
        self.error: BaseException | None = None
        self.timed_out = False
        self.quake: dict[str, Any] | None = None

    @property
    def live_activity_stored(self) -> int:
        return max(0, self.db[0] - self.history_activity)


def _local(epoch: float) -> str:
    return as_datetime(epoch).astimezone(_TOWN_TZ).strftime("%a %Y-%m-%d %H:%M JST")


def _render(state: _Progress, households: int, started: float, services: str, clock: Clock) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(justify="right", style="bold")
    table.add_column()
    f = state.fleet
    speed = getattr(clock, "speed", None)
    table.add_row("simulated time", (_local(clock.now()) if speed else _local(f["sim_time"]) if f.get("sim_time") else "starting…")
                  + (f"   ({speed:,.0f}× real time)" if speed else ""))
    table.add_row("homes", f"{households}  ({f.get('devices', '…')} devices, {state.db[4]} gateways online)")
    table.add_row("history loaded", f"{state.history_activity:,} activity events ({HISTORY_DAYS:.0f} days)")
    table.add_row("live activity", f"{f.get('activity_events_published', 0):,} published, {state.live_activity_stored:,} stored"
                                   f"   (all events {state.db[2]:,})")
    table.add_row("open incidents", f"{state.db[1]:,}")
    if state.first_alert is not None:
        incident_id, _, name, kind, opened_at = state.first_alert
        table.add_row("the story's alert", f"[bold red]{name}[/] ({kind}) at {_local(opened_at.timestamp())},"
                                     f" {state.first_alert_after_s:.0f} s after start → /alerts/{incident_id}")
    if state.quake is not None:
        q = state.quake
        table.add_row("the second story", f"[bold]{q['at']}[/] earthquake bulletin (震度{q['intensity']} in {q['area']}): "
                                          + (f"safety check #{q['check_id']} started → /safety/{q['check_id']}"
                                             if q.get("check_id") else q["why"]))
    table.add_row("lights on now", f"{state.db[6]:,}")
    table.add_row("dead letters", f"{state.db[3]:,}")
    table.add_row("unpaired devices", f"{state.db[5]:,}")
    table.add_row("running for", f"{time.monotonic() - started:,.0f} s")
    status = "[green]simulation finished — the service keeps running; Ctrl-C to stop[/]" if state.done else "Ctrl-C to stop"
    return Panel(Group(table, status), title="[bold]見守り mimamori demo[/]", subtitle=services)


#: While fast-forwarding, the town must never fall behind the service's clock: a device whose
#: heartbeats are hours late looks offline, and a home that looks offline is not judged.
MAX_LAG_S = 900.0
MIN_FAST_FORWARD = 120.0


def _pace(clock: ScaledClock, lag_s: float, fast_forward: float) -> None:
    """Slow the shared clock down when the simulated town lags behind it; speed up again when it
    keeps up (a loaded machine feeds fewer events per second)."""
    if lag_s > MAX_LAG_S and clock.speed > MIN_FAST_FORWARD:
        clock.set_speed(max(MIN_FAST_FORWARD, clock.speed / 2))
    elif lag_s < MAX_LAG_S / 4 and clock.speed < fast_forward:
        clock.set_speed(min(fast_forward, clock.speed * 1.25))


def _log_to_file(settings: Settings) -> Path:
    """The live panel owns the terminal: logs go to a file."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "demo.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    return log_path


def _follow_the_database(database_url: str, clock: PacedClock, stop: threading.Event) -> None:
    """How far the database has the town (its devices' newest report), for the paced clock, 20 times a second."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute("SELECT extract(epoch FROM max(last_seen_at)) FROM device_state").fetchone()
            if row and row[0] is not None:
                clock.set_floor(float(row[0]))
            stop.wait(0.05)


class _DemoOperator:
    """Who sets up the demo's areas: the operator running it (no account behind it)."""

    person_id = "demo-operator"
    role = "operator"
    area = None
    household_id = None


def _prepare_quake_story(conn: psycopg.Connection, manifest: dict[str, Any], clock: Clock) -> str:
    """The first area is named by the bulletin's region and starts its check from 震度5弱 by itself."""
    from mimamori.safety import quake_service

    area = str(manifest["households"][0]["area"])
    quake_service.set_area(conn, _DemoOperator(), area=area, region_codes=[QUAKE_REGION], threshold="5弱", mode="start",
                           clock=clock)
    conn.commit()
    return area


def _quake_story(settings: Settings, database_url: str, clock: Clock, at: float, area: str, state: _Progress,
                 stop: threading.Event) -> None:
    """At ``at`` on the town's clock, the bulletin arrives: feed it as a live feed would (replayed: it is old)."""
    from mimamori.kernel.signing import signer
    from mimamori.safety import quake_service
    from mimamori.safety.models import SafetySettings
    from mimamori.safety.service import Links

    while not stop.is_set() and clock.now() < at:
        stop.wait(0.2)
    if stop.is_set():
        return
    links = Links(signer(settings, "safety-answer"), settings.app_url(), SafetySettings().link_max_age_s)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            result = quake_service.feed(conn, QUAKE_DOCUMENT.read_bytes(), clock=clock, links=links, replay=True)
    except Exception:  # the first story goes on; the log says why
        log.exception("the demo's earthquake bulletin could not be read")
        return
    mine = next((d for d in result["decisions"] if d["area"] == area), None) or {}
    state.quake = {"at": _local(at), "area": area, "intensity": mine.get("intensity"), "decision": mine.get("decision"),
                   "why": mine.get("why", ""), "check_id": mine.get("check_id")}


def load_history(database_url: str, streams: Sequence[Any], until: float, *, chunk: int = 20_000) -> int:
    """Store every event the simulated devices delivered before ``until`` through the ingest's own
    batch writer (as if the service had been running); returns the activity events stored."""
    from mimamori.ingest.batch import Batch
    from mimamori.ingest.store import prepare, write_batch
    from mimamori.kernel.protocol import ACTIVITY_KINDS

    activity = 0
    with psycopg.connect(database_url) as conn:
        prepare(conn)
        batch = Batch()
        for stream in streams:
            gateway_id = stream.info.gateway_id
            for i in np.flatnonzero(stream.arrival < until).tolist():
                event = stream.protocol_event(i)
                batch.add_event(gateway_id, event)
                activity += event.kind in ACTIVITY_KINDS
                if len(batch) >= chunk:
                    write_batch(conn, batch, until)
                    batch = Batch()
        if len(batch):
            write_batch(conn, batch, until)
    return activity


def run_demo(
    settings: Settings,
    *,
    households: int,
    days: float,
    speed: float | None,
    seed: int,
    stop: threading.Event,
    exit_when_done: bool = False,
    console: Console | None = None,
    history_days: float = HISTORY_DAYS,
    fast_forward: float = FAST_FORWARD,
    until_alert: bool = False,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """``days`` of live simulation after ``history_days`` of history. ``speed``: simulated seconds per
    real second once the first welfare alert is open (None: as fast as possible, for scripts).
    ``until_alert``: stop as soon as the story's alert is open (a smoke test of an install);
    ``max_seconds``: stop after that many real seconds whatever happened (the result says)."""
    from mimamori.app.demo import create_demo_accounts
    from mimamori.firmware_sim.fleet import fleet_manifest, register_manifest, run_fleet
    from mimamori.firmware_sim.incidents import IncidentPlan, IncidentSpec
    from mimamori.firmware_sim.offline import DEFAULT_START, simulate_household
    from mimamori.stages import run_stages

    console = console or Console()
    state = _Progress()
    log_path = _log_to_file(settings)
    history_start = DEFAULT_START  # local midnight
    live_from = history_start + history_days * DAY + LIVE_FROM_LOCAL_H * HOUR
    live_until = live_from + days * DAY
    if speed is not None:
        # The detector ticks about twice per real second of simulated time, not every simulated minute.
        settings.detector_tick_s = max(settings.detector_tick_s, max(speed, fast_forward) / 2)
    # The demo's broker state lives with the demo's own (fresh) database: an embedded broker starts
    # from an empty directory, so nothing a broker kept from an earlier run reaches this database.
    with services(settings, embedded_database="mimamori_demo", fresh_embedded_database=True,
                  broker_dir=settings.data_dir / "demo-broker", fresh_broker=True) as svc:
        manifest = fleet_manifest(households, seed)
        with psycopg.connect(svc.database_url) as conn:
            register_manifest(conn, manifest)
            logins = create_demo_accounts(conn, ManualClock(live_from))
            quake_area = _prepare_quake_story(conn, manifest, ManualClock(live_from))
        ids = [h["household_id"] for h in manifest["households"]]
        watched = next((login.households for login in logins if login.login == "watcher1"), ())
        focus = ids.index(watched[0]) if watched and watched[0] in ids else 0
        fall_at = live_from + (FALL_LOCAL_H - LIVE_FROM_LOCAL_H) * HOUR
        plan = IncidentPlan.at(IncidentSpec("collapse", household=focus, at=fall_at))
        with console.status(f"simulating {households} homes and loading {history_days:g} days of history…"):
            streams = [simulate_household(k, seed, history_start, live_until, incidents=plan) for k in range(households)]
            state.history_activity = load_history(svc.database_url, streams, live_from)

        # The service and the town share one clock, so the detector sees hours pass as residents live them.
        # It runs at real speed until the town's gateways are up (starting 50 MQTT clients takes seconds,
        # which at full speed would be hours of silence), then fast-forwards.
        # As fast as possible (speed None): the town sets the shared clock event by event (incidents are dated
        # in the town's January, not on the wall clock, and no device time is ahead of the service), held
        # within 15 simulated minutes of what the database has (the devices' newest report), so that the
        # detector never takes events still on their way for silence.
        clock: Clock = PacedClock(live_from, max_lead_s=900.0) if speed is None else ScaledClock(live_from, 1.0)
        if isinstance(clock, PacedClock):
            threading.Thread(target=_follow_the_database, args=(svc.database_url, clock, stop), name="pace", daemon=True).start()
        stage_threads = run_stages(settings, svc, stop, clock=clock)
        url = settings.app_url() + "/"
        console.print(f"[bold]web app[/]: {url}    logs: {log_path}")
        console.print(f"the story: {ids[focus]} ({manifest['households'][focus]['display_name']}) collapses at "
                      f"{_local(fall_at)}; the alert asks the resident first (sign in as resident), then "
                      f"watcher1's team 10 minutes later (sign in as watcher1)")
        for login in logins:
            console.print("  " + login.line())
        workdir = Path(tempfile.mkdtemp(prefix="mimamori-demo-"))

        def on_progress(snapshot: dict[str, Any]) -> None:
            if isinstance(clock, ScaledClock) and state.first_alert is None:
                if not state.fleet:
                    clock.set_speed(fast_forward)
                else:
                    _pace(clock, clock.now() - snapshot["sim_time"], fast_forward)
            state.fleet.update(snapshot)

        def drive() -> None:
            try:
                state.report = run_fleet(
                    svc.mqtt_url, households=households, days=(live_until - history_start) / DAY, speed=speed,
                    seed=seed, workdir=workdir, start=history_start, streams=streams, feed_from=live_from,
                    clock=clock, progress=on_progress,
                )
                state.fleet.update(state.report.to_json())
            except BaseException as exc:  # shown to the user; the service keeps running
                state.error = exc
                log.exception("simulation failed")
            finally:
                state.done = True

        quake_at = live_from + (QUAKE_LOCAL_H - LIVE_FROM_LOCAL_H) * HOUR
        threading.Thread(target=_quake_story, args=(settings, svc.database_url, clock, quake_at, quake_area, state, stop),
                         name="quake-story", daemon=True).start()
        fleet_thread = threading.Thread(target=drive, name="fleet", daemon=True)
        fleet_thread.start()
        started = time.monotonic()
        with psycopg.connect(svc.database_url, autocommit=True) as conn, Live(console=console, refresh_per_second=4) as live:
            while not stop.is_set():
                state.db = tuple(conn.execute(_COUNTS_SQL).fetchone())  # type: ignore[arg-type]
                if isinstance(clock, PacedClock) and state.done:
                    clock.release()
                if state.first_alert is None:
                    state.first_alert = conn.execute(_FIRST_ALERT_SQL, (list(_WELFARE_KINDS), ids[focus])).fetchone()
                    if state.first_alert is not None:
                        state.first_alert_after_s = time.monotonic() - started
                        if isinstance(clock, ScaledClock) and speed is not None:
                            clock.set_speed(speed)  # now slow enough to follow the escalation
                        live.console.print(f"[bold red]alert[/] {state.first_alert[2]}: {url}alerts/{state.first_alert[0]}"
                                           f" ({state.first_alert_after_s:.0f} s after start)")
                live.update(_render(state, households, started, svc.describe(), clock))
                if state.done and exit_when_done and state.live_activity_stored >= state.fleet.get("activity_events_published", 0):
                    break
                if until_alert and state.first_alert is not None:
                    break
                if max_seconds is not None and time.monotonic() - started >= max_seconds:
                    state.timed_out = True
                    break
                if not all(t.is_alive() for t in stage_threads):
                    console.print("[red]a service stage stopped unexpectedly[/]")
                    break
                stop.wait(0.5)
        stop.set()
        for t in stage_threads:
            t.join(30)
        fleet_thread.join(10 if state.done else 0.1)
        if state.error:
            raise state.error
        return {"published": state.fleet.get("activity_events_published", 0), "stored": state.live_activity_stored,
                "history_activity": state.history_activity, "open_incidents": state.db[1], "dead_letters": state.db[3],
                "timed_out": state.timed_out, "quake": state.quake,
                "first_alert": None if state.first_alert is None else {
                    "incident_id": state.first_alert[0], "household_id": state.first_alert[1], "kind": state.first_alert[3],
                    "after_s": round(state.first_alert_after_s or 0.0, 1)}}
