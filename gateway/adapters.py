"""Normalise local-link MQTT messages into ``Reading``s. Pure functions: no I/O, no clock.

``normalise(topic, payload, now_ms=..., memory=...)`` recognises four local dialects:

- **native** mimamori devices: ``mimamori/local/<device_id>/event``, payload = ``protocol.encode_event``;
  the device's own ``seq`` and ``ts`` are kept.
- **Zigbee2MQTT**: ``zigbee2mqtt/<friendly_name>`` with the device's full state as JSON
  (``state``, ``occupancy``, ``contact``, ``action``, ``brightness`` ...), and
  ``zigbee2mqtt/<friendly_name>/availability`` (``online``/``offline``, or ``{"state": "online"}``
  since Z2M 1.x "new" availability payloads). ``zigbee2mqtt/bridge/...`` is ignored.
- **Tasmota**: ``stat/<topic>/POWER[n]`` (``ON``/``OFF``), ``stat/<topic>/RESULT``
  (``{"POWER1": "ON"}``), ``tele/<topic>/STATE`` (periodic, carries ``POWER[n]``) and
  ``tele/<topic>/LWT`` (``Online``/``Offline``).
- **Shelly Gen2+**: ``<shelly-id>/events/rpc`` JSON-RPC notifications (``NotifyStatus``,
  ``NotifyFullStatus``, ``NotifyEvent``) and ``<shelly-id>/online`` (``true``/``false``).

Decisions (the detector relies on them):

- Z2M and Tasmota publish their whole state repeatedly (on every attribute change, periodically,
  in answer to polls). Only a *change* of a remembered state is activity. The first observation
  of a device is a state sync, not activity: reporting it would invent activity after every
  gateway restart, and false activity can hide a real silence, which is the dangerous direction
  for a watch-over service. (The gateway persists the memory, so a restart loses nothing.)
  Exception: ``occupancy: true`` is motion whenever the previous value was not ``true``, first
  observation included: a sensor only reports it after detecting someone.
- A button press (Shelly ``*_push``, Z2M ``action``) is a point activity and becomes ``motion``:
  ``on`` without a matching ``off`` would look to the detector like a light left on.
- Availability (Z2M ``/availability``, Tasmota ``LWT``, Shelly ``/online``): ``online`` is a
  ``heartbeat``, ``offline`` a ``fault``, both only on change. A fault is device health for the
  coordinator, never a welfare alert (DESIGN.md).
- Periodic state reports (Tasmota ``tele/STATE``, Shelly ``NotifyFullStatus``) are heartbeats.
- Time: native and Shelly messages carry the device's time; Z2M and Tasmota payloads carry none
  usable (Tasmota's ``Time`` is local time without a zone), so the gateway's ``now_ms`` is used.
  A Shelly time missing or outside the protocol's window (clock not yet synced) falls back to it.

Device ids must satisfy ``protocol.valid_id``: names are sanitised (any character outside
``[A-Za-z0-9._:-]`` becomes ``-``, ``/`` becomes ``.``); non-ASCII names and names too long also
get a short hash of the original name (see ``device_id_for``).
Z2M ids are ``z2m-<friendly_name>``; when no friendly name is configured Z2M uses the IEEE address
as the name, so the id is ``z2m-0x...``. The friendly name, not a payload's ``device.ieeeAddr``,
is used for every device because availability messages carry no payload device information and
both must map to the same id. Tasmota: ``tasmota-<topic>`` (relay 1) and ``tasmota-<topic>.<n>``
(relay n >= 2). Shelly: ``<src>`` for ``switch:0``/``light:0``, ``<src>.<n>`` for output n >= 1,
``<src>.input<n>`` for input presses.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mimamori import protocol

NATIVE_PREFIX: Final = "mimamori/local/"
Z2M_PREFIX: Final = "zigbee2mqtt/"

#: What ``run_gateway`` subscribes to on the home's broker.
LOCAL_SUBSCRIPTIONS: Final = (
    "mimamori/local/#",
    "zigbee2mqtt/#",
    "stat/#",
    "tele/#",
    "+/events/rpc",
    "+/online",
)

MAX_LOCAL_PAYLOAD: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Reading:
    """One normalised observation of a device. ``seq`` is None when the device does not number its
    events (the outbox then assigns one)."""

    device_id: str
    kind: str
    ts_ms: int
    value: float | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # short, stable: "bad_json", "unrecognised_topic", ...
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one local message means. Empty ``readings`` and no ``rejection``: recognised, nothing to
    report (a repeated state, a bridge message). ``memory_updates`` are to be merged into the
    caller's memory (and persisted) whether or not readings were produced."""

    readings: tuple[Reading, ...] = ()
    rejection: Rejection | None = None
    memory_updates: dict[str, str] = field(default_factory=dict)


