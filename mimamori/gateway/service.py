"""``mimamori gateway``: a home gateway process. It bridges the home's own broker (native devices,
Zigbee2MQTT, Tasmota, Shelly) to the service through one ``Gateway`` uplink (``mimamori/gateway/uplink.py``),
and turns the service's commands into the devices' own language (``mimamori/gateway/downlink.py``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from mimamori.kernel import mqtt, observability
from mimamori.kernel.clock import Clock, SystemClock, now_ms
from mimamori.kernel.config import Settings
from mimamori.kernel.protocol import Command

from . import adapters, downlink, metrics
from .uplink import Gateway

__all__ = ["Gateway", "run_gateway"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# `mimamori gateway`
# ---------------------------------------------------------------------------------------------


def _uplink_protocol(settings: Settings) -> int | None:
    return {"auto": None, "5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}[settings.mqtt_protocol]


def run_gateway(
    settings: Settings,
    *,
    gateway_id: str,
    local_url: str,
    outbox_path: Path,
    stop: threading.Event | None = None,
    clock: Clock | None = None,
    layout: adapters.Layout = adapters.DEFAULT_LAYOUT,
    never_switch: Collection[str] = (),
    blink_step_s: float = downlink.STEP_S,
) -> None:
    """Bridge the home's broker at ``local_url`` to the service until SIGINT/SIGTERM (or ``stop``
    is set, for embedding and tests), then stop gracefully.

    The outbox is fsynced on every commit (``synchronous=FULL``): a home gateway must survive
    power cuts, and a home's event rate makes the fsync cost irrelevant.
    """
    if not settings.mqtt_url:
        raise ValueError("the gateway needs the service's broker: set MIMAMORI_MQTT_URL (mqtt://host:1883)")
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    local_url_parsed = mqtt.MqttUrl.parse(local_url)
    gateway = Gateway(
        gateway_id,
        mqtt.url_from_settings(settings),  # credentials and CA file may come from the settings
        outbox_path,
        clock=clock or SystemClock(),
        protocol=_uplink_protocol(settings),
        heartbeat_s=settings.gateway_heartbeat_s,
        settle_s=settings.gateway_settle_s,
        synchronous="FULL",
        layout=layout,
    )
    subscribed: set[str] = set()
    # A persistent local session: the home broker queues device messages while we restart.
    local = mqtt.make_client(local_url_parsed, f"mimamori-gw-{gateway_id}-local", protocol=mqtt.MQTTv311, clean_start=False)

    def on_connect(client: paho.Client, _userdata: object, _flags: Any, reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("local broker refused connection: %s", reason_code)
            return
        subscribed.clear()
        subscribed.update(gateway.local_subscriptions())
        client.subscribe([(t, 1) for t in sorted(subscribed)])
        log.info("gateway %s listening on %s", gateway_id, local_url_parsed)

    def on_message(client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        # Returns after the outbox commit; paho sends the local PUBACK after this callback.
        gateway.handle_local(message.topic, message.payload, bool(message.retain))
        if message.topic.endswith("/bridge/state"):  # a Zigbee2MQTT base topic nobody configured?
            new = [t for t in gateway.local_subscriptions() if t not in subscribed]
            if new:
                subscribed.update(new)
                client.subscribe([(t, 1) for t in new])
                log.info("gateway %s: found Zigbee2MQTT at %s", gateway_id, ", ".join(new))

    timers: list[threading.Timer] = []

    def later(delay_s: float, fn: Callable[[], None]) -> None:
        timer = threading.Timer(delay_s, fn)
        timer.daemon = True
        timers[:] = [t for t in timers if t.is_alive()] + [timer]
        timer.start()

    def check_echo(device_id: str, dialect: str) -> None:
        ok = downlink.confirmed(device_id, gateway.memory_snapshot())
        gateway.count("blinks_confirmed" if ok else "blinks_unconfirmed")
        log.info("gateway %s: blink of %s %s", gateway_id, device_id, "confirmed by its state reports" if ok else "sent, not confirmed")
        gateway.publish_ack(device_id, {"cmd": "blink", "confirmed": ok, "dialect": dialect})

    def on_command(device_id: str, command: Command) -> None:
        # In the device's own language (downlink.py); native devices get the command as it came.
        plan = downlink.plan(device_id, command, gateway.memory_snapshot(), now_ms=now_ms(gateway.clock),
                             never_switch=never_switch, step_s=blink_step_s)
        if plan.refused is not None:
            gateway.count("commands_refused")
            log.warning("gateway %s: not sending %s to %s (%s): %s", gateway_id, command.cmd, device_id, plan.dialect, plan.refused)
            gateway.publish_ack(device_id, {"cmd": command.cmd, "confirmed": False, "dialect": plan.dialect, "refused": plan.refused})
            return
        gateway.remember(plan.memory)
        for step in plan.steps:
            if step.at_s <= 0:
                local.publish(step.topic, step.payload, qos=1)
            else:
                later(step.at_s, lambda step=step: local.publish(step.topic, step.payload, qos=1))
        if plan.dialect != "native":
            later(plan.duration_s + 3.0, lambda: check_echo(device_id, plan.dialect))

    gateway.on_command = on_command
    local.on_connect = on_connect
    local.on_message = on_message
    local.reconnect_delay_set(1, 30)
    # /metrics, /healthz and /readyz (ready = connected to the service's broker) on MIMAMORI_OPS_PORT.
    observability.register_readiness("gateway", metrics.all_connected)
    ops = observability.start_ops_server(settings)
    try:
        gateway.start()
        mqtt.connect(local, local_url_parsed, asynchronous=True)
        local.loop_start()
        stop.wait()
        log.info("gateway %s stopping", gateway_id)
    finally:
        for timer in timers:
            timer.cancel()
        local.disconnect()
        local.loop_stop()
        sock = local.socket()  # loop_stop may win the race against the DISCONNECT write
        if sock is not None:
            sock.close()
        gateway.stop()
        observability.unregister_readiness("gateway")
        if ops is not None:
            ops.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
