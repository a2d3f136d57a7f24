"""Zigbee2MQTT (zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html).

- ``<base>/<friendly_name>``: the device's whole state as JSON, republished on any attribute change.
  ``state`` (and ``state_l1``, ``state_left`` ... one per endpoint) ON/OFF, ``occupancy``/``presence``,
  ``contact`` (true = closed), ``action``/``click`` (a press). Friendly names may contain ``/``.
- ``<base>/<name>/availability``: ``{"state":"online"}`` or the legacy plain ``online``/``offline``.
- ``<base>/<name>/action``: plain text press (Home Assistant's legacy action sensor).
- ``<base>/bridge/state``: ``{"state":"online"}`` or legacy ``online``/``offline``, retained, the
  last will. Per-device availability is off by default, so this is often the only sign that every
  Zigbee device went silent for a technical reason: it becomes ``heartbeat``/``fault`` of the
  bridge (``z2m-bridge``) and of every Zigbee device the gateway knows under that base topic.
- ``<base>/bridge/groups`` (retained list): group names, whose state messages echo their members'
  and are therefore not activity. ``<base>/bridge/devices``: which devices are plugs (for the
  downlink's "never switch" default). Everything else under ``bridge/`` is ignored.
- ``<name>/set``, ``/get`` and ``/set/<attr>`` are requests to the device, not reports.

Ids: ``z2m-<friendly_name>``; an endpoint ``state_<ep>`` is ``z2m-<name>.<ep>``.
Time: Z2M payloads carry no event time; ``last_seen`` (when enabled) only tells a cached state (older
than ``STALE_MS``, republished at Z2M start) from a live one.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from .base import (
    BRIDGE_WINDOW_MS,
    Context,
    Frame,
    Outcome,
    Reading,
    device_id_for,
    epoch_ms,
    ignored,
    json_object,
    number,
    on_off,
    reject,
    text,
)

NAME: Final = "zigbee2mqtt"
_REQUESTS: Final = frozenset({"set", "get"})
_PRESS_SUFFIXES: Final = frozenset({"action", "click"})


#: Keys only Zigbee2MQTT puts in a device's JSON: a message carrying one, on a topic no dialect
#: claimed, is Z2M under a base topic nobody configured (the first topic level).
_Z2M_MARKERS: Final = frozenset({"linkquality", "last_seen", "update_available"})
_BRIDGE = re.compile(r"^(?P<base>[^/]+)/bridge/(?:state|info)$")


def bases(ctx: Context) -> list[str]:
    """Configured base topics, and those this home revealed by a ``<base>/bridge/state``."""
    found = [b.strip("/") for b in ctx.layout.z2m_base_topics]
    found += [k[len("z2mbase|"):] for k in ctx.memory if k.startswith("z2mbase|")]
    return sorted(set(found), key=len, reverse=True)


def _base_of(topic: str, ctx: Context) -> tuple[str, str] | None:
    for base in bases(ctx):
        if topic.startswith(base + "/"):
            return base, topic[len(base) + 1:]
    return None


def device_id(name: str, endpoint: str | None = None) -> str:
    base = device_id_for("z2m-", name)
    return base if not endpoint else device_id_for("", f"{base}.{endpoint}")


def bridge_id(base: str) -> str:
    return "z2m-bridge" if base == "zigbee2mqtt" else device_id_for("z2m-", f"{base}.bridge")


def handle(topic: str, payload: bytes, ctx: Context) -> Outcome | None:
    if topic == "homeassistant/status":
        # Home Assistant back online: Z2M republishes every cached state 30 s later (syncs).
        out = Frame(ctx)
        if text(payload).lower() == "online":
            for base in ctx.layout.z2m_base_topics:
                out.mark_boot(f"z2m:{base.strip('/')}")
        return out.outcome(reason="home_assistant_status")
    found = _base_of(topic, ctx)
    discovered = None
    if found is None:
        m = _BRIDGE.match(topic)
        if m is None:
            return None
        discovered = m.group("base")  # a Z2M under a base topic nobody configured
        found = (discovered, topic[len(discovered) + 1:])
    base, name = found
    if discovered is not None:
        bridged = _bridge(base, name[7:], payload, ctx)
        return Outcome(tuple(bridged.readings), bridged.rejection, {f"z2mbase|{base}": "1", **bridged.memory_updates},
                       bridged.summary)
    if not name:
        return ignored("not_a_device")
    if name == "bridge" or name.startswith("bridge/"):
        return _bridge(base, name[7:], payload, ctx)
    head, _, last = name.rpartition("/")
    if (head and last in _REQUESTS) or "/set/" in name or "/get/" in name:
        return ignored("command", device_name=head or name)
    if head and last == "availability":
        return _availability(base, head, payload, ctx)
    stripped = payload.strip()
    if head and not stripped.startswith(b"{") and (last in _ATTRIBUTES or last.startswith("state_")):
        return _attribute(base, head, last, stripped, ctx)
    if head and last in _PRESS_SUFFIXES and not stripped.startswith(b"{"):
        # Legacy action topic: a plain-text press; an empty one only clears Home Assistant's sensor.
        out = Frame(ctx).describe(head, None, device_id(head))
        if not stripped:
            return out.outcome(reason="empty_action")
        out.add(Reading(device_id(head), "motion", ctx.now_ms))
        return out.outcome()
    obj = json_object(payload)
    if isinstance(obj, Outcome):
        return reject(obj.rejection.reason if obj.rejection else "bad_json", obj.rejection.detail if obj.rejection else "",
                          device_name=name)
    return _state(base, name, obj, ctx)


#: ``output: attribute`` / ``attribute_and_json`` publishes each attribute on its own topic
#: (``zigbee2mqtt/stopcontact/state`` ``OFF``; Koenkk/zigbee2mqtt#5813).
_ATTRIBUTES: Final = frozenset({"state", "occupancy", "presence", "contact", "brightness", "linkquality", "battery", "voltage",
                                "update_available", "update-state", "illuminance", "illuminance_lux", "temperature",
                                "humidity", "power", "energy", "last_seen", "color_temp", "battery_low", "tamper"})


def _attribute(base: str, name: str, attr: str, raw: bytes, ctx: Context) -> Outcome:
    value: Any = text(raw)
    if attr in ("occupancy", "presence", "contact", "battery_low", "tamper"):
        value = {"true": True, "false": False}.get(value.lower(), value)
    elif not (attr == "state" or attr.startswith("state_")):
        return Frame(ctx).describe(name, None, device_id(name)).outcome(reason="attribute")
    return _state(base, name, {attr: value}, ctx)


def guess(topic: str, payload: bytes, ctx: Context) -> Outcome | None:
    """Last resort, after every dialect said no: a Z2M device JSON under an unconfigured base."""
    base, _, name = topic.partition("/")
    if not base or not name or not payload.lstrip().startswith(b"{"):
        return None
    obj = json_object(payload)
    if isinstance(obj, Outcome) or not _Z2M_MARKERS & obj.keys():
        return None
    head, _, last = name.rpartition("/")
    if head and (last in _REQUESTS or last == "availability"):
        return None
    return _state(base, name, obj, ctx)


def _state(base: str, name: str, obj: dict[str, Any], ctx: Context) -> Outcome:
    out = Frame(ctx)
    did = device_id(name)
    out.describe(name, None, did)
    if out.get(f"z2mgroup|{base}|{name}") is not None:
        return out.outcome(reason="group")  # a group's state echoes its members' reports
    out.put(f"z2m|{base}|{did}", name)
    seen = epoch_ms(obj.get("last_seen"))
    sync = "stale_report" if out.stale(seen) else ("bridge_start" if out.in_boot(f"z2m:{base}", BRIDGE_WINDOW_MS) else None)
    channel: str | None = None
    for key, raw in obj.items():
        # Multi-endpoint devices report state_l1, state_l2, state_left ... (one relay each).
        if key != "state" and not key.startswith("state_"):
            continue
        on = on_off(raw)
        if on is None or isinstance(raw, (bool, int)):
            continue  # state_* that are not ON/OFF (e.g. "state_action": true is an option)
        endpoint = None if key == "state" else key[6:]
        target = device_id(name, endpoint)
        if endpoint is not None:
            channel = channel or endpoint
            out.put(f"z2m|{base}|{target}", name)
        brightness = number(obj.get("brightness")) if key == "state" and on else None
        kind = "on" if on else "off"
        out.live(target, "state", kind, kind, ctx.now_ms, brightness, sync=sync)
        out.route(target, {"d": NAME, "base": base, "name": name, "ep": endpoint})
    for key in ("occupancy", "presence"):
        present = obj.get(key)
        if isinstance(present, bool):
            # Motion on the step to true (first report included: a sensor reports true only after
            # detecting someone); a repeated true (illuminance/battery updates) is not new motion.
            _, prev = out.put(f"{did}|{key}", "1" if present else "0")
            if present and prev != "1" and not (ctx.retained and prev is None):
                out.add(Reading(did, "motion", ctx.now_ms))
            elif not present:
                out.notes.append("no_motion")
            break
    contact = obj.get("contact")
    if isinstance(contact, bool):
        kind = "close" if contact else "open"  # Z2M: contact true = magnet near = closed
        out.live(did, "contact", kind, kind, ctx.now_ms, sync=sync)
    for key in ("action", "click"):
        action = obj.get(key)
        if isinstance(action, str) and action:
            # A press is a point event. Z2M keeps no action in its state cache, so a retained or
            # cached message does not repeat it; only the retained flag says otherwise.
            if not ctx.retained and sync != "stale_report":
                out.add(Reading(did, "motion", ctx.now_ms))
            break
    battery_low = obj.get("battery_low")
    if isinstance(battery_low, bool):
        changed, _ = out.put(f"{did}|battery_low", "1" if battery_low else "0")
        if battery_low and changed:
            out.add(Reading(did, "fault", ctx.now_ms, number(obj.get("battery"))))
    if channel is not None and out.where.get("channel") is None:
        out.where["channel"] = channel
    return out.outcome(reason=None if out.notes else "no_resident_field")


def _online_word(payload: bytes) -> str | Outcome:
    word = text(payload)
    if word.startswith("{"):
        obj = json_object(payload)
        if isinstance(obj, Outcome):
            return obj
        word = str(obj.get("state", ""))
    word = word.lower()
    if word not in ("online", "offline"):
        return reject("bad_availability", word)
    return word


def _availability(base: str, name: str, payload: bytes, ctx: Context) -> Outcome:
    word = _online_word(payload)
    did = device_id(name)
    if isinstance(word, Outcome):
        return reject("bad_availability", text(payload), device_name=name, device_id=did)
    out = Frame(ctx).describe(name, None, did)
    out.put(f"z2m|{base}|{did}", name)
    out.availability(did, word == "online")
    return out.outcome(word)


def _bridge(base: str, sub: str, payload: bytes, ctx: Context) -> Outcome:
    bid = bridge_id(base)
    if sub == "state":
        word = _online_word(payload)
        if isinstance(word, Outcome):
            return reject("bad_bridge_state", text(payload), device_name="bridge", device_id=bid)
        online = word == "online"
        out = Frame(ctx).describe("bridge", None, bid)
        out.availability(bid, online)
        if online:
            out.mark_boot(f"z2m:{base}")
        # Every Zigbee device behind this bridge goes silent (or comes back) with it.
        prefix = f"z2m|{base}|"
        for key in out.keys(prefix):
            out.availability(key[len(prefix):], online)
        return out.outcome(word)
    if sub == "groups":
        return _groups(base, payload, ctx)
    if sub == "devices":
        return _devices(base, payload, ctx)
    return ignored("bridge_message", device_name="bridge", device_id=bid)


def _list(payload: bytes) -> list[Any]:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return []
    return value if isinstance(value, list) else []


def _groups(base: str, payload: bytes, ctx: Context) -> Outcome:
    out = Frame(ctx).describe("bridge", None, bridge_id(base))
    for group in _list(payload):
        if isinstance(group, dict) and isinstance(group.get("friendly_name"), str):
            out.put(f"z2mgroup|{base}|{group['friendly_name']}", "1")
    return out.outcome(reason="bridge_message")


def _devices(base: str, payload: bytes, ctx: Context) -> Outcome:
    """Mark plugs (exposes a ``switch`` and no ``light``): by default the downlink never switches
    them (they may power a heater or a fridge).
    """
    out = Frame(ctx).describe("bridge", None, bridge_id(base))
    for dev in _list(payload):
        if not isinstance(dev, dict) or not isinstance(dev.get("friendly_name"), str):
            continue
        definition = dev.get("definition")
        exposes = definition.get("exposes") if isinstance(definition, dict) else None
        types = {e.get("type") for e in exposes if isinstance(e, dict)} if isinstance(exposes, list) else set()
        if "switch" in types and "light" not in types:
            out.put(f"plug|{device_id(dev['friendly_name'])}", "1")
    return out.outcome(reason="bridge_message")
