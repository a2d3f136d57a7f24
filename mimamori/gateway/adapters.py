"""Normalise local-link MQTT messages into ``Reading``s. Pure functions: no I/O, no clock.

``normalise(topic, payload, now_ms=..., memory=..., retained=..., layout=...)`` asks each dialect in
``gateway.dialects`` (native mimamori, Zigbee2MQTT, Tasmota, Shelly Gen2+, Shelly Gen1) in turn; each
module's docstring lists the topics and payloads it understands and where they are documented.

Decisions (the detector relies on them):

- Only a *change* of a remembered state is activity: Z2M, Tasmota and Shelly republish their state
  on every attribute change, periodically and in answer to polls.
- A device's first report (the gateway does not know its state yet) is a real change unless the
  message says it is a sync: the retained flag, an old device timestamp (Z2M ``last_seen``), or a
  boot seconds before (Tasmota ``LWT Online``/small ``UptimeSec``, Shelly ``online``/``announce``/
  ``NotifyFullStatus``, Z2M ``bridge/state online``). So a fresh gateway (a new install, a lost
  outbox) never drops a real first switch. Periodic reports (Tasmota ``STATE``/``SENSOR``, Shelly
  ``NotifyFullStatus``) are heartbeats and never a first activity.
- Presses (Z2M ``action``, Shelly ``*_push``/Gen1 ``input_event``, Tasmota ``ButtonN``) and motion
  are ``motion``: a point activity (``on`` without ``off`` would look like a light left on).
- Availability (Z2M ``/availability`` and ``bridge/state``, Tasmota ``LWT``, Shelly ``online``):
  ``online`` is a ``heartbeat``, ``offline`` a ``fault``, both only on change. A fault is device
  health for the coordinator, never a welfare alert. Z2M ``bridge/state offline``
  faults every Zigbee device the gateway knows behind that bridge.
- State reports within seconds of our own blink (``downlink``) are its echo, not the resident.
- Time: native and Shelly Gen2 messages carry the device's time; the others use ``now_ms``.

Device ids satisfy ``protocol.valid_id`` (``device_id_for``): ``z2m-<friendly_name>[.<endpoint>]``,
``tasmota-<topic>[.<relay>]``, Shelly ``<prefix without shellies/>[.<n>|.input<n>]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from .dialects import DIALECTS, zigbee2mqtt
from .dialects.base import (
    DEFAULT_LAYOUT,
    IGNORED_UNKNOWN,
    MAX_LOCAL_PAYLOAD,
    Context,
    Layout,
    Outcome,
    Reading,
    Rejection,
    Summary,
    device_id_for,
    reject,
)
from .dialects.native import PREFIX as NATIVE_PREFIX

__all__ = [
    "DEFAULT_LAYOUT", "LOCAL_SUBSCRIPTIONS", "NATIVE_PREFIX", "Z2M_PREFIX", "Layout", "Outcome", "Reading",
    "Rejection", "Summary", "device_id_for", "normalise",
]

Z2M_PREFIX: Final = "zigbee2mqtt/"

#: What ``run_gateway`` subscribes to on the home's broker with the default layout.
LOCAL_SUBSCRIPTIONS: Final = DEFAULT_LAYOUT.subscriptions()


def normalise(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    memory: Mapping[str, str],
    retained: bool = False,
    layout: Layout = DEFAULT_LAYOUT,
    assume_known: bool = False,
    clock_trusted: bool = True,
) -> Outcome:
    """Translate one local message. Never raises: anything unexpected becomes a ``Rejection``."""
    try:
        if len(payload) > MAX_LOCAL_PAYLOAD:
            return reject("oversized", f"{len(payload)} bytes")
        ctx = Context(now_ms, memory, retained, layout, assume_known, clock_trusted)
        for dialect in DIALECTS:
            outcome = dialect.handle(topic, payload, ctx)
            if outcome is not None:
                return outcome
        return zigbee2mqtt.guess(topic, payload, ctx) or IGNORED_UNKNOWN
    except Exception as exc:  # noqa: BLE001 - an adapter bug must not take the gateway loop down
        return reject("adapter_error", f"{type(exc).__name__}: {exc}")
