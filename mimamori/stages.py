"""The table of service stages and how `serve` runs them: one thread per stage in this process, stopped
together when one dies. Part of the composition root, with the CLI, the demo and the runtime."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from rich.console import Console

from mimamori.kernel.clock import Clock, SystemClock
from mimamori.kernel.config import Settings

console = Console(stderr=True)


STAGES = ("ingest", "detector", "alerts", "safety", "app")


def stage_target(name: str, settings: Settings, svc: Any, stop: threading.Event, clock: Clock) -> Any:
    """The blocking entry point of one service stage, bound to its arguments."""
    import functools
    import socket

    if name == "ingest":
        from mimamori.ingest.consumer import run_ingest

        return functools.partial(run_ingest, settings, database_url=svc.database_url, mqtt_url=svc.mqtt_url, stop=stop)
    if name == "detector":
        from mimamori.detector.service import run_detector

        return functools.partial(
            run_detector, settings, database_url=svc.database_url, clock=clock, stop=stop, tick_s=settings.detector_tick_s
        )
    if name == "alerts":
        from mimamori.alerts.worker import run_alert_worker

        worker_id = settings.alerts_worker_id or f"{socket.gethostname()}-{os.getpid()}"
        return functools.partial(
            run_alert_worker, settings, database_url=svc.database_url, mqtt_url=svc.mqtt_url, clock=clock, stop=stop, worker_id=worker_id
        )
    if name == "safety":
        from mimamori.safety.worker import run_safety_worker

        return functools.partial(run_safety_worker, settings, database_url=svc.database_url, mqtt_url=svc.mqtt_url, clock=clock, stop=stop)
    if name == "app":
        from mimamori.app.main import run_app

        return functools.partial(
            run_app, settings, database_url=svc.database_url, host=settings.app_host, port=settings.app_port, stop=stop, clock=clock
        )
    raise ValueError(f"unknown stage {name!r}")


def run_stages(
    settings: Settings, svc: Any, stop: threading.Event, *, clock: Clock | None = None, stages: tuple[str, ...] = STAGES
) -> list[threading.Thread]:
    """Start the service stages in threads of this process (one place that knows them all).

    Ingest starts first, and the others once it has subscribed (or after ``INGEST_READY_S``): a broker
    keeps nothing for a shared subscription that has no member yet, so gateways that publish while the
    other stages are still being imported (seconds) would have their first events acknowledged and lost.
    """
    clock = clock or SystemClock()
    threads = []
    for name in stages:
        thread = threading.Thread(target=stage_target(name, settings, svc, stop, clock), name=name, daemon=True)
        thread.start()
        threads.append(thread)
        if name == "ingest":
            _wait_ready("ingest", stop, INGEST_READY_S)
    return threads


#: How long `serve` waits for ingest's subscription before starting the other stages anyway.
INGEST_READY_S = 30.0


def _wait_ready(name: str, stop: threading.Event, timeout: float) -> bool:
    from mimamori.kernel.observability import readiness

    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        if readiness()[1].get(name):
            return True
        stop.wait(0.05)
    return False


def serve_until_stopped(threads: list[threading.Thread], stop: threading.Event, settings: Settings) -> None:
    from mimamori.kernel.observability import start_ops_server

    ops = start_ops_server(settings)
    try:
        watch_stages(threads, stop)
    finally:
        if ops is not None:
            ops.close()


def watch_stages(threads: list[threading.Thread], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            console.print(f"[red]stage stopped unexpectedly: {', '.join(dead)}; shutting down[/]")
            stop.set()
    for t in threads:
        t.join(30)