IGNORED: Final = Outcome()


def _reject(reason: str, detail: str = "") -> Outcome:
    return Outcome(rejection=Rejection(reason, detail[:200]))


def normalise(topic: str, payload: bytes, *, now_ms: int, memory: Mapping[str, str]) -> Outcome:
    """Translate one local message. Never raises: anything unexpected becomes a ``Rejection``."""
    try:
        if len(payload) > MAX_LOCAL_PAYLOAD:
            return _reject("oversized", f"{len(payload)} bytes")
        if topic.startswith(NATIVE_PREFIX):
            return native(topic, payload)
        if topic.startswith(Z2M_PREFIX):
            return zigbee2mqtt(topic, payload, now_ms=now_ms, memory=memory)
        if topic.startswith(("stat/", "tele/")):
            return tasmota(topic, payload, now_ms=now_ms, memory=memory)
        if topic.endswith("/events/rpc") or topic.endswith("/online"):
            return shelly(topic, payload, now_ms=now_ms, memory=memory)
        return _reject("unrecognised_topic", topic)
    except Exception as exc:  # an adapter bug must not take the gateway loop down
        return _reject("adapter_error", f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._:\-]")


def device_id_for(prefix: str, name: str) -> str:
    """A valid protocol id from a foreign name: ``<prefix><name>`` sanitised, at most 64 chars.

    ``/`` becomes ``.``, other ASCII outside ``[A-Za-z0-9._:-]`` becomes ``-``. Non-ASCII names
    (``寝室ライト``) would all collapse to dashes, so they also get a short hash of the original,
    as do names cut to fit 64 characters.
    """
    raw = f"{prefix}{name}"
    clean = _UNSAFE.sub("-", raw.replace("/", "."))
    if not clean[:1].isalnum():
        clean = "x" + clean
    if len(clean) > 64 or not raw.isascii():
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        clean = f"{clean[:55]}-{digest}"
    return clean


def _json_object(payload: bytes) -> dict[str, Any] | Outcome:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        return _reject("bad_json", str(exc))
    if type(obj) is not dict:
        return _reject("not_an_object", type(obj).__name__)
    return obj


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", errors="replace").strip()


class _Changes:
    """Collects readings and memory updates for one message, comparing against ``memory``."""

    def __init__(self, memory: Mapping[str, str]) -> None:
        self.memory = memory
        self.updates: dict[str, str] = {}
        self.readings: list[Reading] = []

    def previous(self, key: str) -> str | None:
        return self.updates.get(key, self.memory.get(key))

    def remember(self, key: str, value: str) -> tuple[bool, str | None]:
        """Store ``value``; return (changed, previous)."""
        prev = self.previous(key)
        if prev != value:
            self.updates[key] = value
        return prev != value, prev

    def state_change(self, device_id: str, field_name: str, new: str, kind: str, ts_ms: int, value: float | None = None) -> None:
        """``kind`` is reported when the remembered state changed and was known before."""
        changed, prev = self.remember(f"{device_id}|{field_name}", new)
        if changed and prev is not None:
            self.readings.append(Reading(device_id, kind, ts_ms, value))

    def availability(self, device_id: str, online: bool, ts_ms: int) -> None:
        changed, _ = self.remember(f"{device_id}|avail", "online" if online else "offline")
        if changed:
            self.readings.append(Reading(device_id, "heartbeat" if online else "fault", ts_ms))

    def add(self, reading: Reading) -> None:
        self.readings.append(reading)

    def outcome(self) -> Outcome:
        return Outcome(tuple(self.readings), None, self.updates)


