"""The safety-check worker: recognises answers in new events and sends the check's outbox.

- Recognition: about every ``poll_s`` (0.5 s), events received since the last look (with a
  short look-back for batches that committed late) of households in open checks are judged by
  ``safety.recognise`` (double toggle = safe; other activity = sign of life).
- Delivery: a thread sends blinks and messages from ``safety_deliveries``, throttled per channel
  kind (``MIMAMORI_SAFETY_RATES``); woken by NOTIFY ``mimamori_safety`` when a check starts.

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

from alerts.channels import AlertSettings, AppriseSender, MqttBlinkSender, WebPushSender
from mimamori.clock import Clock
from mimamori.config import Settings
from mimamori.mqtt import MqttUrl
from mimamori.observability import register_readiness, unregister_readiness
from safety import flows, service
from safety.models import SafetySettings
from safety.throttle import Throttle

log = logging.getLogger(__name__)


def _delivery_loop(database_url: str, clock: Clock, senders: flows.Senders, throttle: Throttle, keys: list[str],
                   wake: threading.Event, stop: threading.Event, poll_s: float) -> None:
    conn: psycopg.Connection | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(database_url, autocommit=True)
            while not stop.is_set() and flows.deliver_one(conn, clock, senders, throttle, keys):
                pass
        except psycopg.OperationalError:
            log.exception("safety delivery: database error; reconnecting")
            conn = None
            stop.wait(1.0)
            continue
        except Exception:
            log.exception("safety delivery: unexpected error; retrying in a second")
            stop.wait(1.0)
            continue
        # throttled kinds become free within 1/rate s: look again soon
        if wake.wait(min(poll_s, 0.05 if throttle.blocked(keys, clock.now()) else poll_s)):
            wake.clear()
    if conn is not None:
        conn.close()


def run_safety_worker(settings: Settings, *, database_url: str, mqtt_url: MqttUrl | None, clock: Clock,
                      stop: threading.Event, safety_settings: SafetySettings | None = None) -> None:
    """Run until ``stop`` is set. ``mqtt_url`` None: blinks cannot be sent (recorded as failed)."""
    cfg = safety_settings or SafetySettings()
    alert_cfg = AlertSettings()
    factory = None
    if mqtt_url is not None:
        client_id = f"mimamori-safety-{socket.gethostname()}-{os.getpid()}-{id(stop):x}"

        def factory() -> MqttBlinkSender:
            return MqttBlinkSender(mqtt_url, client_id, protocol_preference=settings.mqtt_protocol)

    senders = flows.Senders(AppriseSender(), WebPushSender(alert_cfg.vapid_private_key, alert_cfg.vapid_subject,
                                                           alert_cfg.send_timeout_s), None, smtp_url=alert_cfg.smtp_url,
                            mqtt_factory=factory)
    throttle = Throttle(dict(cfg.rates))
    keys = sorted(set(cfg.rates) | {"mqtt", "email", "webpush"})
    wake = threading.Event()
    deliver = threading.Thread(target=_delivery_loop, name="safety-deliver",
                               args=(database_url, clock, senders, throttle, keys, wake, stop, cfg.poll_s), daemon=True)
    deliver.start()
    listen: psycopg.Connection | None = None
    conn: psycopg.Connection | None = None
    cursor: float | None = None
    last_pass = [0.0]  # monotonic time of the last completed recognition pass
    register_readiness("safety", lambda: time.monotonic() - last_pass[0] < max(10.0, 10 * cfg.poll_s))
    log.info("safety worker started")
    try:
        while not stop.is_set():
            try:
                if listen is None or listen.closed:
                    listen = psycopg.connect(database_url, autocommit=True)
                    listen.execute(f"LISTEN {service.NOTIFY_CHANNEL}")
                if conn is None or conn.closed:
                    conn = psycopg.connect(database_url, autocommit=True)
                    cursor = None
                cursor, _changed = service.recognise_new_events(conn, clock, cursor, lookback_s=cfg.lookback_s,
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
        unregister_readiness("safety")
        wake.set()
        deliver.join(timeout=15)
        for c in (listen, conn):
            if c is not None:
                c.close()
        if senders.mqtt is not None:
            senders.mqtt.close()
        log.info("safety worker stopped")
