"""The figures of an evaluation: which alerts detect which injected incident, their delays, the false
alerts per household-month, and the what-if of asking the resident first (see ``bench.eval``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from mimamori.bench.replay import DAY, H, Replay
from mimamori.detector import model as m
from mimamori.firmware_sim.offline import AWAY, PRESENT_ASLEEP, PRESENT_AWAKE
from mimamori.kernel import contract

DETECTION_WINDOW_S = 72 * H


EXPLAIN_GRACE_S = 12 * H


#: Alert kinds in report order (the service's incident kinds, ``mimamori.kernel.contract``).
WELFARE_ALERTS = (contract.INACTIVITY, contract.LONG_ON)


ALERT_KINDS = (*WELFARE_ALERTS, contract.DEVICE_OFFLINE, contract.AREA_OUTAGE)


class AlertLog:
    """Open/close transitions of per-key conditions; records each opening."""

    def __init__(self) -> None:
        self.open: dict[str, np.ndarray] = {}
        self.opened: list[tuple[str, int, float]] = []  # (alert kind, household or area, time)
        self.evidence: list[dict[str, Any]] = []  # parallel to ``opened``
        # Re-detections that update an open alert with new evidence (e.g. one more device down):
        # the service updates the incident row and tells the coordinator.
        self.updated: list[tuple[str, int, float]] = []
        self.closed: list[tuple[str, int, float]] = []
        self._extent: dict[str, np.ndarray] = {}

    def update_extent(self, kind: str, extent: np.ndarray, now: float) -> None:
        """Record an update where an open alert's extent (e.g. devices offline) grew."""
        prev = self._extent.get(kind)
        is_open = self.open.get(kind)
        if prev is not None and is_open is not None:
            for k in np.flatnonzero(is_open & (extent > prev)).tolist():
                self.updated.append((kind, k, now))
        self._extent[kind] = extent.copy()

    def update(self, kind: str, condition: np.ndarray, now: float, evidence: Any = None) -> None:
        prev = self.open.get(kind)
        if prev is None:
            prev = np.zeros(len(condition), bool)
        for k in np.flatnonzero(condition & ~prev).tolist():
            self.opened.append((kind, k, now))
            self.evidence.append(evidence(k) if evidence is not None else {})
        for k in np.flatnonzero(prev & ~condition).tolist():
            self.closed.append((kind, k, now))
        self.open[kind] = condition.copy()


def expected_alerts(inc: dict[str, Any]) -> tuple[str, ...]:
    """Alert kinds that detect this incident; () = no alert expected."""
    kind = inc["kind"]
    if kind in ("collapse", "bathroom_collapse", "hospital_stay", "cut"):
        return WELFARE_ALERTS if inc["welfare"] else ()
    if kind in ("bulb_failure", "gateway_power_loss"):
        return (contract.DEVICE_OFFLINE,)
    if kind == "area_power_cut":
        return (contract.AREA_OUTAGE,)
    return ()


def _explains(inc: dict[str, Any], alert_kind: str, t: float, end_of_run: float) -> bool:
    end = inc["end"] if inc["end"] is not None else end_of_run
    if not inc["start"] <= t <= end + EXPLAIN_GRACE_S:
        return False
    kind = inc["kind"]
    if alert_kind in WELFARE_ALERTS:
        if kind in ("collapse", "bathroom_collapse", "cut"):
            return True
        if kind == "hospital_stay":
            # Taken to hospital: a check is fair until a watcher has set away mode.
            return inc["welfare"] or t < inc["details"].get("away_set_at", math.inf)
        return False
    if alert_kind == contract.DEVICE_OFFLINE:
        return kind in ("bulb_failure", "gateway_power_loss", "area_power_cut")
    if alert_kind == contract.AREA_OUTAGE:
        return kind == "area_power_cut"
    return False


def _delay_stats(delays: list[float]) -> dict[str, float | None]:
    if not delays:
        return {"median_delay_h": None, "p90_delay_h": None}
    d = np.array(delays) / H
    return {"median_delay_h": round(float(np.median(d)), 2), "p90_delay_h": round(float(np.percentile(d, 90)), 2)}