def _on_off(value: object) -> bool | None:
    """``ON``/``OFF`` (any case), ``1``/``0``, booleans; anything else is unknown."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().upper()
        if v in ("ON", "1", "TRUE"):
            return True
        if v in ("OFF", "0", "FALSE"):
            return False
    return None


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# ---------------------------------------------------------------------------------------------
# Native mimamori devices
# ---------------------------------------------------------------------------------------------


def native(topic: str, payload: bytes) -> Outcome:
    parts = topic.split("/")
    if len(parts) != 4 or parts[3] != "event":
        return _reject("unrecognised_topic", topic)
    device_id = parts[2]
    if not protocol.valid_id(device_id):
        return _reject("bad_device_id", device_id)
    try:
        event = protocol.decode_event(payload, topic_device_id=device_id)
    except protocol.ProtocolError as exc:
        return _reject(exc.reason, exc.detail)
    return Outcome((Reading(event.device_id, event.kind, event.ts_ms, event.value, event.seq),))


# ---------------------------------------------------------------------------------------------
# Zigbee2MQTT
# ---------------------------------------------------------------------------------------------

_Z2M_COMMAND_SUFFIXES: Final = frozenset({"set", "get"})


def zigbee2mqtt(topic: str, payload: bytes, *, now_ms: int, memory: Mapping[str, str]) -> Outcome:
    name = topic[len(Z2M_PREFIX):]
    if not name or name == "bridge" or name.startswith("bridge/"):
        return IGNORED
    head, _, last = name.rpartition("/")
    if head and last in _Z2M_COMMAND_SUFFIXES:
        return IGNORED  # requests to the device, not reports from it
    if head and last == "availability":
        return _z2m_availability(head, payload, now_ms, memory)
    if "/set/" in name or "/get/" in name:
        return IGNORED  # zigbee2mqtt/<name>/set/<attribute>
    obj = _json_object(payload)
    if isinstance(obj, Outcome):
        return obj
    device_id = device_id_for("z2m-", name)
    out = _Changes(memory)
    for key, raw in obj.items():
        # Multi-endpoint devices report state_l1, state_l2 ... (one relay each).
        if key == "state" or key.startswith("state_"):
            on = _on_off(raw)
            if on is None:
                continue
            target = device_id if key == "state" else device_id_for("", f"{device_id}.{key[6:]}")
            brightness = _number(obj.get("brightness")) if key == "state" else None
            out.state_change(target, "state", "on" if on else "off", "on" if on else "off", now_ms, brightness if on else None)
    occupancy = obj.get("occupancy")
    if isinstance(occupancy, bool):
        changed, prev = out.remember(f"{device_id}|occupancy", "1" if occupancy else "0")
        if occupancy and prev != "1":
            out.add(Reading(device_id, "motion", now_ms))
    contact = obj.get("contact")
    if isinstance(contact, bool):
        # Z2M: contact true = magnet near = door closed.
        kind = "close" if contact else "open"
        out.state_change(device_id, "contact", kind, kind, now_ms)
    action = obj.get("action")
    if isinstance(action, str) and action:
        out.add(Reading(device_id, "motion", now_ms))
    battery_low = obj.get("battery_low")
    if isinstance(battery_low, bool):
        changed, prev = out.remember(f"{device_id}|battery_low", "1" if battery_low else "0")
        if battery_low and changed:
            out.add(Reading(device_id, "fault", now_ms, _number(obj.get("battery"))))
    return out.outcome()


def _z2m_availability(name: str, payload: bytes, now_ms: int, memory: Mapping[str, str]) -> Outcome:
    text = _text(payload)
    if text.startswith("{"):
        obj = _json_object(payload)
        if isinstance(obj, Outcome):
            return obj
        text = str(obj.get("state", ""))
    if text not in ("online", "offline"):
        return _reject("bad_availability", text)
    out = _Changes(memory)
    out.availability(device_id_for("z2m-", name), text == "online", now_ms)
    return out.outcome()


# ---------------------------------------------------------------------------------------------
# Tasmota
# ---------------------------------------------------------------------------------------------

_POWER_KEY = re.compile(r"POWER([1-8]?)")


def _tasmota_device(topic_name: str, relay: str) -> str:
    base = device_id_for("tasmota-", topic_name)
    return base if relay in ("", "1") else f"{base}.{relay}"


def tasmota(topic: str, payload: bytes, *, now_ms: int, memory: Mapping[str, str]) -> Outcome:
    parts = topic.split("/")
    if len(parts) != 3 or not parts[1]:
        return _reject("unrecognised_topic", topic)
    prefix, name, leaf = parts
    out = _Changes(memory)
    if prefix == "stat":
        match = _POWER_KEY.fullmatch(leaf)
        if match:
            on = _on_off(_text(payload))
            if on is None:
                return _reject("bad_power", _text(payload))
            _tasmota_power(out, name, match.group(1), on, now_ms)
            return out.outcome()
        if leaf == "RESULT":
            obj = _json_object(payload)
            if isinstance(obj, Outcome):
                return obj
            _tasmota_powers(out, name, obj, now_ms)
            return out.outcome()
        return IGNORED  # STATUS*, UPGRADE ...: not device activity
    if leaf == "LWT":
        text = _text(payload)
        if text not in ("Online", "Offline"):
            return _reject("bad_lwt", text)
        relays = _known_relays(memory, name) or [""]
        for relay in relays:
            out.availability(_tasmota_device(name, relay), text == "Online", now_ms)
        return out.outcome()
    if leaf == "STATE":
        obj = _json_object(payload)
        if isinstance(obj, Outcome):
            return obj
        relays = _tasmota_powers(out, name, obj, now_ms)
        for relay in relays or [""]:
            out.add(Reading(_tasmota_device(name, relay), "heartbeat", now_ms))
        return out.outcome()
    return IGNORED  # tele/<t>/SENSOR, INFO1..3, RESULT ...


def _tasmota_power(out: _Changes, name: str, relay: str, on: bool, now_ms: int) -> None:
    relay = "" if relay == "1" else relay
    device_id = _tasmota_device(name, relay)
    out.remember(f"tasmota:{name}|relay{relay or '1'}", "1")  # which relays exist, for LWT
    out.state_change(device_id, "state", "on" if on else "off", "on" if on else "off", now_ms)


def _tasmota_powers(out: _Changes, name: str, obj: Mapping[str, Any], now_ms: int) -> list[str]:
    relays: list[str] = []
    for key, raw in obj.items():
        match = _POWER_KEY.fullmatch(key)
        if not match:
            continue
        on = _on_off(raw)
        if on is None:
            continue
        relay = "" if match.group(1) == "1" else match.group(1)
        _tasmota_power(out, name, relay, on, now_ms)
        if relay not in relays:
            relays.append(relay)
    return relays


def _known_relays(memory: Mapping[str, str], name: str) -> list[str]:
    prefix = f"tasmota:{name}|relay"
    found = sorted(k[len(prefix):] for k in memory if k.startswith(prefix))
    return ["" if r == "1" else r for r in found]


# ---------------------------------------------------------------------------------------------
# Shelly Gen2+
# ---------------------------------------------------------------------------------------------

_SHELLY_OUTPUTS: Final = ("switch", "light")
_SHELLY_PRESSES: Final = frozenset({"single_push", "double_push", "triple_push", "long_push"})


def _shelly_ts(raw: object, now_ms: int) -> int:
    seconds = _number(raw)
    if seconds is None:
        return now_ms
    ts = int(round(seconds * 1000))
    return ts if protocol.MIN_TS_MS <= ts <= protocol.MAX_TS_MS else now_ms


def shelly(topic: str, payload: bytes, *, now_ms: int, memory: Mapping[str, str]) -> Outcome:
    parts = topic.split("/")
    out = _Changes(memory)
    if len(parts) == 2 and parts[1] == "online":
        text = _text(payload).lower()
        if text not in ("true", "false"):
            return _reject("bad_online", text)
        out.availability(device_id_for("", parts[0]), text == "true", now_ms)
        return out.outcome()
    if len(parts) != 3 or parts[1:] != ["events", "rpc"] or not parts[0]:
        return _reject("unrecognised_topic", topic)
    obj = _json_object(payload)
    if isinstance(obj, Outcome):
        return obj
    src = obj.get("src")
    base = src if protocol.valid_id(src) else device_id_for("", parts[0])
    method = obj.get("method")
    params = obj.get("params")
    if method not in ("NotifyStatus", "NotifyFullStatus", "NotifyEvent"):
        return IGNORED  # responses to RPC calls, other notifications
    if type(params) is not dict:
        return _reject("bad_params", repr(params))
    ts_ms = _shelly_ts(params.get("ts"), now_ms)
    if method == "NotifyEvent":
        events = params.get("events")
        if type(events) is not list:
            return _reject("bad_events", repr(events))
        for ev in events:
            if type(ev) is not dict or ev.get("event") not in _SHELLY_PRESSES:
                continue
            component = str(ev.get("component", ""))
            ctype, _, cid = component.partition(":")
            if ctype != "input" or not cid.isdigit():
                continue
            out.add(Reading(f"{base}.input{cid}", "motion", _shelly_ts(ev.get("ts"), ts_ms)))
        return out.outcome()
    outputs = 0
    for key, status in params.items():
        ctype, _, cid = key.partition(":")
        if ctype not in _SHELLY_OUTPUTS or not cid.isdigit() or type(status) is not dict:
            continue
        output = status.get("output")
        if not isinstance(output, bool):
            continue  # NotifyStatus carries only what changed (e.g. just power readings)
        device_id = base if cid == "0" else f"{base}.{cid}"
        kind = "on" if output else "off"
        brightness = _number(status.get("brightness")) if output else None
        out.state_change(device_id, "state", kind, kind, ts_ms, brightness)
        outputs += 1
        if method == "NotifyFullStatus":
            out.add(Reading(device_id, "heartbeat", ts_ms))
    if method == "NotifyFullStatus" and not outputs:
        out.add(Reading(base, "heartbeat", ts_ms))  # input-only devices (Plus i4)
    return out.outcome()
