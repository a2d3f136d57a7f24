"""Shelly Gen2 / Plus / Pro / Gen3 (shelly-api-docs.shelly.cloud/gen2/General/Notifications,
/gen2/ComponentsAndServices/Mqtt).

The topic prefix defaults to the device id (``shellyplus1pm-441793d69718``) and may be anything,
``/`` included (``shellies/plus1pm``, ``home/kitchen/plug``). Messages are recognised by suffix:

- ``<prefix>/events/rpc``: JSON-RPC notifications. ``NotifyStatus`` (sent on change; ``params.ts`` is
  the device's UTC time) carries only what changed: ``{"switch:0":{"id":0,"output":true,"source":
  "button"}}``; power readings alone are not activity. ``NotifyFullStatus`` (on connect) is a sync
  and a heartbeat. ``NotifyEvent`` ``input:N`` ``single_push``/``double_push``/``long_push`` ... presses.
- ``<prefix>/status/<component>:<id>`` (``status_ntf``, "generic status update"): the component's
  whole status, e.g. ``{"id":0,"source":"HTTP","output":false,"apower":0.0,...}``.
- ``<prefix>/online``: ``true``/``false`` (retained; ``false`` is the last will). A non-retained
  ``true`` marks a boot: statuses in the next seconds are syncs.
- ``<prefix>/rpc``, ``<prefix>/command...`` are requests to the device.

One device id whichever topic it speaks on: the prefix (without a leading ``shellies/``), since
``online`` and ``status`` messages carry no ``src``. ``switch:0``/``light:0`` is the id itself,
output n >= 1 is ``<id>.<n>``, inputs ``<id>.input<n>``. ``device_name`` is the ``src`` (the Shelly
device id) once seen, else the prefix.
"""

from __future__ import annotations

import re
from typing import Any, Final

from mimamori.kernel import protocol

from .base import Context, Frame, Outcome, Reading, device_id_for, epoch_ms, json_object, number, reject, text

NAME: Final = "shelly"
_OUTPUTS: Final = frozenset({"switch", "light", "rgb", "rgbw", "cct"})
_PRESSES: Final = frozenset({"single_push", "double_push", "triple_push", "long_push", "long_single_push", "single_long_push"})
#: ``source`` values of a switch change the device made by itself (Gen2 Switch status; "init" at boot).
_AUTOMATIC: Final = frozenset({"init", "timer", "schedule", "auto_on", "auto_off"})
_STATUS = re.compile(r"^(?P<prefix>.+)/status/(?P<comp>[a-z0-9_]+)(?::(?P<id>\d+))?$")


def base_id(prefix: str) -> str:
    key = prefix.removeprefix("shellies/")
    return device_id_for("", key)


def output_id(prefix: str, cid: str) -> str:
    base = base_id(prefix)
    return base if cid in ("", "0") else f"{base}.{cid}"


def input_id(prefix: str, cid: str) -> str:
    return device_id_for("", f"{base_id(prefix)}.input{cid}")


def handle(topic: str, payload: bytes, ctx: Context) -> Outcome | None:
    if topic.endswith("/events/rpc"):
        return _rpc(topic[: -len("/events/rpc")], payload, ctx)
    m = _STATUS.match(topic)
    if m and (m.group("id") is not None or m.group("comp") in ("sys", "wifi", "cloud", "mqtt", "ble")):
        return _status(m.group("prefix"), m.group("comp"), m.group("id") or "", payload, ctx)
    if topic.endswith("/online") and topic.count("/") >= 1:
        return online(topic[: -len("/online")], payload, ctx)
    if topic.endswith("/rpc") or "/command" in topic:
        prefix = topic.rsplit("/rpc", 1)[0] if topic.endswith("/rpc") else topic.split("/command", 1)[0]
        return Frame(ctx).describe(prefix, None, base_id(prefix)).outcome(reason="command")
    return None


def _name(out: Frame, prefix: str) -> str:
    return out.get(f"shelly|{base_id(prefix)}|src") or prefix


def online(prefix: str, payload: bytes, ctx: Context) -> Outcome:
    word = text(payload).lower()
    if word not in ("true", "false"):
        return reject("bad_online", word, device_name=prefix, device_id=base_id(prefix))
    out = Frame(ctx)
    out.describe(_name(out, prefix), None, base_id(prefix))
    up = word == "true"
    if up:
        out.mark_boot(f"shelly:{base_id(prefix)}")
    known = [k.split("|")[0] for k in out.keys("") if k.endswith("|state") and _belongs(k.split("|")[0], base_id(prefix))]
    for did in dict.fromkeys(known or [base_id(prefix)]):
        out.availability(did, up)
    return out.outcome("online" if up else "offline")


def _belongs(device_id: str, base: str) -> bool:
    return device_id == base or (device_id.startswith(base + ".") and "." not in device_id[len(base) + 1:])


def _sync(out: Frame, prefix: str) -> str | None:
    return "boot_sync" if out.in_boot(f"shelly:{base_id(prefix)}") else None


def _ts(raw: object, now_ms: int) -> int:
    ts = epoch_ms(raw) if number(raw) is not None else None
    return ts if ts is not None and protocol.MIN_TS_MS <= ts <= protocol.MAX_TS_MS else now_ms


