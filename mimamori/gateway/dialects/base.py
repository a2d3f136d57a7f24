"""What every dialect shares: the result types, the topic layout, device ids and the first-report rule.

A dialect is a pure function ``handle(topic, payload, ctx) -> Outcome | None`` (None: not my topic).
``ctx`` carries the clock reading, the retained flag, the gateway's memory and the layout; the
``Outcome`` carries readings, memory updates and a ``Summary`` (what the message was, for
``mimamori gateway replay``/``listen`` and the logs).

The first-report rule (issue 13): a state report of a device whose state the gateway does not know
yet is a real change unless the message itself says it is a sync: the broker flagged it retained,
the device's own clock says it is old (Z2M ``last_seen``), or it came within a few seconds of the
device's (or its bridge's) boot (Tasmota ``LWT Online``/``UptimeSec``, Shelly ``online``/
``announce``, Z2M ``bridge/state online``). Losing a fresh gateway's first real switch is worse
than one invented switch per device on install day: a watcher can discount a switch on the day the
gateway was installed, nobody can recover one that was dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

MAX_LOCAL_PAYLOAD: Final = 64 * 1024
BOOT_WINDOW_MS: Final = 30_000  # what a device or bridge publishes this soon after booting is a sync
BRIDGE_WINDOW_MS: Final = 45_000  # Z2M republishes cached states at start, and 30 s after HA comes online (Koenkk/zigbee2mqtt#32067)
STALE_MS: Final = 30_000  # a report whose own timestamp is older than this is a cached state

ACTIVITY: Final = ("motion", "open", "close", "on", "off")  # summary priority, most telling first


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
    reason: str  # short, stable: "bad_json", "bad_power", ...
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Summary:
    """What one message was, in the terms of ``mimamori gateway replay``."""

    outcome: str  # event, online, offline, heartbeat, ignored, rejected
    kind: str | None = None
    device_name: str | None = None
    channel: int | str | None = None
    device_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one local message means. Empty ``readings`` and no ``rejection``: recognised, nothing to
    report. ``memory_updates`` are merged into the caller's memory (and persisted) either way."""

    readings: tuple[Reading, ...] = ()
    rejection: Rejection | None = None
    memory_updates: dict[str, str] = field(default_factory=dict)
    summary: Summary | None = None


def ignored(reason: str, **where: Any) -> Outcome:
    return Outcome(summary=Summary("ignored", reason=reason, **where))


def reject(reason: str, detail: str = "", **where: Any) -> Outcome:
    return Outcome(rejection=Rejection(reason, detail[:200]), summary=Summary("rejected", reason=reason, **where))


# ---------------------------------------------------------------------------------------------
# Topic layout (configurable per home)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each project publishes in this home. Defaults are each project's defaults."""

    z2m_base_topics: tuple[str, ...] = ("zigbee2mqtt",)
    tasmota_full_topics: tuple[str, ...] = ("%prefix%/%topic%/",)
    #: Shelly Gen2+ topic prefixes beyond the default (the device id, one level) and ``shellies/...``;
    #: any depth, e.g. ``home/kitchen/plus1pm``. Messages are recognised by their suffix anyway;
    #: these only widen the subscriptions.
    shelly_prefixes: tuple[str, ...] = ()

    def subscriptions(self) -> tuple[str, ...]:
        subs = ["mimamori/local/#", "homeassistant/status", "+/bridge/state"]  # the latter finds unconfigured Z2M bases
        subs += [f"{b.strip('/')}/#" for b in self.z2m_base_topics]
        for pattern in self.tasmota_full_topics:
            for prefix in ("stat", "tele"):
                filt = pattern.replace("%prefix%", prefix)
                filt = re.sub(r"%[a-z]+%", "+", filt).rstrip("/")
                subs.append(f"{filt}/#")
        # Tasmota FullTopics nobody configured (dialects.tasmota._guess): %topic%/%prefix%/, x/%topic%/%prefix%/ ...
        subs += ["+/stat/+", "+/tele/+", "+/+/stat/+", "+/+/tele/+"]
        subs += ["shellies/#", "+/events/rpc", "+/online", "+/status/+", "+/+/events/rpc", "+/+/online", "+/+/status/+"]
        subs += [f"{p.strip('/')}/#" for p in self.shelly_prefixes]
        return tuple(dict.fromkeys(subs))  # ordered, unique


