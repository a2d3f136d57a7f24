"""The alert worker: takes on new incidents, advances due escalations, sends the outbox.

Nothing is scheduled in process memory: every escalation's next step is ``alert_escalations.
next_step_at`` and every send is an ``outbox`` row, both picked with FOR UPDATE SKIP
LOCKED (incident rows: FOR NO KEY UPDATE ... SKIP LOCKED). So any number of workers can run side by
side, and a restarted (even SIGKILLed) worker resumes where the last one was.

Wake-ups: LISTEN on ``mimamori_incident_opened`` (a trigger fires it when an incident opens or is
closed elsewhere) and ``mimamori_alert_deliveries`` (new outbox rows), plus a short poll
(``MIMAMORI_ALERTS_POLL_S``, 0.2 s) for waits that come due.

Run in-process with ``run_alert_worker(...)`` (``mimamori serve`` / ``mimamori alerts``) or as
``python -m mimamori.alerts.worker --database-url ... [--mqtt-url ...]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from typing import Any

import psycopg

from mimamori.alerts import daily_notes, engine, flows, metrics, records
from mimamori.alerts.channels import AlertSettings, AppriseSender, MqttBlinkSender, WebPushSender
from mimamori.alerts.line_settings import line_sender
from mimamori.kernel import observability, outbox
from mimamori.kernel.clock import Clock, ScaledClock, SystemClock
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.signing import secret_key
from mimamori.kernel.worker import Worker, stop_on_signals

log = logging.getLogger(__name__)

#: How many escalations one pass takes on before it looks at its notifications again.
BATCH = 200
#: Escalations per transaction (each in its own savepoint): fewer commits under a burst.
BATCH_STEP = 10


def _engine_pass(conn: psycopg.Connection, clock: Clock, worker_id: str, wake: threading.Event, app_url: str = "",
                 sealer: outbox.LinkSealer | None = None) -> int:
    """Adopt new incidents and advance due escalations; returns how many it handled. Wakes the
    delivery threads after every committed batch so sends start while the pass goes on.
    """
    done = daily_notes.send_due(conn, clock.now())  # cheap when none is due: one query
    if done:
        wake.set()
    while done < BATCH:
        adopted = engine.adopt_new(conn, clock, worker_id, limit=BATCH_STEP, app_url=app_url, sealer=sealer)
        stepped = engine.step_due(conn, clock, worker_id, limit=BATCH_STEP, app_url=app_url, sealer=sealer)
        metrics.STEPS.labels("adopt").inc(adopted)
        metrics.STEPS.labels("step").inc(stepped)
        n = adopted + stepped
        if n == 0:
            break
        wake.set()
        done += n
    return done


def run_alert_worker(settings: Settings, *, database_url: str, mqtt_url: MqttUrl | None, clock: Clock,
                     stop: threading.Event, worker_id: str, alert_settings: AlertSettings | None = None) -> None:
    """Run until ``stop`` is set, on the one worker runtime (``mimamori.kernel.worker``): the engine loop as the
    main task, ``MIMAMORI_ALERTS_DELIVERY_THREADS`` outbox senders as side tasks (if one dies, the worker
    stops with a log line naming it). ``mqtt_url`` None: resident checks cannot blink (the sends fail
    and are recorded as such). Settings of the engine come from ``MIMAMORI_ALERTS_*`` (``AlertSettings``).
    """
    cfg = alert_settings or AlertSettings()
    if not settings.public_url:
        log.warning("MIMAMORI_PUBLIC_URL is not set: links in messages to residents point to %s, which a phone "
                    "elsewhere cannot open", settings.app_url())
    if not cfg.smtp_url:
        log.warning("MIMAMORI_ALERTS_SMTP_URL is not set: e-mail addresses people registered cannot be sent to")
    mqtt_sender = None
    if mqtt_url is not None:
        mqtt_sender = MqttBlinkSender(mqtt_url, f"mimamori-alerts-{worker_id}", protocol_preference=settings.mqtt_protocol,
                                      confirm_s=cfg.blink_confirm_s)
    sealer = outbox.LinkSealer(secret_key(settings))
    line = line_sender(settings, database_url=database_url, clock=clock)
    senders = flows.Senders(AppriseSender(), WebPushSender(cfg.vapid_private_key, cfg.vapid_subject, cfg.send_timeout_s),
                            mqtt_sender, smtp_url=cfg.smtp_url, sealer=sealer, line=line)
    wake = threading.Event()
    throttle = outbox.Throttle.per_minute(cfg.rates_per_minute) if cfg.rates_per_minute else None

    def deliver(conn: psycopg.Connection, recover: bool) -> bool:
        return flows.deliver_one(conn, clock, senders, worker_id, recover=recover, throttle=throttle)

    senders_tasks = {f"deliver-{i}": outbox.delivery_task(database_url, deliver, wake=wake, poll_s=cfg.poll_s,
                                                          application_name=f"mimamori alerts {worker_id} deliver-{i}")
                     for i in range(max(1, cfg.delivery_threads))}
    alive = {"at": time.monotonic()}
    # ready while the engine loop keeps completing passes (it polls every poll_s at the latest)
    observability.register_readiness("alerts", lambda: time.monotonic() - alive["at"] < max(30.0, 20 * cfg.poll_s))
    worker = Worker(f"alerts {worker_id}", main=lambda halt: _engine_loop(database_url, clock, worker_id, cfg, wake, halt, alive,
                                                                         settings.app_url(), sealer),
                    side_tasks=senders_tasks, outer_stop=stop,
                    cleanup=[wake.set, senders.close, lambda: observability.unregister_readiness("alerts")])
    worker.run()


def _engine_loop(database_url: str, clock: Clock, worker_id: str, cfg: AlertSettings, wake: threading.Event,
                 stop: threading.Event, alive: dict[str, float], app_url: str, sealer: outbox.LinkSealer) -> None:
    """The main task: adopt new incidents and advance due escalations, woken by LISTEN or a short poll."""
    listen: psycopg.Connection | None = None
    conn: psycopg.Connection | None = None
    refreshed = 0.0
    try:
        while not stop.is_set():
            try:
                if listen is None or listen.closed:
                    listen = psycopg.connect(database_url, autocommit=True)
                    listen.execute(f"LISTEN {records.INCIDENTS_CHANNEL}")
                    listen.execute(f"LISTEN {records.DELIVERIES_CHANNEL}")
                if conn is None or conn.closed:
                    conn = psycopg.connect(database_url, autocommit=True)
                if time.monotonic() - refreshed >= cfg.metrics_every_s:
                    metrics.refresh(conn, clock.now())
                    refreshed = time.monotonic()
                busy = _engine_pass(conn, clock, worker_id, wake, app_url, sealer)
                alive["at"] = time.monotonic()
                if busy:
                    continue
                for note in listen.notifies(timeout=cfg.poll_s, stop_after=1):
                    if note.channel == records.DELIVERIES_CHANNEL:
                        wake.set()
            except psycopg.OperationalError:
                log.exception("alert worker: database error; reconnecting")
                for c in (listen, conn):
                    if c is not None:
                        c.close()
                listen = conn = None
                stop.wait(1.0)
            except Exception:  # keep escalating other incidents; this pass is retried
                log.exception("alert worker: unexpected error; retrying in a second")
                stop.wait(1.0)
    finally:
        for c in (listen, conn):
            if c is not None:
                c.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m mimamori.alerts.worker``: one worker process (tests run it as a subprocess to SIGKILL it)."""
    parser = argparse.ArgumentParser(prog="python -m mimamori.alerts.worker")
    parser.add_argument("--database-url", default=os.environ.get("MIMAMORI_DATABASE_URL"))
    parser.add_argument("--mqtt-url", default=os.environ.get("MIMAMORI_MQTT_URL"))
    parser.add_argument("--worker-id", default=f"w{os.getpid()}")
    parser.add_argument("--speed", type=float, default=None, help="simulated time runs this many times faster")
    parser.add_argument("--sim-start", type=float, default=None, help="simulated epoch at --anchor (real epoch)")
    parser.add_argument("--anchor", type=float, default=None, help="real epoch when the simulated clock read --sim-start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("MIMAMORI_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.database_url:
        parser.error("--database-url (or MIMAMORI_DATABASE_URL) is required")
    clock: Any = SystemClock()
    if args.speed:
        # A scaled clock continuous across restarts: its reading depends only on the real time.
        sim_start = args.sim_start if args.sim_start is not None else time.time()
        anchor = args.anchor if args.anchor is not None else time.time()
        clock = ScaledClock(sim_start + (time.time() - anchor) * args.speed, args.speed)
    stop = threading.Event()
    with stop_on_signals(stop):
        run_alert_worker(Settings(), database_url=args.database_url,
                         mqtt_url=MqttUrl.parse(args.mqtt_url) if args.mqtt_url else None,
                         clock=clock, stop=stop, worker_id=args.worker_id)


if __name__ == "__main__":
    main()
