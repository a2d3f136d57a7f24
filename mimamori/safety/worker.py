"""The safety-check worker: recognises answers in new events and sends the check's outbox.

- Recognition: about every ``poll_s`` (0.5 s), events received since the last look (with a
  short look-back for batches that committed late) of households in open checks are judged by
  ``safety.recognise`` (double toggle = safe; other activity = sign of life).
- Delivery: a side task sends the check's rows of the one outbox (blinks and messages), throttled
  per channel kind (``MIMAMORI_SAFETY_RATES``); woken by NOTIFY ``mimamori_safety`` when a check starts.

Nothing is kept in process memory but the event cursor (a restart re-judges everything of the
open checks once) and the throttle's tokens. Run with ``mimamori safety`` or inside ``mimamori serve``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import psycopg

from mimamori.alerts.channels import AlertSettings, AppriseSender, MqttBlinkSender, WebPushSender
from mimamori.alerts.line_settings import line_sender
from mimamori.kernel import outbox
from mimamori.kernel.clock import Clock
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.observability import register_readiness, unregister_readiness
from mimamori.kernel.signing import secret_key
from mimamori.kernel.worker import Worker
from mimamori.safety import engine, flows, records
from mimamori.safety.models import SafetySettings

log = logging.getLogger(__name__)


def run_safety_worker(settings: Settings, *, database_url: str, mqtt_url: MqttUrl | None, clock: Clock,
                      stop: threading.Event, safety_settings: SafetySettings | None = None) -> None:
    """Run until ``stop`` is set, on the one worker runtime (``mimamori.kernel.worker``): recognition as the main
    task, the outbox sender (the check's rows, throttled per channel kind) as a side task. ``mqtt_url``
    None: blinks cannot be sent (recorded as failed).
    """
    cfg = safety_settings or SafetySettings()
    alert_cfg = AlertSettings()
    factory = None
    worker_id = f"safety-{socket.gethostname()}-{os.getpid()}-{id(stop):x}"
    if mqtt_url is not None:

        def factory() -> MqttBlinkSender:
            return MqttBlinkSender(mqtt_url, f"mimamori-{worker_id}", protocol_preference=settings.mqtt_protocol)

    senders = flows.Senders(AppriseSender(), WebPushSender(alert_cfg.vapid_private_key, alert_cfg.vapid_subject,
                                                           alert_cfg.send_timeout_s), None, smtp_url=alert_cfg.smtp_url,
                            mqtt_factory=factory, sealer=outbox.LinkSealer(secret_key(settings)),
                            line=line_sender(settings, database_url=database_url, clock=clock))
    throttle = outbox.Throttle(dict(cfg.rates))
    keys = sorted(set(cfg.rates) | {"mqtt", "email", "webpush"})
    wake = threading.Event()

    def deliver(conn: psycopg.Connection, recover: bool) -> bool:
        return flows.deliver_one(conn, clock, senders, throttle, keys, worker_id, recover=recover)

    def idle_s() -> float:  # throttled kinds become free within 1/rate s: look again soon
        return 0.05 if throttle.blocked(keys, clock.now()) else cfg.poll_s

    last_pass = [0.0]  # monotonic time of the last completed recognition pass
    register_readiness("safety", lambda: time.monotonic() - last_pass[0] < max(10.0, 10 * cfg.poll_s))
    worker = Worker("safety", main=lambda halt: _recognition_loop(database_url, clock, cfg, wake, halt, last_pass),
                    side_tasks={"deliver": outbox.delivery_task(database_url, deliver, wake=wake, poll_s=cfg.poll_s,
                                                                idle_s=idle_s, application_name=f"mimamori {worker_id} deliver")},
                    outer_stop=stop, cleanup=[wake.set, senders.close, lambda: unregister_readiness("safety")])
    worker.run()


def _recognition_loop(database_url: str, clock: Clock, cfg: SafetySettings, wake: threading.Event, stop: threading.Event,
                      last_pass: list[float]) -> None:
    """The main task: judge new events of households in open checks; a NOTIFY (a check started, a
    household needs help) wakes the sender.
    """
    listen: psycopg.Connection | None = None
    conn: psycopg.Connection | None = None
    cursor: float | None = None
    try:
        while not stop.is_set():
            try:
                if listen is None or listen.closed:
                    listen = psycopg.connect(database_url, autocommit=True)
                    listen.execute(f"LISTEN {records.NOTIFY_CHANNEL}")
                if conn is None or conn.closed:
                    conn = psycopg.connect(database_url, autocommit=True)
                    cursor = None
                cursor, _changed = engine.recognise_new_events(conn, clock, cursor, lookback_s=cfg.lookback_s,
                                                                window_s=cfg.double_toggle_window_s)
                last_pass[0] = time.monotonic()
                for _note in listen.notifies(timeout=cfg.poll_s, stop_after=1):
                    wake.set()
            except psycopg.OperationalError:
                log.exception("safety worker: database error; reconnecting")
                for c in (listen, conn):
                    if c is not None:
                        c.close()
                listen = conn = None
                stop.wait(1.0)
            except Exception:
                log.exception("safety worker: unexpected error; retrying in a second")
                stop.wait(1.0)
    finally:
        for c in (listen, conn):
            if c is not None:
                c.close()
