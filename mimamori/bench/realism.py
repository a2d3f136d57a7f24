"""How our simulated residents compare with real homes' logs (issue 14): the same figures from both.

    python -m mimamori.bench.realism --replay uci_adl:../shared/data/uci_adl_binary/OrdonezA_Sensors.txt \
        --replay uci_adl:../shared/data/uci_adl_binary/OrdonezB_Sensors.txt --households 40 --days 28 --seed 11

Per home, from its resident-caused events (switch, motion, door; local time):

- ``events_per_active_hour``: events per local hour that had any;
- ``active_hours_per_day``: local hours with any event, per day;
- ``silence_ge_{1,2,4}h_per_day_waking``: silences that began 08:00-20:00 and lasted at least 1/2/4 h,
  per day (sitting still for hours, naps, outings without a door sensor);
- ``nap_per_day``: silences of 1-3 h that began 12:00-17:00, per day;
- ``night_silence_median_h``: the longest silence that began 19:00-04:00 each night, median over nights;
- ``night_visits_per_night``: events between 01:00 and 05:00 per night (toilet visits);
- ``longest_silence_p90_h``: the longest silence of each local day (by its start), 90th percentile;
- ``outings_per_day`` / ``outing_median_h``: front-door events followed by 30 min or more of silence;
- ``sensor_dropout_days``: per sensor, local days with no event from it while the home had 30+ others
  (summed over sensors, per day): a sensor that drops out while the resident is about.

The simulator's homes are its ``--households`` first homes with their devices (``--bulbs-only`` for
homes with bulbs only, ``--with-motion`` for only those with a motion sensor, like the real logs),
without injected incidents. The real logs have 12 sensors each: events per hour are not comparable
with a simulated home of 3-5 devices; silences, naps, nights and outings are.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np

from mimamori.detector import model as m

H = 3600.0
DAY = 86400.0


def home_figures(t: np.ndarray, dev: np.ndarray, kind: np.ndarray, dev_kinds: np.ndarray, tz_offset_s: float = 0.0) -> dict[str, Any]:
    """The module's figures for one home's events (any order; non-activity events are ignored)."""
    act = np.isin(kind, m.ACTIVITY_CODES)
    order = np.argsort(t[act], kind="stable")
    t, dev, kind = t[act][order] + tz_offset_s, dev[act][order], kind[act][order]
    if len(t) < 2:
        return {}
    days = max((t[-1] - t[0]) / DAY, 1.0)
    hour_no = np.floor(t / H).astype(np.int64)
    active_hours = np.unique(hour_no)
    gaps = np.diff(t)
    start_h = (t[:-1] % DAY) / H
    waking = (start_h >= 8) & (start_h < 20)
    out: dict[str, Any] = {
        "days": round(days, 1),
        "events_per_day": round(len(t) / days, 1),
        "events_per_active_hour": round(len(t) / len(active_hours), 2),
        "active_hours_per_day": round(len(active_hours) / days, 1),
    }
    for g in (1, 2, 4):
        out[f"silence_ge_{g}h_per_day_waking"] = round(float(((gaps >= g * H) & waking).sum()) / days, 2)
    out["nap_per_day"] = round(float(((gaps >= H) & (gaps < 3 * H) & (start_h >= 12) & (start_h < 17)).sum()) / days, 2)
    # Nights: the longest silence that began 19:00-04:00, per night (a night belongs to the day it began in, from noon).
    night_start = (start_h >= 19) | (start_h < 4)
    night_id = np.floor((t[:-1] - 12 * H) / DAY).astype(np.int64)
    longest_night = [float(gaps[night_start & (night_id == n)].max()) / H for n in np.unique(night_id[night_start])]
    out["night_silence_median_h"] = round(float(np.median(longest_night)), 2) if longest_night else None
    local_h = (t % DAY) / H
    nights = max(len(np.unique(np.floor(t / DAY))), 1)
    out["night_visits_per_night"] = round(float(((local_h >= 1) & (local_h < 5)).sum()) / nights, 2)
    day_id = np.floor(t[:-1] / DAY).astype(np.int64)
    longest = [float(gaps[day_id == d].max()) / H for d in np.unique(day_id)]
    out["longest_silence_p90_h"] = round(float(np.percentile(longest, 90)), 2)
    is_door = dev_kinds[dev] == m.DEV_DOOR
    leave = is_door[:-1] & (gaps >= 0.5 * H)
    out["outings_per_day"] = round(float(leave.sum()) / days, 2) if is_door.any() else None
    out["outing_median_h"] = round(float(np.median(gaps[leave])) / H, 2) if leave.any() else None
    # Dropouts: a sensor silent all day while the home had at least 30 other events that day.
    day_all = np.floor(t / DAY).astype(np.int64)
    drop = 0
    sensors = np.unique(dev)
    for d in np.unique(day_all):
        on_day = day_all == d
        if on_day.sum() < 30:
            continue
        drop += len(sensors) - len(np.unique(dev[on_day]))
    out["sensor_dropout_days_per_day"] = round(drop / days, 2)
    out["devices"] = sorted({m.DEVICE_KINDS[int(k)] for k in dev_kinds[np.unique(dev)] if k >= 0})
    return out


def real_homes(specs: list[str]) -> list[dict[str, Any]]:
    from mimamori.bench.casas import home_name, parse_spec, read_log

    rows = []
    for spec in specs:
        log = read_log(*parse_spec(spec))
        rows.append({"home": home_name(spec), **home_figures(log.time, log.sensor, log.kind, np.array(log.sensor_kinds, np.int8))})
    return rows


def simulated_homes(households: int, days: float, seed: int, *, bulbs_only: bool = False,
                    with_motion: bool = False) -> list[dict[str, Any]]:
    from mimamori.bench.eval import replay_from_fleet
    from mimamori.firmware_sim.offline import simulate_offline

    fleet = simulate_offline(households, days, seed, bulbs_only=bulbs_only)
    rp = replay_from_fleet(fleet, 0.0)
    rows = []
    for h in range(rp.n):
        if with_motion and not (rp.device_kinds[h] == m.DEV_MOTION).any():
            continue
        sel = rp.hh == h
        rows.append({"home": f"sim-{seed}-{h}", **home_figures(rp.t[sel], rp.dev[sel], rp.kind[sel], rp.device_kinds[h],
                                                               float(rp.tz_offset_s[h]))})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range (10th-90th percentile) of each figure over homes."""
    keys = [k for k in rows[0] if k not in ("home", "devices", "days")] if rows else []
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows if r.get(k) is not None], float)
        if len(v):
            out[k] = {"median": round(float(np.median(v)), 2), "p10": round(float(np.percentile(v, 10)), 2),
                      "p90": round(float(np.percentile(v, 90)), 2)}
    return out