def _silence_lookup(rp: Replay) -> Any:
    """``f(household, t)``: length (s) of the silence around ``t``: from the household's last
    resident-caused event at or before ``t`` to its first one after (inf: none after).
    """
    act = np.isin(rp.kind, m.ACTIVITY_CODES)
    hh, t = rp.hh[act], rp.t[act]
    order = np.lexsort((t, hh))
    hh, t = hh[order], t[order]
    lo = np.searchsorted(hh, np.arange(rp.n), side="left")
    hi = np.searchsorted(hh, np.arange(rp.n), side="right")

    def silence_around(h: int, when: float) -> float:
        times = t[lo[h]:hi[h]]
        i = int(np.searchsorted(times, when, side="right"))
        before = float(times[i - 1]) if i > 0 else float(rp.start)
        return (float(times[i]) if i < len(times) else math.inf) - before

    return silence_around


@dataclass(frozen=True)
class ResidentCheck:
    """The what-if of asking the resident first (see the module text)."""

    answer_rate: float
    minutes: float = 10.0
    waking_hours: tuple[int, int] = (7, 22)  # local [from, to)
    seed: int = 0


WELFARE_INCIDENTS = ("collapse", "bathroom_collapse", "hospital_stay", "cut")


def metrics(rp: Replay, log: AlertLog, *, households: int | None = None,
            resident_check: ResidentCheck | None = None, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """``raw``: filled with the welfare delays (s), the team's delays, the false alerts and the months
    behind them, to pool several replays (``pool_metrics``).
    """
    n = rp.n if households is None else households
    by_target: dict[tuple[str, int], list[float]] = defaultdict(list)
    for kind, key, t in log.opened + log.updated:
        by_target[(kind, key)].append(t)
    # Open intervals, to see whether an alert of the right kind was already open when an incident
    # began (a silence that had already raised an alert went on into the incident).
    intervals: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    closes: dict[tuple[str, int], list[float]] = defaultdict(list)
    for kind, key, t in log.closed:
        closes[(kind, key)].append(t)
    for kind, key, t in log.opened:
        later = [c for c in closes[(kind, key)] if c > t]
        intervals[(kind, key)].append((t, min(later) if later else math.inf))
    already_open = 0
    welfare_hh: list[tuple[int, float]] = []  # (household, delay) of detected welfare incidents
    false_hh: list[tuple[int, bool]] = []  # (household, spared by the resident) of counted false alerts
    delays: list[float] = []
    team_delays: list[float] = []  # welfare incidents, with a resident check first: they reach the team later
    per_kind: dict[str, dict[str, Any]] = {}
    kinds_delays: dict[str, list[float]] = defaultdict(list)
    kinds_n: dict[str, int] = defaultdict(int)
    kinds_hit: dict[str, int] = defaultdict(int)
    total = hits = 0
    for inc in rp.incidents:
        exp = expected_alerts(inc)
        if not exp:
            continue
        total += 1
        kinds_n[inc["kind"]] += 1
        best = math.inf
        for ak in exp:
            key = inc["area"] if ak == contract.AREA_OUTAGE else inc["hh"]
            for t in by_target.get((ak, key), ()):
                if inc["start"] <= t <= inc["start"] + DETECTION_WINDOW_S:
                    best = min(best, t)
        was_open = False
        if best == math.inf:
            for ak in exp:
                key = inc["area"] if ak == contract.AREA_OUTAGE else inc["hh"]
                if any(a < inc["start"] < b for a, b in intervals.get((ak, key), ())):
                    best = inc["start"]  # already alerted: watchers are on their way (delay 0)
                    already_open += 1
                    was_open = True
                    break
        if best < math.inf:
            if resident_check is not None and inc["kind"] in WELFARE_INCIDENTS:
                team_delays.append(best - inc["start"] + (0.0 if was_open else resident_check.minutes * 60.0))
            hits += 1
            kinds_hit[inc["kind"]] += 1
            delays.append(best - inc["start"])
            if inc["kind"] in WELFARE_INCIDENTS:
                welfare_hh.append((inc["hh"], best - inc["start"]))
            kinds_delays[inc["kind"]].append(best - inc["start"])
    # False alerts: opened after the learning period with no incident behind them.
    by_hh: dict[int, list[dict[str, Any]]] = defaultdict(list)
    by_area: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for inc in rp.incidents:
        by_hh[inc["hh"]].append(inc)
        by_area[inc["area"]].append(inc)
    false_by_kind: dict[str, int] = defaultdict(int)
    false_welfare_silence: dict[str, int] = {"lt_8h": 0, "8_17h": 0, "ge_17h": 0}
    # When false welfare alerts are raised (the household's local hour): a resident asked by message
    # before the team (alerts' resident check) can answer in waking hours, rarely at 3 a.m.
    false_welfare_hour = [0] * 24
    silence_around = _silence_lookup(rp)
    false_all = 0
    nights_by_hh: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for h, left, back in rp.nights_away:
        if left >= rp.learning_end:
            nights_by_hh[h].append((left, back))
    nights_alerted: set[tuple[int, float]] = set()
    false_in_nights = 0
    spared = 0  # false welfare alerts a resident asked first would have answered
    answers = np.random.default_rng(resident_check.seed if resident_check else 0)
    for kind, key, t in log.opened:
        pool = by_area[key] if kind == contract.AREA_OUTAGE else by_hh[key]
        if any(_explains(inc, kind, t, rp.end) for inc in pool):
            continue
        false_all += 1
        if t >= rp.learning_end and (rp.observed_until is None or kind == contract.AREA_OUTAGE or t <= rp.observed_until[key]):
            false_by_kind[kind] += 1
            spared_before = spared
            if kind in WELFARE_ALERTS:
                # During a night away (the home stays dark until the first light after coming back).
                night = next(((left, back) for left, back in nights_by_hh.get(key, ()) if left <= t <= back + EXPLAIN_GRACE_S), None)
                if night is not None:
                    false_in_nights += 1
                    nights_alerted.add((key, night[0]))
                quiet_h = silence_around(key, t) / H
                hour = int(((t + float(rp.tz_offset_s[key])) % DAY) // H)
                false_welfare_hour[hour] += 1
                if resident_check is not None:
                    lo, hi = resident_check.waking_hours
                    able = lo <= hour < hi
                    if rp.presence is not None:
                        times, states = rp.presence[key]
                        i = int(np.searchsorted(times, t, side="right")) - 1
                        state = int(states[i]) if i >= 0 else PRESENT_ASLEEP
                        able = state == PRESENT_AWAKE or (state == AWAY and able)
                    spared += int(able and answers.random() < resident_check.answer_rate)
                false_welfare_silence["lt_8h" if quiet_h < 8 else "8_17h" if quiet_h < 17 else "ge_17h"] += 1
            if kind != contract.AREA_OUTAGE:
                false_hh.append((key, spared > spared_before))
    if rp.observed_until is not None:
        months = float(np.maximum(rp.observed_until - rp.learning_end, 0.0).sum()) / (30 * DAY)
    else:
        months = n * max(rp.end - rp.learning_end, 1.0) / (30 * DAY)
    months_all = n * (rp.end - rp.start) / (30 * DAY)
    for kind in sorted(kinds_n):
        per_kind[kind] = {
            "incidents": kinds_n[kind],
            "recall": round(kinds_hit[kind] / kinds_n[kind], 4),
            **_delay_stats(kinds_delays[kind]),
        }
    n_false = sum(false_by_kind.values())
    welfare_kinds = [k for k in kinds_n if k in WELFARE_INCIDENTS]
    welfare_delays = [d for k in welfare_kinds for d in kinds_delays[k]]
    welfare_n = sum(kinds_n[k] for k in welfare_kinds)
    welfare = {"incidents": welfare_n,
               "recall": round(sum(kinds_hit[k] for k in welfare_kinds) / welfare_n, 4) if welfare_n else None,
               **_delay_stats(welfare_delays)}
    if raw is not None:
        raw.update(welfare_delays=welfare_delays, team_delays=team_delays, false=n_false, spared=spared,
                   welfare_hh=welfare_hh, false_hh=false_hh,
                   welfare_incident_hh=[i["hh"] for i in rp.incidents if i["kind"] in WELFARE_INCIDENTS and expected_alerts(i)],
                   months=months, welfare_n=welfare_n, welfare_hits=sum(kinds_hit[k] for k in welfare_kinds))
    team = None
    if resident_check is not None:
        team = {"answer_rate": resident_check.answer_rate, "check_minutes": resident_check.minutes,
                "false_alerts_per_household_month": round((n_false - spared) / months, 4) if months else None,
                "false_alerts": n_false - spared, "spared_by_the_resident": spared,
                "welfare": {"incidents": welfare_n, **_delay_stats(team_delays)}}
    return {
        "recall": round(hits / total, 4) if total else None,
        **_delay_stats(delays),
        "false_alerts_per_household_month": round(n_false / months, 4) if months else None,
        "incidents": total,
        "detected": hits,
        "false_alerts": n_false,
        "detected_while_already_open": already_open,
        "false_alerts_by_kind": {k: false_by_kind.get(k, 0) for k in ALERT_KINDS},
        "false_welfare_by_silence": false_welfare_silence,
        "false_welfare_by_local_hour": false_welfare_hour,
        "false_welfare_waking_hours_07_22": sum(false_welfare_hour[7:22]),
        "unannounced_nights_away": {"nights": sum(len(v) for v in nights_by_hh.values()),
                                    "nights_alerted": len(nights_alerted), "false_alerts": false_in_nights},
        "false_alerts_per_household_month_incl_learning": round(false_all / months_all, 4) if months_all else None,
        "welfare": welfare,
        "per_kind": per_kind,
        **({"team": team} if team is not None else {}),
    }


def device_set(kinds: np.ndarray) -> str:
    """A home's device classes, e.g. ``bulb+motion+door``."""
    present = {int(k) for k in kinds if k >= 0}
    return "+".join(name for code, name in enumerate(m.DEVICE_KINDS) if code in present) or "none"


def by_device_set(rp: Replay, raw: dict[str, Any]) -> dict[str, Any]:
    """The welfare figures per set of device classes (the measured effect of a device class: a
    motion sensor, a door sensor, a plug), with the questions to the resident and the false alerts
    to the team per household-month.
    """
    sets = [device_set(rp.device_kinds[h]) for h in range(rp.n)]
    months_per_home = max(rp.end - rp.learning_end, 1.0) / (30 * DAY)
    out: dict[str, Any] = {}
    for name in sorted(set(sets)):
        homes = {h for h in range(rp.n) if sets[h] == name}
        d = [x for h, x in raw["welfare_hh"] if h in homes]
        n_inc = sum(1 for h in raw["welfare_incident_hh"] if h in homes)
        false = [s for h, s in raw["false_hh"] if h in homes]
        months = len(homes) * months_per_home
        out[name] = {"households": len(homes), "welfare_incidents": n_inc,
                     "welfare_recall": round(len(d) / n_inc, 4) if n_inc else None, **_delay_stats(d),
                     "asks_per_household_month": round(len(false) / months, 4),
                     "team_false_per_household_month": round(sum(1 for s in false if not s) / months, 4)}
    return out


def pool_metrics(raws: list[dict[str, Any]], resident_check: ResidentCheck | None) -> dict[str, Any]:
    """Several replays' figures as one (delays pooled, false alerts over the months of all)."""
    delays = [d for r in raws for d in r["welfare_delays"]]
    n, hits = sum(r["welfare_n"] for r in raws), sum(r["welfare_hits"] for r in raws)
    months = sum(r["months"] for r in raws)
    false = sum(r["false"] for r in raws)
    out: dict[str, Any] = {
        "recall": round(hits / n, 4) if n else None, **_delay_stats(delays),
        "false_alerts_per_household_month": round(false / months, 4) if months else None,
        "incidents": n, "detected": hits, "false_alerts": false,
        "welfare": {"incidents": n, "recall": round(hits / n, 4) if n else None, **_delay_stats(delays)},
    }
    if resident_check is not None:
        spared = sum(r["spared"] for r in raws)
        out["team"] = {"answer_rate": resident_check.answer_rate, "check_minutes": resident_check.minutes,
                       "false_alerts_per_household_month": round((false - spared) / months, 4) if months else None,
                       "false_alerts": false - spared, "spared_by_the_resident": spared,
                       "welfare": {"incidents": n, **_delay_stats([d for r in raws for d in r["team_delays"]])}}
    return out


def _across_homes(homes: list[dict[str, Any]], system: str) -> dict[str, Any]:
    """Median of the homes' figures and the worst home's, for one system."""
    def get(h: dict[str, Any]) -> dict[str, Any]:
        return h["detector"] if system == "detector" else h["baselines"][system]

    def vals(fn: Any) -> list[float]:
        return [v for v in (fn(get(h)) for h in homes if get(h).get("applicable", True)) if v is not None]

    med = vals(lambda r: r["welfare"]["median_delay_h"])
    p90 = vals(lambda r: r["welfare"]["p90_delay_h"])
    asks = vals(lambda r: r["false_alerts_per_household_month"])
    team = vals(lambda r: (r.get("team") or {}).get("false_alerts_per_household_month"))
    rec = vals(lambda r: r["welfare"]["recall"])

    def md(v: list[float]) -> float | None:
        return round(float(np.median(v)), 2) if v else None

    return {"median_of_home_medians_h": md(med), "median_of_home_p90s_h": md(p90),
            "worst_home_median_h": max(med) if med else None, "worst_home_p90_h": max(p90) if p90 else None,
            "median_home_asks_per_household_month": md(asks),
            "median_home_team_false_per_household_month": md(team),
            "worst_home_team_false_per_household_month": max(team) if team else None,
            "min_home_recall": min(rec) if rec else None}
