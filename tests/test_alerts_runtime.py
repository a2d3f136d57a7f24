"""The one worker runtime (``mimamori/kernel/worker.py``): side tasks supervised (one that dies stops the
worker, with a log line naming it), a clean stop on the caller's stop or a signal; and the alert
worker on it: a real worker process stops cleanly on SIGTERM, and an outbox sender that dies on a
real database error stops the worker instead of leaving it half alive.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from mimamori.alerts.channels import AlertSettings
from mimamori.alerts.worker import run_alert_worker
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.config import Settings
from mimamori.kernel.worker import SideTaskDiedError, Worker, stop_on_signals
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _idle(stop: threading.Event) -> None:
    while not stop.wait(0.01):
        pass


@pytest.mark.unit
def test_a_side_task_that_raises_stops_the_worker_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    cleaned: list[str] = []
    main_saw_stop = threading.Event()

    def main(stop: threading.Event) -> None:
        _idle(stop)
        main_saw_stop.set()

    def broken(_stop: threading.Event) -> None:
        raise RuntimeError("the disk is gone")

    worker = Worker("demo", main=main, side_tasks={"sender": broken, "other": _idle}, cleanup=[lambda: cleaned.append("x")])
    with caplog.at_level(logging.ERROR, logger="mimamori.kernel.worker"), pytest.raises(SideTaskDiedError, match="sender"):
        worker.run()
    assert main_saw_stop.is_set() and cleaned == ["x"]
    assert any("side task 'sender' died: RuntimeError: the disk is gone; stopping the worker" in r.getMessage()
               for r in caplog.records)


@pytest.mark.unit
def test_a_side_task_that_returns_while_running_stops_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    worker = Worker("demo", main=_idle, side_tasks={"quitter": lambda _stop: None})
    with caplog.at_level(logging.ERROR, logger="mimamori.kernel.worker"), pytest.raises(SideTaskDiedError, match="quitter: returned"):
        worker.run()


@pytest.mark.unit
def test_the_callers_stop_ends_the_worker_cleanly_and_a_side_death_does_not_stop_the_caller() -> None:
    outer = threading.Event()
    ran = []
    worker = Worker("demo", main=_idle, side_tasks={"a": _idle, "b": _idle}, outer_stop=outer, cleanup=[lambda: ran.append(1)])
    thread = threading.Thread(target=worker.run)
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()
    outer.set()
    thread.join(5)
    assert not thread.is_alive() and ran == [1] and worker.died is None
    # a worker whose side task dies stops itself, not the stages sharing the caller's stop (mimamori serve)
    shared = threading.Event()
    dying = Worker("demo", main=_idle, side_tasks={"x": lambda _s: None}, outer_stop=shared)
    with pytest.raises(SideTaskDiedError):
        dying.run()
    assert not shared.is_set()


@pytest.mark.unit
def test_a_signal_stops_the_worker() -> None:
    stop = threading.Event()
    worker = Worker("demo", main=_idle, side_tasks={"a": _idle}, stop=stop)
    threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    with stop_on_signals(stop):
        worker.run()
    assert stop.is_set()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


@pytest.mark.integration
def test_an_alert_worker_process_stops_cleanly_on_sigterm(pg_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen([sys.executable, "-m", "mimamori.alerts.worker", "--database-url", pg_url, "--worker-id", "sig"],
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + 30
        while not any("worker started" in line for line in lines):
            assert time.monotonic() < deadline, lines
            lines.append(proc.stderr.readline())
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0
    assert "received SIGTERM: stopping" in rest and "alerts sig worker stopped" in rest


@pytest.mark.integration
def test_an_outbox_sender_dying_on_a_real_error_stops_the_alert_worker(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("DROP VIEW alert_deliveries, safety_deliveries")
        c.execute("ALTER TABLE outbox RENAME TO outbox_elsewhere")  # a schema this worker does not know
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_alert_worker(Settings(), database_url=pg_url, mqtt_url=None, clock=ManualClock(), stop=stop, worker_id="t",
                             alert_settings=AlertSettings(poll_s=0.05, delivery_threads=2))
        except BaseException as exc:  # noqa: BLE001 - whatever ends the worker is what the caller sees
            errors.append(exc)

    with caplog.at_level(logging.ERROR, logger="mimamori.kernel.worker"):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(30)
    assert not thread.is_alive()
    assert not stop.is_set()  # the caller's stop (shared in `mimamori serve`) was not touched
    assert len(errors) == 1 and isinstance(errors[0], SideTaskDiedError) and "deliver-" in str(errors[0])
    assert "UndefinedTable" in str(errors[0])
    wait_for(lambda: any("stopping the worker" in r.getMessage() for r in caplog.records), what="the log line")
