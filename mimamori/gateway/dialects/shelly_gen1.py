"""Shelly Gen1 (shelly-api-docs.shelly.cloud/gen1/#mqtt-support): ``shellies/<id>/...``.

- ``relay/<i>``: ``on``/``off``/``overpower`` (also republished every update period, 30 s by default:
  only a change of a remembered state is activity). ``relay/<i>/power``, ``/energy`` are readings.
- ``light/<i>``, ``color/<i>``, ``white/<i>``: ``on``/``off``; ``light/<i>/status`` JSON ``{"ison":..}``.
- ``input/<i>``: ``0``/``1`` (a wall switch wired to the input).
- ``input_event/<i>``: ``{"event":"S","event_cnt":12}`` presses (S, L, SS, SSS, SL, LS); republished
  periodically with the same ``event_cnt``, so only a new count is a press.
- ``sensor/motion`` (Shelly Motion) ``true``/``false``; ``sensor/state`` (Door/Window) ``open``/
  ``close``; ``status`` (Shelly Motion) ``{"motion":true,"timestamp":...,"active":true,...}``.
- ``online`` ``true``/``false`` (handled with Gen2's, same payload); ``announce`` marks a boot.
Other sensors (temperature, lux, battery, vibration...) are not a resident's action.

Ids: ``<id>`` for relay/light 0, ``<id>.<i>`` for i >= 1, inputs ``<id>.input<i>``, as for Gen2.
"""

from __future__ import annotations

from typing import Final

from .base import Context, Frame, Outcome, Reading, json_object, number, on_off, reject, text
from .shelly import base_id, input_id, online, output_id

NAME: Final = "shelly_gen1"
PREFIX: Final = "shellies/"
_OUTPUTS: Final = frozenset({"relay", "light", "color", "white"})
_PRESS_CODES: Final = frozenset({"S", "L", "SS", "SSS", "SL", "LS"})


def handle(topic: str, payload: bytes, ctx: Context) -> Outcome | None:
    if not topic.startswith(PREFIX):
        return None
    parts = topic.split("/")
    if len(parts) < 3:
        return Frame(ctx).outcome(reason="announce" if topic == "shellies/announce" else "not_activity")
    dev, rest = parts[1], parts[2:]
    prefix = f"{PREFIX}{dev}"
    out = Frame(ctx)
    name = out.get(f"shelly|{base_id(prefix)}|src") or dev
    out.describe(name, None, base_id(prefix))
    sync = "boot_sync" if out.in_boot(f"shelly:{base_id(prefix)}") else None
    head = rest[0]
    if rest == ["online"]:
        return online(prefix, payload, ctx)
    if rest == ["announce"]:
        out.mark_boot(f"shelly:{base_id(prefix)}")
        return out.outcome(reason="announce")
    if head in _OUTPUTS and len(rest) == 2 and rest[1].isdigit():
        return _output(out, prefix, head, rest[1], text(payload).lower(), sync)
    if head == "light" and len(rest) == 3 and rest[1].isdigit() and rest[2] == "status":
        obj = json_object(payload)
        if isinstance(obj, Outcome) or not isinstance(obj.get("ison"), bool):
            return reject("bad_light_status", text(payload), **out.where)
        return _output(out, prefix, "light", rest[1], "on" if obj["ison"] else "off", sync)
    if head == "input" and len(rest) == 2 and rest[1].isdigit():
        on = on_off(text(payload))
        if on is None:
            return reject("bad_input", text(payload), **out.where)
        kind = "on" if on else "off"
        out.live(input_id(prefix, rest[1]), "state", kind, kind, ctx.now_ms, sync=sync)
        out.where["channel"] = int(rest[1])
        return out.outcome()
    if head == "input_event" and len(rest) == 2 and rest[1].isdigit():
        return _press(out, prefix, rest[1], payload)
    if rest == ["sensor", "motion"]:
        moving = on_off(text(payload))
        if moving is None:
            return reject("bad_motion", text(payload), **out.where)
        return _motion(out, base_id(prefix), moving)
    if rest == ["sensor", "state"]:
        word = text(payload).lower()
        if word not in ("open", "close"):
            return out.outcome(reason="not_activity")  # "unknown" before calibration
        out.live(base_id(prefix), "contact", word, word, ctx.now_ms, sync=sync)
        return out.outcome()
    if rest == ["status"]:
        obj = json_object(payload)
        if isinstance(obj, Outcome):
            return reject("bad_json", text(payload)[:100], **out.where)
        if isinstance(obj.get("motion"), bool):
            return _motion(out, base_id(prefix), obj["motion"])
        return out.outcome(reason="not_activity")
    if rest and rest[-1] == "command":
        return out.outcome(reason="command")
    return out.outcome(reason="not_activity")  # power, energy, temperature, info, ...


def _output(out: Frame, prefix: str, comp: str, cid: str, word: str, sync: str | None) -> Outcome:
    did = output_id(prefix, cid)
    out.where.update(channel=int(cid), device_id=did)
    if word == "overpower":
        out.add(Reading(did, "fault", out.ctx.now_ms))
        return out.outcome("offline", reason="overpower")
    if word not in ("on", "off"):
        return reject("bad_relay", word, **out.where)
    out.live(did, "state", word, word, out.ctx.now_ms, sync=sync)
    out.route(did, {"d": NAME, "prefix": prefix, "comp": comp, "id": int(cid)})
    return out.outcome()


def _press(out: Frame, prefix: str, cid: str, payload: bytes) -> Outcome:
    obj = json_object(payload)
    if isinstance(obj, Outcome):
        return reject("bad_json", text(payload)[:100], **out.where)
    did = input_id(prefix, cid)
    out.where.update(channel=int(cid), device_id=did)
    event, count = obj.get("event"), number(obj.get("event_cnt"))
    if not isinstance(event, str) or event not in _PRESS_CODES:
        return out.outcome(reason="no_press")
    if count is not None:
        _, prev = out.put(f"{did}|event_cnt", str(int(count)))
        if prev == str(int(count)):
            return out.outcome(reason="unchanged")  # the periodic republish of the last press
        if prev is None and out.ctx.retained:
            return out.outcome(reason="retained_sync")
    out.add(Reading(did, "motion", out.ctx.now_ms))
    return out.outcome()


def _motion(out: Frame, did: str, moving: bool) -> Outcome:
    _, prev = out.put(f"{did}|motion", "1" if moving else "0")
    if moving and prev != "1" and not (out.ctx.retained and prev is None):
        out.add(Reading(did, "motion", out.ctx.now_ms))
    return out.outcome(reason="no_motion" if not moving else "unchanged")
