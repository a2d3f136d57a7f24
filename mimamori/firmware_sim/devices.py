"""Device firmware: turns resident actions into the events each device would send.

- **bulb**: reports ``on``/``off`` when its room's light is switched and its state changes; the
  state persists (across power cuts too: "restore previous state").
- **motion** sensor: ``motion`` when it sees movement in its room, at most one per
  ``MOTION_HOLDOFF_S`` (the PIR's blind time), so continuous presence gives at most one a minute.
- **door** sensor: ``open`` / ``close``.
- **plug** (kettle): ``on`` (value = watts) / ``off``.
- Every device sends ``boot`` when powered up and a ``heartbeat`` every ``heartbeat_s``. ``seq``
  increases by one per event, is persisted (a reboot continues it) and a heartbeat does not
  consume one: it carries the latest ``seq`` (see ``mimamori.kernel.protocol``).
- While its gateway is down a device keeps its events in a local buffer and delivers them when
  the gateway is back (``arrival``); heartbeats are not buffered (a stale heartbeat says nothing).

Vectorised over numpy arrays: one call per device for the whole simulated period.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mimamori.firmware_sim.homes import DeviceSpec
from mimamori.firmware_sim.resident import (
    ACTIVE,
    APPLIANCE_OFF,
    APPLIANCE_ON,
    ASLEEP,
    CALM,
    DOOR_CLOSE,
    DOOR_OPEN,
    ENTER,
    LIGHT_OFF,
    LIGHT_ON,
    STILL,
    ResidentActions,
)

#: Event kind codes: ``kind`` arrays hold an index into this tuple.
KIND_CODES: tuple[str, ...] = ("on", "off", "motion", "open", "close", "heartbeat", "boot", "fault")
K_ON, K_OFF, K_MOTION, K_OPEN, K_CLOSE, K_HEARTBEAT, K_BOOT, K_FAULT = range(len(KIND_CODES))
ACTIVITY_CODES = np.array([K_ON, K_OFF, K_MOTION, K_OPEN, K_CLOSE], dtype=np.int8)

MOTION_HOLDOFF_S = 60.0
# Mean time between movements the PIR can see, beyond its hold-off, by activity level.
# (Issue 14, bench.realism: real sensor homes sit still for hours and sleep without tripping the
# bedroom sensor; with CALM 420 s and ASLEEP 4 h the simulated homes had a third of the real homes'
# waking silences of 1 h and more and nights of 5 h instead of 7.5-9.5 h.)
_MOTION_GAP_S = {ASLEEP: 12 * 3600.0, CALM: 1200.0, ACTIVE: 45.0}
PLUG_WATTS = 1200.0
DEFAULT_HEARTBEAT_S = 1800.0

Interval = tuple[float, float]  # [start, end); end may be math.inf


@dataclass
class EventArrays:
    """Events of one household (or one device), parallel arrays."""

    time: np.ndarray  # float64 device time, epoch s (millisecond resolution)
    device: np.ndarray  # int32 index into the household's devices
    kind: np.ndarray  # int8 index into KIND_CODES
    value: np.ndarray  # float32, NaN for none
    seq: np.ndarray  # int64
    arrival: np.ndarray  # float64: when the device could hand it to its gateway

    @staticmethod
    def empty() -> EventArrays:
        return EventArrays(np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0))

    def __len__(self) -> int:
        return len(self.time)

    @staticmethod
    def concat(parts: Sequence[EventArrays]) -> EventArrays:
        if not parts:
            return EventArrays.empty()
        return EventArrays(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("time", "device", "kind", "value", "seq", "arrival")))

    def take(self, index: np.ndarray) -> EventArrays:
        return EventArrays(self.time[index], self.device[index], self.kind[index], self.value[index], self.seq[index], self.arrival[index])


def in_intervals(t: np.ndarray, intervals: Sequence[Interval]) -> np.ndarray:
    mask = np.zeros(len(t), dtype=bool)
    for a, b in intervals:
        mask |= (t >= a) & (t < b)
    return mask


def apply_holdoff(t: np.ndarray, holdoff: float) -> np.ndarray:
    """Drop triggers within ``holdoff`` of the previous reported one (sorted input)."""
    if len(t) < 2 or bool((np.diff(t) >= holdoff).all()):
        return t
    kept: list[float] = []
    last = -math.inf
    for x in t.tolist():
        if x - last >= holdoff:
            kept.append(x)
            last = x
    return np.asarray(kept)


def _switch_events(times: np.ndarray, values: np.ndarray, initial: bool) -> tuple[np.ndarray, np.ndarray]:
    """State-change events of a switched device: ``values`` are commanded states in time order."""
    prev = np.concatenate([[initial], values[:-1]]) if len(values) else values
    changed = values != prev
    return times[changed], values[changed]


def bulb_or_plug_events(actions: ResidentActions, room: int, on_code: int, off_code: int, start: float, dead: Sequence[Interval]) -> tuple[np.ndarray, np.ndarray]:
    sel = (actions.room == room) & ((actions.action == on_code) | (actions.action == off_code))
    t = actions.time[sel]
    v = actions.action[sel] == on_code
    alive = ~in_intervals(t, dead)  # a dead or unpowered device neither switches nor reports
    t, v = t[alive], v[alive]
    before = t < start
    initial = bool(v[before][-1]) if before.any() else False
    return _switch_events(t[~before], v[~before], initial)


def presence_intervals(actions: ResidentActions, room: int, end: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, level) of every stay in ``room``."""
    enters = np.flatnonzero(actions.action == ENTER)
    t = actions.time[enters]
    stop = np.concatenate([t[1:], [end]])
    here = actions.room[enters] == room
    return t[here], stop[here], actions.level[enters][here]