def compare(specs: list[str], households: int, days: float, seed: int, *, bulbs_only: bool = False,
            with_motion: bool = False) -> dict[str, Any]:
    real = real_homes(specs)
    sim = simulated_homes(households, days, seed, bulbs_only=bulbs_only, with_motion=with_motion)
    return {"real": real, "simulated": summarise(sim), "run": {"households": households, "days": days, "seed": seed,
                                                               "bulbs_only": bulbs_only, "with_motion": with_motion,
                                                               "simulated_homes": len(sim), "replay": specs}}


def table(result: dict[str, Any]) -> str:
    """A Markdown table: one column per real home, then the simulator's median (p10-p90)."""
    real, sim = result["real"], result["simulated"]
    head = "| figure | " + " | ".join(r["home"] for r in real) + " | simulator median (p10-p90) |"
    lines = [head, "|" + "---|" * (len(real) + 2)]
    for k, s in sim.items():
        cells = ["" if r.get(k) is None else str(r[k]) for r in real]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {s['median']} ({s['p10']}-{s['p90']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mimamori.bench.realism", description=__doc__.split("\n\n")[0])
    ap.add_argument("--replay", action="append", default=[], help="FORMAT:PATH of a real log (repeatable)")
    ap.add_argument("--households", type=int, default=40)
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--bulbs-only", action="store_true")
    ap.add_argument("--with-motion", action="store_true", help="only the simulated homes with a motion sensor")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    result = compare(a.replay, a.households, a.days, a.seed, bulbs_only=a.bulbs_only, with_motion=a.with_motion)
    print(json.dumps(result, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x) if a.json
          else table(result))


if __name__ == "__main__":
    main()
