"""Tasmota (tasmota.github.io/docs/MQTT/, /docs/Commands/, /docs/JSON-Status-Responses/).

Topics follow the device's FullTopic, default ``%prefix%/%topic%/`` (``stat/kitchen/POWER``); others
such as ``%topic%/%prefix%/`` or ``tasmota/%topic%/%prefix%/`` are configured in ``Layout``.

- ``stat/<t>/POWER[n]``: ``ON``/``OFF`` (StateText may be localised), or JSON ``{"POWER":"ON"}``.
- ``stat/<t>/RESULT``: command replies and changes: ``{"POWER1":"ON"}``, a detached switch
  ``{"Switch1":{"Action":"ON"}}``, a button ``{"Button1":{"Action":"SINGLE"}}``; other replies
  (``{"Dimmer":50}``, ``{"Command":"Unknown"}``) are not activity.
- ``tele/<t>/STATE``: periodic (TelePeriod), ``POWER[n]`` and ``UptimeSec``: a heartbeat; a state
  that differs from the remembered one is a switch we missed. A small ``UptimeSec`` marks a boot.
- ``tele/<t>/SENSOR``: periodic sensor readings; ``SwitchN`` (PIR, door contacts wired as switches)
  are compared like STATE; ``ZbReceived`` (Zigbee2Tasmota) carries ``Occupancy``/``Contact``/``Power``.
- ``tele/<t>/LWT``: ``Online``/``Offline`` (retained; the last will). A non-retained ``Online`` is a
  boot: stat/POWER published in the next seconds is the device restoring its state, not a switch.
- ``cmnd/...`` are requests; INFO*, STATUS*, UPTIME, LOGGING ... are not activity.

Ids: ``tasmota-<topic>`` (relay 1) and ``tasmota-<topic>.<n>`` (relay n >= 2); switches
``tasmota-<topic>.switch<n>``; Zigbee2Tasmota devices ``tasmota-<topic>.<name or short address>``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from .base import Context, Frame, Outcome, Reading, device_id_for, json_object, json_value, number, on_off, reject, text

NAME: Final = "tasmota"
_POWER = re.compile(r"POWER([1-8]?)", re.IGNORECASE)
_SWITCH = re.compile(r"Switch([1-8])")
_BUTTON = re.compile(r"Button([1-8])")
_PREFIXES: Final = frozenset({"cmnd", "stat", "tele"})
_ONLINE: Final = frozenset({"online", "aktywny", "en ligne", "in linea", "en línea"})
_OFFLINE: Final = frozenset({"offline", "nieaktywny", "hors ligne", "non in linea", "fuera de línea"})
_PRESSES: Final = frozenset({"SINGLE", "DOUBLE", "TRIPLE", "QUAD", "PENTA", "HOLD", "TOGGLE", "ON", "OFF"})


def _compile(pattern: str) -> re.Pattern[str]:
    regex = ""
    for piece in re.split(r"(%[a-z]+%)", pattern.strip("/")):
        if piece == "%prefix%":
            regex += r"(?P<prefix>[^/]+)"
        elif piece == "%topic%":
            regex += r"(?P<topic>[^/]+)"
        elif piece in ("%hostname%", "%id%"):
            regex += r"[^/]+" if "%topic%" in pattern else r"(?P<topic>[^/]+)"
        else:
            regex += re.escape(piece)
    return re.compile(f"^{regex}/(?P<leaf>[^/]+)$")


_CACHE: dict[str, re.Pattern[str]] = {}


#: Leaves only Tasmota publishes: with one of them after a ``stat``/``tele``/``cmnd`` level, a topic
#: no configured FullTopic matches is still Tasmota (``tasmota/kitchen/stat/POWER``, ``%topic%/%prefix%/``).
_LEAVES = re.compile(r"POWER[1-8]?|RESULT|STATE|SENSOR|LWT|INFO[1-3]|STATUS\d*|UPTIME|LOGGING|MARGINS|UPGRADE|HASS_STATE")


def match(topic: str, ctx: Context) -> tuple[str, str, str, str] | None:
    """(prefix, topic name, leaf, FullTopic pattern) or None."""
    for pattern in ctx.layout.tasmota_full_topics:
        regex = _CACHE.get(pattern) or _CACHE.setdefault(pattern, _compile(pattern))
        m = regex.match(topic)
        if m and "prefix" in regex.groupindex and "topic" in regex.groupindex and m.group("prefix") in _PREFIXES:
            return m.group("prefix"), m.group("topic"), m.group("leaf"), pattern
    return _guess(topic)


def _guess(topic: str) -> tuple[str, str, str, str] | None:
    parts = topic.split("/")
    if len(parts) < 3 or not _LEAVES.fullmatch(parts[-1]):
        return None
    head = "/".join(parts[:-3])
    if parts[-3] in _PREFIXES and parts[-2]:  # <...>/%prefix%/%topic%/<leaf>
        return parts[-3], parts[-2], parts[-1], f"{head}/%prefix%/%topic%/".lstrip("/")
    if parts[-2] in _PREFIXES and parts[-3]:  # <...>/%topic%/%prefix%/<leaf>
        return parts[-2], parts[-3], parts[-1], f"{head}/%topic%/%prefix%/".lstrip("/")
    if _NO_PREFIX_LEAVES.fullmatch(parts[-1]) and parts[-2] not in _PREFIXES:
        # A FullTopic without %prefix% (home/floor/%topic%/: arendst/Tasmota#9134): the leaf says which.
        prefix = "tele" if parts[-1] in ("STATE", "SENSOR", "LWT") else "stat"
        return prefix, parts[-2], parts[-1], f"{'/'.join(parts[:-2])}/%topic%/".lstrip("/")
    return None


_NO_PREFIX_LEAVES = re.compile(r"POWER[1-8]?|RESULT|STATE|SENSOR|LWT")


def device_id(name: str, relay: str = "") -> str:
    base = device_id_for("tasmota-", name)
    return base if relay in ("", "1") else f"{base}.{relay}"


def handle(topic: str, payload: bytes, ctx: Context) -> Outcome | None:
    found = match(topic, ctx)
    if found is None:
        return None
    prefix, name, leaf, pattern = found
    out = Frame(ctx).describe(name, None, device_id(name))
    if prefix == "cmnd":
        return out.outcome(reason="command")
    upper = leaf.upper()
    if prefix == "tele" and upper == "LWT":
        return _lwt(out, name, payload)
    if prefix == "stat" and _POWER.fullmatch(leaf):
        return _power_topic(out, name, leaf, payload, pattern)
    if upper in ("RESULT", "STATE", "SENSOR"):
        obj = json_object(payload)
        if isinstance(obj, Outcome):
            return reject(obj.rejection.reason if obj.rejection else "bad_json", obj.rejection.detail if obj.rejection else "",
                          device_name=name)
        if upper == "STATE" or "UptimeSec" in obj:  # a RESULT with UptimeSec answers a State poll
            return _state(out, name, obj, pattern)
        if upper == "SENSOR" or prefix == "tele":
            return _sensor(out, name, obj)
        return _result(out, name, obj, pattern)
    return out.outcome(reason="not_activity")  # INFO1..3, STATUS*, UPTIME, LOGGING, MARGINS ...


def _sync(out: Frame, name: str) -> str | None:
    return "boot_sync" if out.in_boot(f"tasmota:{name}") else None


def _power(out: Frame, name: str, relay: str, on: bool, pattern: str, *, periodic: bool = False) -> None:
    relay = "" if relay == "1" and not out.get(f"tasmota:{name}|multi") else relay
    did = device_id(name, relay)
    out.put(f"tasmota:{name}|relay{relay or '1'}", "1")  # which relays exist, for LWT
    kind = "on" if on else "off"
    if periodic:
        out.periodic(did, "state", kind, kind, out.ctx.now_ms)
    else:
        out.live(did, "state", kind, kind, out.ctx.now_ms, sync=_sync(out, name))
    out.route(did, {"d": NAME, "topic": name, "relay": relay or "", "full": pattern})
    if out.where.get("channel") is None and relay:
        out.where["channel"] = int(relay)


def _power_topic(out: Frame, name: str, leaf: str, payload: bytes, pattern: str) -> Outcome:
    m = _POWER.fullmatch(leaf)
    if m is None:  # the caller matched the leaf already
        return reject("bad_topic", leaf, device_name=name)
    relay = m.group(1)
    raw: Any = text(payload)
    if str(raw).startswith("{"):
        # Some setups answer POWER as JSON ({"POWER":"ON"}), like a RESULT.
        try:
            obj = json_value(payload)
        except ValueError:
            obj = None
        raw = next((v for k, v in obj.items() if _POWER.fullmatch(k)), None) if isinstance(obj, dict) else None
    on = on_off(raw)
    if on is None:
        return reject("bad_power", text(payload), device_name=name, device_id=device_id(name, relay))
    if relay:
        out.where["channel"] = int(relay)
    _power(out, name, relay, on, pattern)
    return out.outcome()


def _powers(out: Frame, name: str, obj: dict[str, Any], pattern: str, *, periodic: bool) -> list[str]:
    relays = []
    keys = [k for k in obj if _POWER.fullmatch(k)]
    if any(_POWER.fullmatch(k).group(1) not in ("", "1") for k in keys):  # type: ignore[union-attr]
        out.put(f"tasmota:{name}|multi", "1")
    for key in keys:
        on = on_off(obj[key])
        if on is None:
            continue
        relay = _POWER.fullmatch(key).group(1)  # type: ignore[union-attr]
        _power(out, name, relay, on, pattern, periodic=periodic)
        relays.append(relay)
    return relays


def _result(out: Frame, name: str, obj: dict[str, Any], pattern: str) -> Outcome:
    _powers(out, name, obj, pattern, periodic=False)
    for key, raw in obj.items():
        sw, btn = _SWITCH.fullmatch(key), _BUTTON.fullmatch(key)
        action = raw.get("Action") if isinstance(raw, dict) else None
        if sw and isinstance(action, str):
            on = on_off(action)
            did = device_id_for("", f"{device_id(name)}.switch{sw.group(1)}")
            if on is not None:
                out.live(did, "state", "on" if on else "off", "on" if on else "off", out.ctx.now_ms, sync=_sync(out, name))
            elif action.upper() in _PRESSES:
                out.add(Reading(did, "motion", out.ctx.now_ms))
            out.where["channel"] = int(sw.group(1))
        elif btn and isinstance(action, str) and action.upper() in _PRESSES and not out.ctx.retained:
            out.add(Reading(device_id_for("", f"{device_id(name)}.button{btn.group(1)}"), "motion", out.ctx.now_ms))
            out.where["channel"] = int(btn.group(1))
    if "ZbReceived" in obj:
        return _zigbee(out, name, obj["ZbReceived"])
    return out.outcome(reason="command_reply" if not out.notes else None)


def _state(out: Frame, name: str, obj: dict[str, Any], pattern: str) -> Outcome:
    uptime = number(obj.get("UptimeSec"))
    if uptime is not None and uptime < 60:
        out.mark_boot(f"tasmota:{name}", out.ctx.now_ms - int(uptime * 1000))
    relays = _powers(out, name, obj, pattern, periodic=True)
    relays = relays or [""]
    for relay in relays:
        out.add(Reading(device_id(name, relay), "heartbeat", out.ctx.now_ms))
    return out.outcome("heartbeat")


def _sensor(out: Frame, name: str, obj: dict[str, Any]) -> Outcome:
    for key, raw in obj.items():
        sw = _SWITCH.fullmatch(key)
        if sw and isinstance(raw, str):
            on = on_off(raw)
            if on is not None:
                did = device_id_for("", f"{device_id(name)}.switch{sw.group(1)}")
                out.periodic(did, "state", "on" if on else "off", "on" if on else "off", out.ctx.now_ms)
                out.where["channel"] = int(sw.group(1))
    if "ZbReceived" in obj:
        return _zigbee(out, name, obj["ZbReceived"])
    return out.outcome(reason=None if out.notes else "sensor_reading")


def _zigbee(out: Frame, name: str, received: object) -> Outcome:
    """Zigbee2Tasmota: ``{"ZbReceived":{"0x8F20":{"Device":"0x8F20","Name":"hall","Occupancy":1,...}}}``."""
    if not isinstance(received, dict):
        return out.outcome(reason="not_activity")
    for short, attrs in received.items():
        if not isinstance(attrs, dict):
            continue
        zname = str(attrs.get("Name") or short)
        did = device_id_for("", f"{device_id(name)}.{zname}")
        out.describe(zname, None, did)
        occupancy = attrs.get("Occupancy")
        if occupancy in (0, 1):
            _, prev = out.put(f"{did}|occupancy", str(occupancy))
            if occupancy == 1 and prev != "1":
                out.add(Reading(did, "motion", out.ctx.now_ms))
        contact = attrs.get("Contact")
        if contact in (0, 1):  # ZoneStatus bit 0: 1 = alarm = open
            kind = "open" if contact == 1 else "close"
            out.live(did, "contact", kind, kind, out.ctx.now_ms)
        power = on_off(attrs.get("Power"))
        if power is not None and isinstance(attrs.get("Power"), int):
            kind = "on" if power else "off"
            out.live(did, "state", kind, kind, out.ctx.now_ms)
    return out.outcome(reason="not_activity" if not out.notes else None)


def _lwt(out: Frame, name: str, payload: bytes) -> Outcome:
    word = text(payload).lower()
    if word not in _ONLINE and word not in _OFFLINE:
        return reject("bad_lwt", text(payload), device_name=name, device_id=device_id(name))
    online = word in _ONLINE
    if online:
        out.mark_boot(f"tasmota:{name}")
    prefix = f"tasmota:{name}|relay"
    relays = ["" if k[len(prefix):] == "1" else k[len(prefix):] for k in out.keys(prefix)] or [""]
    for relay in relays:
        out.availability(device_id(name, relay), online)
    return out.outcome("online" if online else "offline")
