"""``mimamori demo``: the whole service on embedded defaults with a simulated town.

Part of the CLI layer (it wires stages together), so it imports stages lazily.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from mimamori.clock import Clock, ScaledClock, SystemClock, as_datetime
from mimamori.config import Settings
from mimamori.runtime import services

log = logging.getLogger(__name__)
_TOWN_TZ = ZoneInfo("Asia/Tokyo")  # the simulated town's households live in Japan

_COUNTS_SQL = """
SELECT (SELECT count(*) FROM events WHERE kind IN ('on', 'off', 'motion', 'open', 'close')),
       (SELECT count(*) FROM incidents WHERE status IN ('open', 'claimed')),
       (SELECT count(*) FROM events),
       (SELECT count(*) FROM dead_letters),
       (SELECT count(*) FROM gateways WHERE status = 'online'),
       (SELECT count(*) FROM devices WHERE household_id IS NULL),
       (SELECT count(*) FROM device_state WHERE power = 'on')
"""


class _Progress:
    def __init__(self) -> None:
        self.fleet: dict[str, Any] = {}
        self.db: tuple[int, ...] = (0,) * 7
        self.done = False
        self.report: Any = None
        self.error: BaseException | None = None


def _render(state: _Progress, households: int, started: float, services: str) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(justify="right", style="bold")
    table.add_column()
    f = state.fleet
    sim_now = f.get("sim_time")
    table.add_row("simulated time", as_datetime(sim_now).astimezone(_TOWN_TZ).strftime("%a %Y-%m-%d %H:%M JST") if sim_now else "starting…")
    table.add_row("homes", f"{households}  ({f.get('devices', '…')} devices, {state.db[4]} gateways online)")
    table.add_row("activity published", f"{f.get('activity_events_published', 0):,}")
    table.add_row("activity stored", f"{state.db[0]:,}   (all events {state.db[2]:,})")
    table.add_row("open incidents", f"{state.db[1]:,}")
    table.add_row("lights on now", f"{state.db[6]:,}")
    table.add_row("dead letters", f"{state.db[3]:,}")
    table.add_row("unpaired devices", f"{state.db[5]:,}")
    table.add_row("running for", f"{time.monotonic() - started:,.0f} s")
    status = "[green]simulation finished — the service keeps running; Ctrl-C to stop[/]" if state.done else "Ctrl-C to stop"
    return Panel(Group(table, status), title="[bold]見守り mimamori demo[/]", subtitle=services)


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
) -> dict[str, Any]:
    from app.demo import create_demo_accounts
    from firmware_sim.fleet import fleet_manifest, register_manifest, run_fleet
    from firmware_sim.offline import DEFAULT_START
    from mimamori.cli import run_stages

    console = console or Console()
    state = _Progress()
    # The live panel owns the terminal: logs go to a file, and the detector ticks twice per real
    # second of simulated time rather than every simulated minute.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "demo.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    if speed is not None:
        settings.detector_tick_s = max(settings.detector_tick_s, speed / 2)
    with services(settings, embedded_database="mimamori_demo", fresh_embedded_database=True) as svc:
        manifest = fleet_manifest(households, seed)
        with psycopg.connect(svc.database_url) as conn:
            register_manifest(conn, manifest)
            logins = create_demo_accounts(conn)
        # The service runs on the town's simulated clock, so the detector sees hours pass as the
        # residents live them.
        clock: Clock = SystemClock() if speed is None else ScaledClock(DEFAULT_START, speed)
        stage_threads = run_stages(settings, svc, stop, clock=clock)
        url = f"http://{settings.app_host}:{settings.app_port}/"
        console.print(f"[bold]web app[/]: {url}    logs: {log_path}")
        for login in logins:
            console.print("  " + login.line())
        workdir = Path(tempfile.mkdtemp(prefix="mimamori-demo-"))

        def drive() -> None:
            try:
                state.report = run_fleet(
                    svc.mqtt_url, households=households, days=days, speed=speed, seed=seed, workdir=workdir,
                    start=DEFAULT_START, progress=lambda snapshot: state.fleet.update(snapshot),
                )
                state.fleet.update(state.report.to_json())
            except BaseException as exc:  # shown to the user; the service keeps running
                state.error = exc
                log.exception("simulation failed")
            finally:
                state.done = True

        fleet_thread = threading.Thread(target=drive, name="fleet", daemon=True)
        fleet_thread.start()
        started = time.monotonic()
        with psycopg.connect(svc.database_url, autocommit=True) as conn, Live(console=console, refresh_per_second=4) as live:
            while not stop.is_set():
                state.db = tuple(conn.execute(_COUNTS_SQL).fetchone())  # type: ignore[arg-type]
                live.update(_render(state, households, started, svc.describe()))
                if state.done and exit_when_done and state.db[0] >= state.fleet.get("activity_events_published", 0):
                    break
                if not all(t.is_alive() for t in stage_threads):
                    console.print("[red]a service stage stopped unexpectedly[/]")
                    break
                stop.wait(0.5)
        stop.set()
        for t in stage_threads:
            t.join(30)
        if state.error:
            raise state.error
        return {"published": state.fleet.get("activity_events_published", 0), "stored": state.db[0],
                "open_incidents": state.db[1], "dead_letters": state.db[3]}