DEFAULT_LAYOUT: Final = Layout()


@dataclass(frozen=True, slots=True)
class Context:
    now_ms: int
    memory: Mapping[str, str]
    retained: bool = False
    layout: Layout = DEFAULT_LAYOUT
    #: Replay "as a gateway that has seen these devices": a state report of a device whose state is
    #: not remembered counts as a change (the device existed; its state must have moved).
    assume_known: bool = False
    #: False when ``now_ms`` is not the time the message arrived (a replay without times): then the
    #: device's own timestamps and boot windows prove nothing.
    clock_trusted: bool = True


# ---------------------------------------------------------------------------------------------
# Device ids and small parsers
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
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]  # noqa: S324
        clean = f"{clean[:55]}-{digest}"
    return clean


def json_value(payload: bytes) -> Any:
    """The payload as JSON, or ``ValueError``."""
    try:
        return json.loads(payload)
    except UnicodeDecodeError as exc:
        raise ValueError(str(exc)) from exc


def json_object(payload: bytes) -> dict[str, Any] | Outcome:
    try:
        obj = json_value(payload)
    except ValueError as exc:
        return reject("bad_json", str(exc))
    if type(obj) is not dict:
        return reject("not_an_object", type(obj).__name__)
    return obj


def text(payload: bytes) -> str:
    return payload.decode("utf-8", errors="replace").strip()


#: ON/OFF words: Tasmota's StateText can be localised (``AN``/``AUS``...), Shelly Gen1 says on/off.
_ON_WORDS: Final = frozenset({"ON", "1", "TRUE", "AN", "EIN", "AAN", "ACCESO", "ENCENDIDO", "LIGADO", "WŁ", "ALLUME"})
_OFF_WORDS: Final = frozenset({"OFF", "0", "FALSE", "AUS", "UIT", "SPENTO", "APAGADO", "DESLIGADO", "WYŁ", "ETEINT"})


def on_off(value: object) -> bool | None:
    """``ON``/``OFF`` (any case, a few localisations), ``1``/``0``, booleans; else unknown."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().upper()
        if v in _ON_WORDS:
            return True
        if v in _OFF_WORDS:
            return False
    return None


def number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def epoch_ms(value: object) -> int | None:
    """A device timestamp (epoch seconds or ms, or an ISO 8601 string) in ms; None if unusable."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # noqa: FURB162
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None  # local time of unknown zone (Z2M ISO_8601_local is offset-qualified)
        return int(parsed.timestamp() * 1000)
    n = number(value)
    if n is None or n <= 0:
        return None
    return int(n if n > 1e11 else n * 1000)


# ---------------------------------------------------------------------------------------------
# One message's changes
# ---------------------------------------------------------------------------------------------