def _output(out: Frame, prefix: str, comp: str, cid: str, status: dict[str, Any], ts_ms: int, *, periodic: bool, sync: str | None) -> bool:
    output = status.get("output")
    if not isinstance(output, bool):
        return False  # only what changed (e.g. just power readings)
    did = output_id(prefix, cid)
    kind = "on" if output else "off"
    brightness = number(status.get("brightness")) if output else None
    source = status.get("source")
    if isinstance(source, str) and source in _AUTOMATIC and not periodic:
        # The device switched itself (its timer, a schedule, power-on): not the resident. The state
        # is remembered, so the resident's next switch is still a change.
        out.put(f"{did}|state", kind)
        out.notes.append("boot_sync" if source == "init" else "automation")
        return True
    if periodic:
        out.periodic(did, "state", kind, kind, ts_ms, brightness)
    else:
        out.live(did, "state", kind, kind, ts_ms, brightness, sync=sync)
    out.route(did, {"d": NAME, "prefix": prefix, "comp": comp, "id": int(cid or 0)})
    if out.where.get("channel") is None:
        out.where["channel"] = int(cid or 0)
        out.where["device_id"] = did
    return True


def _input(out: Frame, prefix: str, cid: str, status: dict[str, Any], ts_ms: int, *, periodic: bool, sync: str | None) -> None:
    state = status.get("state")
    if not isinstance(state, bool):
        return  # button-mode inputs have state null: their presses come as NotifyEvent
    did = input_id(prefix, cid)
    kind = "on" if state else "off"
    if periodic:
        out.periodic(did, "state", kind, kind, ts_ms)
    else:
        out.live(did, "state", kind, kind, ts_ms, sync=sync)
    if out.where.get("channel") is None:
        out.where["channel"] = int(cid or 0)


def _rpc(prefix: str, payload: bytes, ctx: Context) -> Outcome:
    if not prefix:
        return reject("unrecognised_topic", "/events/rpc")
    obj = json_object(payload)
    if isinstance(obj, Outcome):
        return reject(obj.rejection.reason if obj.rejection else "bad_json", obj.rejection.detail if obj.rejection else "", device_name=prefix, device_id=base_id(prefix))
    out = Frame(ctx)
    src = obj.get("src")
    if isinstance(src, str) and src:
        out.put(f"shelly|{base_id(prefix)}|src", src)
    out.describe(_name(out, prefix), None, base_id(prefix))
    method, params = obj.get("method"), obj.get("params")
    if method not in ("NotifyStatus", "NotifyFullStatus", "NotifyEvent"):
        return out.outcome(reason="rpc_reply")  # responses to RPC calls, other notifications
    if type(params) is not dict:
        return reject("bad_params", repr(params)[:100], **out.where)
    ts_ms = _ts(params.get("ts"), ctx.now_ms)
    if method == "NotifyEvent":
        events = params.get("events")
        if type(events) is not list:
            return reject("bad_events", repr(events)[:100], **out.where)
        for ev in events:
            if type(ev) is not dict or not isinstance(ev.get("event"), str) or ev["event"] not in _PRESSES:
                continue
            ctype, _, cid = str(ev.get("component", "")).partition(":")
            if ctype not in ("input", "button") or not cid.isdigit():
                continue
            if not ctx.retained:
                out.add(Reading(input_id(prefix, cid), "motion", _ts(ev.get("ts"), ts_ms)))
            out.where["channel"] = int(cid)
        return out.outcome(reason="not_a_press")
    full = method == "NotifyFullStatus"
    sync = _sync(out, prefix)
    outputs = []
    for key, status in params.items():
        ctype, _, cid = key.partition(":")
        if type(status) is not dict or (cid and not cid.isdigit()):
            continue
        if ctype in _OUTPUTS and _output(out, prefix, ctype, cid, status, ts_ms, periodic=full, sync=sync):
            outputs.append(output_id(prefix, cid))
        elif ctype == "input":
            _input(out, prefix, cid, status, ts_ms, periodic=full, sync=sync)
    if full:
        out.mark_boot(f"shelly:{base_id(prefix)}")  # sent on (re)connect: statuses right after are syncs
        for did in outputs or [base_id(prefix)]:
            out.add(Reading(did, "heartbeat", ts_ms))
        return out.outcome("heartbeat")
    return out.outcome(reason="not_activity" if not out.notes else None)


def _status(prefix: str, comp: str, cid: str, payload: bytes, ctx: Context) -> Outcome:
    obj = json_object(payload)
    if isinstance(obj, Outcome):
        return reject(obj.rejection.reason if obj.rejection else "bad_json", obj.rejection.detail if obj.rejection else "", device_name=prefix, device_id=base_id(prefix))
    out = Frame(ctx)
    out.describe(_name(out, prefix), int(cid) if cid else None, base_id(prefix))
    sync = _sync(out, prefix)
    if comp in _OUTPUTS:
        _output(out, prefix, comp, cid, obj, ctx.now_ms, periodic=False, sync=sync)
    elif comp == "input":
        _input(out, prefix, cid, obj, ctx.now_ms, periodic=False, sync=sync)
    return out.outcome(reason="not_activity" if not out.notes else None)
