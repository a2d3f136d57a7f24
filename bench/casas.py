"""Read CASAS smart-home logs and turn one into an evaluation replay with injected incidents.

Format (whitespace separated, one event per line)::

    2010-11-04 05:40:51.303739 M004 ON
    2010-11-04 05:40:52.342105 Bedroom M005 OFF Sleeping end

i.e. ``date time [location] sensor value [label ...]``. Values ON/OFF/OPEN/CLOSE (any case; CASAS
files also contain typos such as ``ONc`` or ``OF`` which are repaired by prefix, and numeric
readings of temperature/light-level sensors, which are skipped). Sensors whose name contains
``Light`` are bulbs; a sensor that reports OPEN/CLOSE, or whose name starts with ``D``, is a door;
the rest are motion sensors. Lines out of order are sorted; malformed lines are counted and
skipped. Times are local wall-clock times (taken as UTC with a zero offset).

Incidents are injected by cutting the log: replica ``i`` of the home is the log up to a random time
after its first 7 days and nothing after it (a light that was on stays on: its ``off`` never comes).
One replica is left uncut as a control. The detector learns from the log itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from detector import model as m

DAY = 86400.0
_VALUES = {"ON": m.EV_ON, "OFF": m.EV_OFF, "OPEN": m.EV_OPEN, "CLOSE": m.EV_CLOSE, "CLOSED": m.EV_CLOSE}
_PREFIXES = (("OPEN", m.EV_OPEN), ("CLOSE", m.EV_CLOSE), ("OFF", m.EV_OFF), ("ON", m.EV_ON), ("OF", m.EV_OFF))


@dataclass
class CasasLog:
    time: np.ndarray  # float64, seconds (local wall clock read as UTC), sorted
    sensor: np.ndarray  # int32 index into sensors
    kind: np.ndarray  # int8 EV_*
    sensors: list[str]
    sensor_kinds: list[int]  # DEV_*
    lines: int
    malformed: int
    odd_values_repaired: int
    skipped_values: int
    unsorted: int


def _parse_time(date: str, clock: str) -> float:
    if "." in clock:
        main, frac = clock.split(".", 1)
        frac_s = float("0." + frac) if frac.isdigit() else math.nan
    else:
        main, frac_s = clock, 0.0
    dt = datetime.strptime(f"{date} {main}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + frac_s


def _value_code(raw: str) -> tuple[int | None, bool]:
    """(EV_* code or None, repaired?)"""
    v = raw.upper()
    code = _VALUES.get(v)
    if code is not None:
        return code, False
    for prefix, c in _PREFIXES:
        if v.startswith(prefix):
            return c, True
    return None, False


def read_casas(path: str) -> CasasLog:
    times: list[float] = []
    sensors: list[int] = []
    kinds: list[int] = []
    names: dict[str, int] = {}
    opened_closed: set[int] = set()
    lines = malformed = repaired = skipped = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            tok = line.split()
            if not tok:
                continue
            lines += 1
            if len(tok) < 4:
                malformed += 1
                continue
            try:
                t = _parse_time(tok[0], tok[1])
            except ValueError:
                malformed += 1
                continue
            if not math.isfinite(t):
                malformed += 1
                continue
            # sensor value, or location sensor value
            code, fixed = _value_code(tok[3])
            sensor = tok[2]
            if code is None and len(tok) >= 5:
                code5, fixed5 = _value_code(tok[4])
                if code5 is not None:
                    code, fixed, sensor = code5, fixed5, tok[3]
            if code is None:
                # numeric readings (temperature, light level) and unknown values: not activity
                skipped += 1
                continue
            repaired += fixed
            idx = names.setdefault(sensor, len(names))
            if code in (m.EV_OPEN, m.EV_CLOSE):
                opened_closed.add(idx)
            times.append(t)
            sensors.append(idx)
            kinds.append(code)
    t_arr = np.array(times, np.float64)
    unsorted = int(np.count_nonzero(np.diff(t_arr) < 0)) if len(t_arr) > 1 else 0
    order = np.argsort(t_arr, kind="stable")
    sensor_names = list(names)
    sensor_kinds = []
    for i, name in enumerate(sensor_names):
        if "light" in name.lower():
            sensor_kinds.append(m.DEV_BULB)
        elif i in opened_closed or name.upper().startswith("D"):
            sensor_kinds.append(m.DEV_DOOR)
        else:
            sensor_kinds.append(m.DEV_MOTION)
    return CasasLog(t_arr[order], np.array(sensors, np.int32)[order], np.array(kinds, np.int8)[order], sensor_names,
                    sensor_kinds, lines, malformed, repaired, skipped, unsorted)


def replay_from_casas(path: str, *, bulbs_only: bool = False, seed: int = 0, cuts: int | None = None,
                      learning_days: float = 7.0):
    """A ``bench.eval.Replay`` of the log: ``cuts`` replicas cut at random times, plus an uncut control."""
    from bench.eval import Replay

    log = read_casas(path)
    kinds = np.array(log.sensor_kinds, np.int8)
    keep_sensor = (kinds == m.DEV_BULB) if bulbs_only else np.ones(len(kinds), bool)
    # Bulbs report on/off only; door sensors report open/close (motion-style ON/OFF of a door: open/close).
    ev_kind = log.kind.copy()
    door = kinds[log.sensor] == m.DEV_DOOR
    ev_kind[door & (ev_kind == m.EV_ON)] = m.EV_OPEN
    ev_kind[door & (ev_kind == m.EV_OFF)] = m.EV_CLOSE
    motion = kinds[log.sensor] == m.DEV_MOTION
    ev_kind[motion & (ev_kind == m.EV_ON)] = m.EV_MOTION
    sel = keep_sensor[log.sensor] & ~(motion & (log.kind == m.EV_OFF))  # a motion sensor's OFF is only its timer
    t, sensor, kind = log.time[sel], log.sensor[sel], ev_kind[sel]
    info = {"lines": log.lines, "malformed_lines": log.malformed, "odd_values_repaired": log.odd_values_repaired,
            "non_switch_values_skipped": log.skipped_values, "out_of_order_lines": log.unsorted,
            "sensors": len(log.sensors), "bulbs": int((kinds == m.DEV_BULB).sum()),
            "doors": int((kinds == m.DEV_DOOR).sum()), "motion": int((kinds == m.DEV_MOTION).sum())}
    if len(t) == 0:
        raise ValueError(f"no usable events in {path} (bulbs_only={bulbs_only}): {info}")
    start, end = float(t[0]), float(t[-1])
    days = (end - start) / DAY
    info["days"] = round(days, 1)
    if days < learning_days + 1:
        raise ValueError(f"the log covers {days:.1f} days; need more than {learning_days + 1:.0f}")
    # Devices: the kept sensors, at most MAX_DEVICES per home (the busiest ones).
    used = np.unique(sensor)
    counts = np.bincount(sensor, minlength=len(kinds))[used]
    used = used[np.argsort(-counts, kind="stable")][: m.MAX_DEVICES]
    col = np.full(len(kinds), -1, np.int64)
    col[used] = np.arange(len(used))
    ok = col[sensor] >= 0
    t, dev, kind = t[ok], col[sensor[ok]], kind[ok]
    info["devices_used"] = len(used)
    info["events_used"] = int(len(t))
    n_cuts = cuts if cuts is not None else int(min(40, max(5, days // 3)))
    rng = np.random.default_rng(seed)
    lo, hi = start + learning_days * DAY, end - 1.0 * DAY
    cut_at = np.sort(rng.uniform(lo, hi, n_cuts)) if hi > lo else np.zeros(0)
    n = len(cut_at) + 1  # + the uncut control
    parts_t, parts_hh, parts_dev, parts_kind = [], [], [], []
    incidents = []
    for i in range(n):
        until = cut_at[i] if i < len(cut_at) else math.inf
        mask = t < until
        parts_t.append(t[mask])
        parts_hh.append(np.full(int(mask.sum()), i, np.int64))
        parts_dev.append(dev[mask])
        parts_kind.append(kind[mask])
        if i < len(cut_at):
            incidents.append({"household_id": f"replica-{i}", "kind": "cut", "start": float(until), "end": None,
                              "devices": [], "welfare": True, "technical": False, "details": {}, "hh": i, "area": i})
    all_t = np.concatenate(parts_t)
    order = np.argsort(all_t, kind="stable")
    device_kinds = np.full((n, m.MAX_DEVICES), m.DEV_NONE, np.int8)
    device_kinds[:, : len(used)] = kinds[used]
    rp = Replay(
        start=start,
        end=end,
        device_kinds=device_kinds,
        area=np.arange(n, dtype=np.int32),  # one home per "area": no area outages here
        tz_offset_s=np.zeros(n, np.int32),
        arrival=all_t[order],
        hh=np.concatenate(parts_hh)[order],
        dev=np.concatenate(parts_dev)[order],
        t=all_t[order],
        kind=np.concatenate(parts_kind)[order],
        incidents=incidents,
        learning_end=lo,
    )
    # False alerts are counted on the part of each replica before its cut.
    rp.observed_until = np.append(cut_at, end)
    info["cuts"] = len(cut_at)
    return rp, info