class Frame:
    """Collects readings, memory updates and the summary of one message against ``ctx.memory``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.updates: dict[str, str] = {}
        self.readings: list[Reading] = []
        self.notes: list[str] = []  # why a state report was not activity (sync, unchanged, ours)
        self.where: dict[str, Any] = {}

    # memory ---------------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        return self.updates.get(key, self.ctx.memory.get(key))

    def put(self, key: str, value: str) -> tuple[bool, str | None]:
        """Store ``value``; return (changed, previous)."""
        prev = self.get(key)
        if prev != value:
            self.updates[key] = value
        return prev != value, prev

    def keys(self, prefix: str) -> Iterable[str]:
        seen = {k for k in self.ctx.memory if k.startswith(prefix)}
        seen.update(k for k in self.updates if k.startswith(prefix))
        return sorted(seen)

    # boot windows ---------------------------------------------------------------------------

    def mark_boot(self, scope: str, at_ms: int | None = None) -> None:
        if not self.ctx.retained and self.ctx.clock_trusted:
            self.put(f"boot|{scope}", str(self.ctx.now_ms if at_ms is None else at_ms))

    def in_boot(self, scope: str, window_ms: int = BOOT_WINDOW_MS) -> bool:
        if not self.ctx.clock_trusted:
            return False
        raw = self.get(f"boot|{scope}")
        return raw is not None and raw.lstrip("-").isdigit() and 0 <= self.ctx.now_ms - int(raw) <= window_ms

    def stale(self, device_ts_ms: int | None) -> bool:
        return self.ctx.clock_trusted and device_ts_ms is not None and self.ctx.now_ms - device_ts_ms > STALE_MS

    # readings -------------------------------------------------------------------------------

    def add(self, reading: Reading) -> None:
        self.readings.append(reading)

    def live(self, device_id: str, field_name: str, new: str, kind: str, ts_ms: int, value: float | None = None,
             *, sync: str | None = None) -> None:
        """A report the device sends when something changed (and sometimes to resync). ``sync``: why
        this message may be a resync (boot window, stale timestamp); the retained flag is checked
        here. A known state: activity iff it changed. An unknown one: activity unless a sync."""
        changed, prev = self.put(f"{device_id}|{field_name}", new)
        if self._ours(device_id):
            self.notes.append("our_command")
            self.put(f"{device_id}|echoed", str(self.ctx.now_ms))  # the blink is confirmed
            return
        if prev is not None:
            if changed:
                self.add(Reading(device_id, kind, ts_ms, value))
            else:
                self.notes.append("unchanged")
            return
        if self.ctx.retained:  # a broker's copy of an old state, delivered on subscribing
            self.notes.append("retained_sync")
        elif self.ctx.assume_known:
            self.add(Reading(device_id, kind, ts_ms, value))
        elif sync:
            self.notes.append(sync)
        else:
            self.add(Reading(device_id, kind, ts_ms, value))

    def periodic(self, device_id: str, field_name: str, new: str, kind: str, ts_ms: int, value: float | None = None) -> None:
        """A report sent on a timer (Tasmota STATE, Shelly full status): activity only when it shows
        that a state we knew has changed (a switch whose own report we missed)."""
        changed, prev = self.put(f"{device_id}|{field_name}", new)
        if prev is not None and changed and not self._ours(device_id):
            self.add(Reading(device_id, kind, ts_ms, value))
        else:
            self.notes.append("periodic_state")

    def availability(self, device_id: str, online: bool) -> None:
        changed, _ = self.put(f"{device_id}|avail", "online" if online else "offline")
        if changed:
            self.add(Reading(device_id, "heartbeat" if online else "fault", self.ctx.now_ms))

    def _ours(self, device_id: str) -> bool:
        """Within the echo window of a blink we sent to this device: ``<device>|sent`` holds until
        when (``downlink.plan``) its state reports are the blink's echo."""
        raw = self.get(f"{device_id}|sent")
        return raw is not None and raw.isdigit() and self.ctx.now_ms <= int(raw)

    def route(self, device_id: str, route: Mapping[str, Any]) -> None:
        """Remember how to reach this device in its own language (for the downlink)."""
        self.put(f"route|{device_id}", json.dumps(route, separators=(",", ":"), sort_keys=True))

    # result ---------------------------------------------------------------------------------

    def describe(self, device_name: str | None = None, channel: int | str | None = None, device_id: str | None = None) -> Frame:
        self.where = {"device_name": device_name, "channel": channel, "device_id": device_id}
        return self

    def outcome(self, default: str = "ignored", reason: str | None = None) -> Outcome:
        """``default``: what the message is when it carried no activity (online, offline, heartbeat,
        ignored); ``reason`` for ignored (else the first note)."""
        summary: Summary
        activity = [r for r in self.readings if r.kind in ACTIVITY]
        if activity:
            best = min(activity, key=lambda r: ACTIVITY.index(r.kind))
            where = dict(self.where)
            where["device_id"] = best.device_id
            summary = Summary("event", best.kind, reason=None, **where)
        elif default == "ignored":
            summary = Summary("ignored", reason=reason or (self.notes[0] if self.notes else "not_activity"), **self.where)
        else:
            summary = Summary(default, reason=reason, **self.where)
        return Outcome(tuple(self.readings), None, self.updates, summary)


IGNORED_UNKNOWN: Final = Outcome(summary=Summary("ignored", reason="unrecognised_topic"))
