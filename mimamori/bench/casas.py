"""Read real smart-home logs and turn one into an evaluation replay with injected incidents.

Three formats (``FORMATS``), all read into one ``SensorLog``:

- ``casas``: CASAS logs, whitespace separated, one event per line::

      2010-11-04 05:40:51.303739 M004 ON
      2010-11-04 05:40:52.342105 Bedroom M005 OFF Sleeping end
      2011-06-20 08:01:02.5 Bedroom Closet ON

  i.e. ``date time [location] sensor value [label ...]``, read by column position: the value is the
  4th column, or the 5th when the file has a location column. A line whose 4th or 5th column is
  exactly a value (ON/OFF/OPEN/CLOSE/CLOSED, any case) says so itself; otherwise the file's own
  layout (the column most of its lines carry their value in) decides, and only that column is
  repaired by prefix (CASAS files contain typos such as ``ONc`` or ``OF``). So a sensor named
  ``Closet`` or ``Dishwasher`` is never a value or a door. The sensor is the column just before the
  value (``Closet`` in ``Bedroom Closet ON``; ``Bedroom`` is its location). Numeric readings
  (temperature, light level) are skipped.
- ``uci_adl``: the UCI "ADLs Recognition Using Binary Sensors" files (Ordóñez et al. 2013):
  tab-separated ``Start time, End time, Location, Type, Place`` activation intervals after a header.
  PIR: motion at the start (the end is only its timer); Magnetic, Pressure, Flush, Electric: a human
  action at both ends. ``Maindoor`` is the front door (open/close); the other contacts (cupboards,
  fridge), the bed and seat, the toilet and the appliances are activity like a motion sensor.
- ``csv``: ``time,sensor,value[,kind]`` with an optional header; ``time`` ISO 8601 or epoch seconds;
  ``kind`` one of bulb/motion/door/plug (or a ``door_names``/``light_names`` map).

Device kinds, never by a first letter: a sensor whose name contains ``light`` (or listed in
``light_names``) is a bulb; one that reports OPEN/CLOSE, or listed in ``door_names``, is a door;
the rest are motion sensors. Lines out of order are sorted; malformed lines are counted and skipped.
Times are local wall-clock times (taken as UTC with a zero offset).

Incidents are injected by cutting the log: replica ``i`` of the home is the log up to a random time
after its first ``learning_days`` and nothing after it (a light that was on stays on: its ``off``
never comes). One replica is left uncut as a control. The detector learns from the log itself.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mimamori.bench.replay import Replay
from mimamori.detector import model as m

DAY = 86400.0
FORMATS = ("casas", "uci_adl", "csv")
_VALUES = {"ON": m.EV_ON, "OFF": m.EV_OFF, "OPEN": m.EV_OPEN, "CLOSE": m.EV_CLOSE, "CLOSED": m.EV_CLOSE,
           "MOTION": m.EV_MOTION}
_PREFIXES = (("OPEN", m.EV_OPEN), ("CLOSE", m.EV_CLOSE), ("OFF", m.EV_OFF), ("ON", m.EV_ON), ("OF", m.EV_OFF))
_KIND_NAMES = {"bulb": m.DEV_BULB, "light": m.DEV_BULB, "motion": m.DEV_MOTION, "door": m.DEV_DOOR, "plug": m.DEV_PLUG}


@dataclass
class SensorLog:
    time: np.ndarray  # float64, seconds (local wall clock read as UTC), sorted
    sensor: np.ndarray  # int32 index into sensors
    kind: np.ndarray  # int8 EV_* (ON/OFF of a door are already OPEN/CLOSE; a motion's ON is MOTION)
    sensors: list[str]
    sensor_kinds: list[int]  # DEV_*
    lines: int
    malformed: int
    odd_values_repaired: int
    skipped_values: int
    unsorted: int
    fmt: str = "casas"
    extra: dict[str, int] = field(default_factory=dict)


CasasLog = SensorLog  # the old name


def _parse_time(date: str, clock: str) -> float:
    if "." in clock:
        main, frac = clock.split(".", 1)
        frac_s = float("0." + frac) if frac.isdigit() else math.nan
    else:
        main, frac_s = clock, 0.0
    dt = datetime.strptime(f"{date} {main}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return dt.timestamp() + frac_s


def _exact(raw: str) -> int | None:
    return _VALUES.get(raw.upper())


def _repaired(raw: str) -> int | None:
    v = raw.upper()
    for prefix, c in _PREFIXES:
        if v.startswith(prefix):
            return c
    return None


def _finish(fmt: str, rows: list[tuple[float, str, int]], *, lines: int, malformed: int, repaired: int, skipped: int,
            door_names: Iterable[str] = (), light_names: Iterable[str] = (), kinds_given: dict[str, int] | None = None,
            extra: dict[str, int] | None = None) -> SensorLog:
    """Rows (time, sensor name, EV_* code as read) into a sorted ``SensorLog`` with device kinds."""
    names: dict[str, int] = {}
    opened_closed: set[str] = set()
    for _, s, c in rows:
        names.setdefault(s, len(names))
        if c in (m.EV_OPEN, m.EV_CLOSE):
            opened_closed.add(s)
    doors, lights = set(door_names), set(light_names)
    sensor_names = list(names)
    sensor_kinds = []
    for name in sensor_names:
        if kinds_given and name in kinds_given:
            sensor_kinds.append(kinds_given[name])
        elif name in lights or (name not in doors and "light" in name.lower()):
            sensor_kinds.append(m.DEV_BULB)
        elif name in doors or name in opened_closed:
            sensor_kinds.append(m.DEV_DOOR)
        else:
            sensor_kinds.append(m.DEV_MOTION)
    t_arr = np.array([r[0] for r in rows], np.float64)
    s_arr = np.array([names[r[1]] for r in rows], np.int32)
    k_arr = np.array([r[2] for r in rows], np.int8)
    dk = np.array(sensor_kinds, np.int8)[s_arr] if len(rows) else np.zeros(0, np.int8)
    # In the detector's codes: a door's ON/OFF is OPEN/CLOSE; a motion sensor's ON is motion, its
    # OFF only its timer (dropped); a bulb's OPEN/CLOSE (odd) is ON/OFF.
    k_arr[(dk == m.DEV_DOOR) & (k_arr == m.EV_ON)] = m.EV_OPEN
    k_arr[(dk == m.DEV_DOOR) & (k_arr == m.EV_OFF)] = m.EV_CLOSE
    switch = (dk == m.DEV_BULB) | (dk == m.DEV_PLUG)
    k_arr[switch & (k_arr == m.EV_OPEN)] = m.EV_ON
    k_arr[switch & (k_arr == m.EV_CLOSE)] = m.EV_OFF
    motion = dk == m.DEV_MOTION
    k_arr[motion & np.isin(k_arr, (m.EV_ON, m.EV_OPEN, m.EV_CLOSE))] = m.EV_MOTION
    keep = ~(motion & (k_arr == m.EV_OFF))
    switch_on = switch & (k_arr == m.EV_MOTION)
    k_arr[switch_on] = m.EV_ON
    t_arr, s_arr, k_arr = t_arr[keep], s_arr[keep], k_arr[keep]
    unsorted = int(np.count_nonzero(np.diff(t_arr) < 0)) if len(t_arr) > 1 else 0
    order = np.argsort(t_arr, kind="stable")
    return SensorLog(t_arr[order], s_arr[order], k_arr[order], sensor_names, sensor_kinds, lines, malformed, repaired,
                     skipped, unsorted, fmt, extra or {})


def read_casas(path: str, *, door_names: Iterable[str] = (), light_names: Iterable[str] = ()) -> SensorLog:
    parsed: list[tuple[float, list[str]]] = []
    lines = malformed = 0
    layout: Counter[int] = Counter()
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
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
            parsed.append((t, tok))
            for col in (3, 4):
                if len(tok) > col and _exact(tok[col]) is not None:
                    layout[col] += 1
                    break
    value_col = 4 if layout[4] > layout[3] else 3
    rows: list[tuple[float, str, int]] = []
    repaired = skipped = 0
    for t, tok in parsed:
        col = next((c for c in (3, 4) if len(tok) > c and _exact(tok[c]) is not None), None)
        code = None if col is None else _exact(tok[col])
        if col is None and len(tok) > value_col:
            col = value_col
            code = _repaired(tok[col])
            repaired += code is not None
        if code is None or col is None:
            # numeric readings (temperature, light level) and unknown values: not activity
            skipped += 1
            continue
        rows.append((t, tok[col - 1], code))
    return _finish("casas", rows, lines=lines, malformed=malformed, repaired=repaired, skipped=skipped,
                   door_names=door_names, light_names=light_names,
                   extra={"value_column": value_col + 1, "lines_with_location": layout[4]})


def read_uci_adl(path: str, *, front_doors: Iterable[str] = ("Maindoor",)) -> SensorLog:
    """The UCI ADL binary-sensor format (see the module text)."""
    fronts = {f.lower() for f in front_doors}
    rows: list[tuple[float, str, int]] = []
    lines = malformed = skipped = 0
    kinds: dict[str, int] = {}
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            tok = [x.strip() for x in line.rstrip("\n").split("\t") if x.strip()]
            if not tok or tok[0].startswith(("Start", "-")):
                continue
            lines += 1
            if len(tok) < 4:
                malformed += 1
                continue
            try:
                d0, c0 = tok[0].split()
                d1, c1 = tok[1].split()
                t0, t1 = _parse_time(d0, c0), _parse_time(d1, c1)
            except ValueError:
                malformed += 1
                continue
            location, typ = tok[2], tok[3].lower()
            name = f"{location} {tok[4]}" if len(tok) > 4 else location
            if location.lower() in fronts:
                kinds[name] = m.DEV_DOOR
                rows.append((t0, name, m.EV_OPEN))
                rows.append((t1, name, m.EV_CLOSE))
            elif typ == "pir":
                kinds[name] = m.DEV_MOTION
                rows.append((t0, name, m.EV_MOTION))
            elif typ in ("magnetic", "pressure", "flush", "electric"):
                kinds[name] = m.DEV_MOTION
                rows.append((t0, name, m.EV_MOTION))
                if t1 > t0:
                    rows.append((t1, name, m.EV_MOTION))
            else:
                skipped += 1
    return _finish("uci_adl", rows, lines=lines, malformed=malformed, repaired=0, skipped=skipped, kinds_given=kinds)


def _csv_time(raw: str) -> float:
    raw = raw.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    dt = datetime.fromisoformat(raw)  # Python 3.11 reads a trailing "Z"
    if dt.tzinfo is not None:  # local wall clock: keep the clock reading, drop the offset
        dt = dt.replace(tzinfo=None)
    return dt.replace(tzinfo=UTC).timestamp()


def read_csv_log(path: str, *, door_names: Iterable[str] = (), light_names: Iterable[str] = ()) -> SensorLog:
    """``time,sensor,value[,kind]`` (see the module text)."""
    rows: list[tuple[float, str, int]] = []
    kinds: dict[str, int] = {}
    lines = malformed = skipped = repaired = 0
    with Path(path).open(encoding="utf-8", errors="replace", newline="") as fh:
        for rec in csv.reader(fh):
            if not rec or not "".join(rec).strip() or rec[0].lstrip().startswith("#"):
                continue
            if rec[0].strip().lower() == "time":
                continue  # header
            lines += 1
            if len(rec) < 3:
                malformed += 1
                continue
            try:
                t = _csv_time(rec[0])
            except ValueError:
                malformed += 1
                continue
            name, raw = rec[1].strip(), rec[2].strip()
            code = _exact(raw)
            if code is None:
                code = _repaired(raw)
                repaired += code is not None
            if code is None:
                skipped += 1
                continue
            if len(rec) > 3 and rec[3].strip():
                kind = _KIND_NAMES.get(rec[3].strip().lower())
                if kind is None:
                    malformed += 1
                    continue
                kinds[name] = kind
            rows.append((t, name, code))
    return _finish("csv", rows, lines=lines, malformed=malformed, repaired=repaired, skipped=skipped,
                   door_names=door_names, light_names=light_names, kinds_given=kinds)


READERS = {"casas": read_casas, "uci_adl": read_uci_adl, "csv": read_csv_log}


def read_log(fmt: str, path: str) -> SensorLog:
    if fmt not in READERS:
        raise ValueError(f"unknown log format {fmt!r}; known: {', '.join(FORMATS)}")
    return READERS[fmt](path)


def parse_spec(spec: str) -> tuple[str, str]:
    """``FORMAT:PATH`` (``casas:logs/hh101.txt``)."""
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in READERS or not path:
        raise ValueError(f"expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}, got {spec!r}")
    return fmt, path


def home_name(spec: str) -> str:
    _, path = parse_spec(spec)
    return Path(path).stem


def replay_from_log(log: SensorLog, *, bulbs_only: bool = False, seed: int = 0, cuts: int | None = None,
                    learning_days: float = 7.0, source: str = "") -> Replay:
    """A ``bench.eval.Replay`` of the log: ``cuts`` replicas cut at random times, plus an uncut control."""
    kinds = np.array(log.sensor_kinds, np.int8)
    keep_sensor = (kinds == m.DEV_BULB) if bulbs_only else np.ones(len(kinds), bool)
    sel = keep_sensor[log.sensor] if len(kinds) else np.zeros(0, bool)
    t, sensor, kind = log.time[sel], log.sensor[sel], log.kind[sel]
    info = {"format": log.fmt, "lines": log.lines, "malformed_lines": log.malformed,
            "odd_values_repaired": log.odd_values_repaired, "non_switch_values_skipped": log.skipped_values,
            "out_of_order_lines": log.unsorted, "sensors": len(log.sensors),
            "bulbs": int((kinds == m.DEV_BULB).sum()), "doors": int((kinds == m.DEV_DOOR).sum()),
            "motion": int((kinds == m.DEV_MOTION).sum()), "plugs": int((kinds == m.DEV_PLUG).sum()), **log.extra}
    if len(t) == 0:
        raise ValueError(f"no usable events in {source or 'the log'} (bulbs_only={bulbs_only}): {info}")
    start, end = float(t[0]), float(t[-1])
    days = (end - start) / DAY
    info["days"] = round(days, 1)
    if days < learning_days + 1:
        raise ValueError(f"the log covers {days:.1f} days; need more than {learning_days + 1:.0f}")
    # Devices: at most MAX_DEVICES per home: the busiest of each kind, then the busiest others; a motion
    # sensor or door beyond them reports through the busiest kept one of its kind (a home with 40
    # sensors keeps all its activity), a bulb or plug beyond them is dropped (its on/off state is its own).
    present = np.unique(sensor)
    counts = np.bincount(sensor, minlength=len(kinds))
    by_busy = present[np.argsort(-counts[present], kind="stable")]
    used: list[int] = []
    used.extend(int(next(x for x in by_busy if kinds[x] == k)) for k in dict.fromkeys(int(kinds[x]) for x in by_busy))
    used += [int(x) for x in by_busy if int(x) not in used][: max(m.MAX_DEVICES - len(used), 0)]
    used_arr = np.array(used[: m.MAX_DEVICES], np.int64)
    col = np.full(len(kinds), -1, np.int64)
    col[used_arr] = np.arange(len(used_arr))
    folded = 0
    for x in by_busy:
        if col[x] < 0 and kinds[x] in (m.DEV_MOTION, m.DEV_DOOR):
            same = [u for u in used_arr if kinds[u] == kinds[x]]
            if same:
                col[x] = col[same[0]]
                folded += 1
    ok = col[sensor] >= 0
    t, dev, kind = t[ok], col[sensor[ok]], kind[ok]
    used = used_arr  # type: ignore[assignment]
    info["devices_used"] = len(used)
    info["sensors_folded"] = folded
    info["events_used"] = len(t)
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


def replay_from_casas(path: str, *, bulbs_only: bool = False, seed: int = 0, cuts: int | None = None,
                      learning_days: float = 7.0) -> Replay:
    return replay_from_log(read_casas(path), bulbs_only=bulbs_only, seed=seed, cuts=cuts, learning_days=learning_days,
                           source=path)