def motion_events(actions: ResidentActions, room: int, start: float, end: float, rng: np.random.Generator) -> np.ndarray:
    a, b, level = presence_intervals(actions, room, end)
    moving = (level != STILL) & (b > start)
    a, b, level = a[moving], np.minimum(b[moving], end), level[moving]
    if len(a) == 0:
        return np.zeros(0)
    gap_mean = np.select([level == ASLEEP, level == CALM, level == ACTIVE], [_MOTION_GAP_S[ASLEEP], _MOTION_GAP_S[CALM], _MOTION_GAP_S[ACTIVE]], 300.0)
    # At most one trigger per hold-off, so floor(duration / hold-off) + 1 candidates suffice.
    n = (np.floor((b - a) / MOTION_HOLDOFF_S) + 1).astype(np.int64)
    seg = np.repeat(np.arange(len(a)), n)
    # One uniform per candidate, in time order: the draws for a stay do not depend on later stays,
    # so an incident that cuts the story short leaves everything before it unchanged.
    u = rng.random(len(seg))
    gaps = MOTION_HOLDOFF_S - np.log1p(-u) * gap_mean[seg]
    first = np.cumsum(n) - n
    gaps[first] = 1.0 + 3.0 * u[first]  # walking in triggers it at once
    cs = np.cumsum(gaps)
    base = cs[first] - gaps[first]
    t = a[seg] + (cs - base[seg])
    t = t[(t < b[seg]) & (t >= start)]
    t = np.round(t * 1000.0) / 1000.0
    return apply_holdoff(t, MOTION_HOLDOFF_S)


def door_events(actions: ResidentActions, start: float) -> tuple[np.ndarray, np.ndarray]:
    sel = ((actions.action == DOOR_OPEN) | (actions.action == DOOR_CLOSE)) & (actions.time >= start)
    return actions.time[sel], np.where(actions.action[sel] == DOOR_OPEN, K_OPEN, K_CLOSE).astype(np.int8)


def _ms(t: np.ndarray) -> np.ndarray:
    return np.round(t * 1000.0) / 1000.0


def firmware_events(
    devices: Sequence[DeviceSpec],
    actions: ResidentActions,
    start: float,
    end: float,
    rng: np.random.Generator,
    *,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    dead: dict[int, list[Interval]] | None = None,
    power_cuts: Sequence[Interval] = (),
    gateway_down: Sequence[Interval] = (),
) -> EventArrays:
    """Every event the household's devices send in [start, end).

    ``dead``: per device index, intervals in which that device is broken (no events, no heartbeats).
    ``power_cuts``: mains devices are unpowered (and boot when power returns); battery ones go on.
    ``gateway_down``: events are buffered on the device until the gateway is back; heartbeats lost.
    """
    dead = dead or {}
    parts: list[EventArrays] = []
    # Per-device random draws come first and in a fixed order, so the streams are reproducible.
    boot_at = start + rng.uniform(0.5, 30.0, len(devices))
    phase = rng.uniform(0.0, heartbeat_s, len(devices))
    reconnect_delay = rng.uniform(5.0, 60.0, max(1, len(gateway_down)))
    for i, dev in enumerate(devices):
        dev_rng = np.random.Generator(np.random.PCG64(rng.integers(0, 2**63)))
        down = list(dead.get(i, []))
        if dev.mains:
            down += list(power_cuts)
        room = dev.room_index
        values: np.ndarray | None = None
        if dev.kind == "bulb":
            t, v = bulb_or_plug_events(actions, room, LIGHT_ON, LIGHT_OFF, start, down)
            kinds = np.where(v, K_ON, K_OFF).astype(np.int8)
        elif dev.kind == "plug":
            t, v = bulb_or_plug_events(actions, room, APPLIANCE_ON, APPLIANCE_OFF, start, down)
            kinds = np.where(v, K_ON, K_OFF).astype(np.int8)
            values = np.where(v, PLUG_WATTS, np.nan).astype(np.float32)
        elif dev.kind == "motion":
            t = motion_events(actions, room, start, end, dev_rng)
            kinds = np.full(len(t), K_MOTION, np.int8)
        elif dev.kind == "door":
            t, kinds = door_events(actions, start)
        else:
            raise ValueError(f"unknown device kind {dev.kind!r}")
        keep = ~in_intervals(t, down) & (t < end)
        t, kinds = t[keep], kinds[keep]
        values = values[keep] if values is not None else np.full(len(t), np.nan, np.float32)
        # Boots: at start, and whenever power (or a replaced device) comes back.
        boots = [float(boot_at[i])] + [b + float(dev_rng.uniform(1.0, 20.0)) for a, b in down if b < end and b > start]
        boots_t = _ms(np.asarray([b for b in boots if b < end]))
        boots_t = boots_t[~in_intervals(boots_t, down)]
        hb = _ms(start + phase[i] + np.arange(0.0, max(0.0, end - start), heartbeat_s) + dev_rng.uniform(-2.0, 2.0, math.ceil(max(0.0, end - start) / heartbeat_s)))
        hb = hb[(hb > boots_t[0] if len(boots_t) else hb >= start) & (hb < end)]
        hb = hb[~in_intervals(hb, down) & ~in_intervals(hb, gateway_down)]
        ev_t = np.concatenate([boots_t, t])
        ev_k = np.concatenate([np.full(len(boots_t), K_BOOT, np.int8), kinds])
        ev_v = np.concatenate([np.full(len(boots_t), np.nan, np.float32), values])
        order = np.argsort(ev_t, kind="stable")
        ev_t, ev_k, ev_v = ev_t[order], ev_k[order], ev_v[order]
        ev_seq = np.arange(1, len(ev_t) + 1, dtype=np.int64)
        hb_seq = np.searchsorted(ev_t, hb, side="right").astype(np.int64)  # latest seq used by then
        parts.append(
            EventArrays(
                np.concatenate([ev_t, hb]),
                np.full(len(ev_t) + len(hb), i, np.int32),
                np.concatenate([ev_k, np.full(len(hb), K_HEARTBEAT, np.int8)]),
                np.concatenate([ev_v, np.full(len(hb), np.nan, np.float32)]),
                np.concatenate([ev_seq, hb_seq]),
                np.zeros(0),  # filled below
            )
        )
    events = EventArrays.concat(parts)
    events.arrival = events.time.copy()
    for j, (a, b) in enumerate(gateway_down):
        held = (events.time >= a) & (events.time < b)
        events.arrival[held] = _ms(np.asarray(b + reconnect_delay[j]))
    order = np.lexsort((events.seq, events.time))
    return events.take(order)
