"""Evaluation of the detector against the fixed-rule baselines (``mimamori eval``).

``run_eval``: the simulator's fast offline mode makes the fleet's event streams with incidents of
every kind injected at random times after a learning period; the detector and both baselines are
replayed on the same streams with the simulated clock (events reach them when they *arrive*, so a
gateway that was down delivers late), ticking every ``tick_s`` simulated seconds. Gateway status
(the MQTT last will) is derived from the gateway-down intervals of the ground truth, as the broker
would publish it. Away mode is what the resident or a watcher set (ground truth details).

Metrics per system (and per incident kind):

- ``recall``: incidents that should raise an alert and got one of the right kind within 72 h
  (welfare incidents: ``inactivity`` or ``long_on``; a dead bulb or a gateway that lost power:
  ``device_offline``; an area power cut: ``area_outage`` for its area);
- ``median_delay_h`` / ``p90_delay_h``: alert time minus incident start, over the detected ones;
- ``false_alerts_per_household_month``: alerts opened after the learning period with no incident
  behind them (a welfare alert during a planned trip, a dead bulb or an outage counts as false),
  per household per 30 days of that period. Each opening counts: the service opens one incident
  row (one notification) per alert kind, so a silence that raised ``inactivity`` and then
  ``long_on`` would be two.
- ``unannounced_nights_away``: the simulator's nights with family that nobody announced (after the
  learning period), how many of them got a false welfare alert, and how many false alerts they made.
- ``false_welfare_by_silence``: the false welfare alerts split by how long the silence behind them
  lasted in all (last resident-caused event before the alert to the first one after it): ``ge_17h``
  are unannounced absences
  such as the simulator's nights with family (out 17-26 h, no away mode), which in a bulbs-only
  home look like a collapse until the resident is back; they are still counted as false.

With ``resident_check`` (``mimamori eval --resident-answers RATE``), each system also gets a ``team``
view: what the household's team would receive if the alert engine asked the resident first (the
default chain when a resident has a channel of their own: ``alerts.policy.RESIDENT_FIRST_CHAIN``). A
what-if, and its assumptions are the inputs: a resident behind a false welfare alert answers
"fine"/"out" with probability RATE if they are able to: awake at home, or away in waking hours (07-22
local; the simulator does not say when someone away sleeps), never asleep at home (a late riser
sleeps through the question). With real logs (no ground truth) "able" is the waking hours. A
resident in trouble never answers (the "help" button is not modelled, which would only shorten
delays), so every welfare incident the team hears of reaches them ``minutes`` later, unless an alert
was already open when it began (the team already knew).

An alert is an incident row in the service: it opens when the condition starts, stays one while
the condition holds, and closes when it clears (activity resumes, the device is back ...).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector import model as m
from detector.baselines import BASELINES, make_baseline
from firmware_sim.offline import AWAY, PRESENT_ASLEEP, PRESENT_AWAKE
from mimamori import contract

H = 3600.0
DAY = 86400.0
DETECTION_WINDOW_S = 72 * H
EXPLAIN_GRACE_S = 12 * H
#: Alert kinds in report order (the service's incident kinds, ``mimamori.contract``).
WELFARE_ALERTS = (contract.INACTIVITY, contract.LONG_ON)
ALERT_KINDS = (*WELFARE_ALERTS, contract.DEVICE_OFFLINE, contract.AREA_OUTAGE)
# Broker keepalive: the last will is published this long after the gateway goes silent.
LAST_WILL_DELAY_S = 90.0

_DEV_CODES = {"bulb": m.DEV_BULB, "motion": m.DEV_MOTION, "door": m.DEV_DOOR, "plug": m.DEV_PLUG}


# ---------------------------------------------------------------------------------------------
# Streams in the detector's codes
# ---------------------------------------------------------------------------------------------


@dataclass
class Replay:
    """Everything one evaluation replays, in the detector's codes."""

    start: float
    end: float
    device_kinds: np.ndarray  # int8[H, D]
    area: np.ndarray  # int32[H]
    tz_offset_s: np.ndarray  # int32[H]
    # events, sorted by arrival
    arrival: np.ndarray
    hh: np.ndarray
    dev: np.ndarray
    t: np.ndarray
    kind: np.ndarray
    # gateway status changes, sorted by time: (t, hh, online)
    gw_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gw_hh: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    gw_online: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # away periods: (hh, set_at, until)
    away: list[tuple[int, float, float]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)  # ground truth
    learning_end: float = 0.0
    #: per household, the end of the stretch in which its alerts can be false (default: the end)
    observed_until: np.ndarray | None = None
    #: unannounced nights away of the simulated residents (hh, left, back): not incidents (an alert
    #: then is false), reported apart because a bulbs-only home cannot tell one from a collapse
    nights_away: list[tuple[int, float, float]] = field(default_factory=list)
    #: where each simulated resident was, as changes (times, PRESENT_AWAKE / PRESENT_ASLEEP / AWAY);
    #: None for real logs (then "awake" is guessed from the hour)
    presence: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def n(self) -> int:
        return len(self.area)


def map_kinds(kind_codes: tuple[str, ...]) -> np.ndarray:
    """Lookup table: simulator kind code -> detector EV_* code."""
    return np.array([m.EVENT_KINDS.index(k) for k in kind_codes], np.int8)


def replay_from_fleet(fleet: Any, learning_days: float) -> Replay:
    n = len(fleet.households)
    kinds = np.full((n, m.MAX_DEVICES), m.DEV_NONE, np.int8)
    for i, hh in enumerate(fleet.households):
        codes = [_DEV_CODES[k] for k in hh.device_kinds][: m.MAX_DEVICES]
        kinds[i, : len(codes)] = codes
    arr = fleet.concatenated(sort=False)
    lut = map_kinds(tuple(fleet.kind_codes))
    order = np.lexsort((arr.time, arr.arrival))
    keep = arr.device[order] < m.MAX_DEVICES
    order = order[keep]
    area = np.array([hh.info.area_index for hh in fleet.households], np.int32)
    incidents: list[dict[str, Any]] = []
    away: list[tuple[int, float, float]] = []
    gw: list[tuple[float, int, bool]] = []
    for i, hh in enumerate(fleet.households):
        for inc in hh.incidents:
            d = inc.to_dict()
            d["hh"] = i
            d["area"] = int(area[i])
            incidents.append(d)
            det = inc.details
            if det.get("away_mode_set") and "away_set_at" in det:
                away.append((i, float(det["away_set_at"]), float(det.get("away_until") or fleet.end)))
            if inc.kind in ("gateway_power_loss", "area_power_cut"):
                gw.append((inc.start + LAST_WILL_DELAY_S, i, False))
                gw.append(((inc.end or fleet.end) + 30.0, i, True))
    gw.sort()
    return Replay(
        start=fleet.start,
        end=fleet.end,
        device_kinds=kinds,
        area=area,
        tz_offset_s=np.full(n, 9 * 3600, np.int32),
        arrival=arr.arrival[order],
        hh=arr.household[order].astype(np.int64),
        dev=arr.device[order].astype(np.int64),
        t=arr.time[order],
        kind=lut[arr.kind[order]],
        gw_t=np.array([g[0] for g in gw]),
        gw_hh=np.array([g[1] for g in gw], np.int64),
        gw_online=np.array([g[2] for g in gw], bool),
        away=away,
        incidents=incidents,
        learning_end=fleet.start + learning_days * DAY,
        nights_away=[(i, float(a), float(b)) for i, hh in enumerate(fleet.households) for a, b in hh.nights_away],
        presence=[hh.presence for hh in fleet.households] if all(hh.presence is not None for hh in fleet.households) else None,
    )


# ---------------------------------------------------------------------------------------------
# Running the systems with the simulated clock
# ---------------------------------------------------------------------------------------------


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


def run_systems(rp: Replay, *, tick_s: float = 600.0, params: m.DetectorParams = m.DEFAULT_PARAMS, prior_every_s: float = DAY,
                asked_first: bool = False) -> dict[str, AlertLog]:
    state = m.new_state(rp.device_kinds, epoch=rp.start, tz_offset_s=rp.tz_offset_s, area=rp.area, params=params)
    baselines = {name: make_baseline(name, rp.device_kinds, rp.start, rp.tz_offset_s) for name in BASELINES}
    logs = {"detector": AlertLog(), **{name: AlertLog() for name in BASELINES}}
    n = rp.n
    asked = np.ones(n, bool)  # asked_first: every resident has a channel of their own (the what-if)
    away_hh = np.array([a[0] for a in rp.away], np.int64)
    away_set = np.array([a[1] for a in rp.away])
    away_until = np.array([a[2] for a in rp.away])
    n_areas = int(rp.area.max()) + 1 if n else 0
    i = g = 0
    next_prior = rp.start + prior_every_s
    now = rp.start
    while now < rp.end:
        now = min(now + tick_s, rp.end)
        j = int(np.searchsorted(rp.arrival, now, side="right"))
        if j > i:
            sl = slice(i, j)
            m.observe(state, rp.hh[sl], rp.dev[sl], rp.t[sl], rp.kind[sl], params)
            for b in baselines.values():
                b.observe(rp.hh[sl], rp.dev[sl], rp.t[sl], rp.kind[sl])
            i = j
        k = int(np.searchsorted(rp.gw_t, now, side="right"))
        if k > g:
            m.observe_gateway(state, rp.gw_hh[g:k], rp.gw_t[g:k], rp.gw_online[g:k])
            g = k
        if now >= next_prior:
            m.refresh_prior(state)
            next_prior += prior_every_s
        away = np.full(n, np.nan)
        if len(away_hh):
            active = (away_set <= now) & (now < away_until)
            away[away_hh[active]] = away_until[active]
        sc = m.score(state, now, away_until=away, asked_first=asked if asked_first else None, p=params)
        log = logs["detector"]
        log.update(contract.INACTIVITY, sc.inactivity, now, lambda r: {
            "rule": m.RULES[sc.inactivity_rule[r]], "score": float(sc.inactivity_score[r]),
            "silence_start": float(sc.silence_start[r]), "expected_by": float(sc.expected_by[r]),
            "history": float(state.slot_history[r])})
        log.update(contract.LONG_ON, sc.long_on, now, lambda r: {
            "switch": int(sc.long_on_switch[r]), "since": float(sc.long_on_since[r]), "hours": float(sc.long_on_hours[r]),
            "alarm_after_h": float(state.sw_alarm_after_h[r, sc.long_on_switch[r]]),
            "silence_start": float(sc.silence_start[r]), "expected_by": float(sc.expected_by[r])})
        log.update(contract.DEVICE_OFFLINE, sc.device_offline, now)
        log.update_extent(contract.DEVICE_OFFLINE, sc.offline_devices.sum(axis=1) + sc.gateway_offline * m.MAX_DEVICES, now)
        area_alarm = np.zeros(n_areas, bool)
        area_alarm[rp.area[sc.area_outage]] = True
        log.update(contract.AREA_OUTAGE, area_alarm, now)
        for name, b in baselines.items():
            alarms = b.check(now)
            logs[name].update(contract.INACTIVITY, alarms.inactivity, now)
            logs[name].update(contract.LONG_ON, alarms.long_on, now)
    return logs


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


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
    resident-caused event at or before ``t`` to its first one after (inf: none after)."""
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
    behind them, to pool several replays (``pool_metrics``)."""
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
                   welfare_hh=welfare_hh, false_hh=false_hh, welfare_incident_hh=[i["hh"] for i in rp.incidents
                                                                                   if i["kind"] in WELFARE_INCIDENTS and expected_alerts(i)],
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


def evaluate(rp: Replay, *, tick_s: float = 600.0, params: m.DetectorParams = m.DEFAULT_PARAMS,
             resident_check: ResidentCheck | None = None, asked_first: bool = False,
             raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """``raw``: filled per system (``detector`` and each baseline) as ``metrics`` does."""
    logs = run_systems(rp, tick_s=tick_s, params=params, asked_first=asked_first)
    if raw is not None:
        for name in ("detector", *BASELINES):
            raw[name] = {}
    return {
        "detector": metrics(rp, logs["detector"], resident_check=resident_check,
                            raw=raw["detector"] if raw is not None else None),
        "baselines": {name: metrics(rp, logs[name], resident_check=resident_check,
                                    raw=raw[name] if raw is not None else None) for name in BASELINES},
    }


def run_eval(households: int, days: float, seed: int, bulbs_only: bool = False, *, tick_s: float = 600.0,
             learning_days: float = 21.0, params: m.DetectorParams = m.DEFAULT_PARAMS,
             resident_check: ResidentCheck | None = None, asked_first: bool = False) -> dict[str, Any]:
    """Simulate, inject incidents, replay the detector and both baselines; return the metrics.
    ``asked_first``: score every home as one whose resident is asked first (the faster threshold)."""
    from firmware_sim.incidents import IncidentPlan
    from firmware_sim.offline import simulate_offline

    t0 = time.perf_counter()
    fleet = simulate_offline(households, days, seed, bulbs_only=bulbs_only,
                             incidents=IncidentPlan.random(seed=seed, learning_days=learning_days))
    sim_s = time.perf_counter() - t0
    rp = replay_from_fleet(fleet, learning_days)
    t1 = time.perf_counter()
    raw: dict[str, Any] = {}
    result = evaluate(rp, tick_s=tick_s, params=params, resident_check=resident_check, asked_first=asked_first, raw=raw)
    result["detector"]["by_devices"] = by_device_set(rp, raw["detector"])
    result["run"] = {
        "households": households, "days": days, "seed": seed, "bulbs_only": bulbs_only, "asked_first": asked_first,
        "tick_s": tick_s, "learning_days": learning_days, "events": int(len(rp.t)),
        "incidents_injected": len(rp.incidents), "simulate_s": round(sim_s, 2),
        "replay_s": round(time.perf_counter() - t1, 2),
    }
    return result


def device_set(kinds: np.ndarray) -> str:
    """A home's device classes, e.g. ``bulb+motion+door``."""
    present = {int(k) for k in kinds if k >= 0}
    return "+".join(name for code, name in enumerate(m.DEVICE_KINDS) if code in present) or "none"


def by_device_set(rp: Replay, raw: dict[str, Any]) -> dict[str, Any]:
    """The welfare figures per set of device classes (the measured effect of a device class: a
    motion sensor, a door sensor, a plug), with the questions to the resident and the false alerts
    to the team per household-month."""
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


def run_replay_casas(path: str, bulbs_only: bool = False, *, seed: int = 0, cuts: int | None = None,
                     tick_s: float = 600.0, params: m.DetectorParams = m.DEFAULT_PARAMS) -> dict[str, Any]:
    """Replay a CASAS log (see ``bench.casas``) with incidents injected by cutting it."""
    return run_replay([f"casas:{path}"], bulbs_only, seed=seed, cuts=cuts, tick_s=tick_s, params=params,
                      resident_check=None)


BULB_BASELINES = ("hello_light_24h", "kanazawa_8h_on_24h_off")


def _not_applicable(r: dict[str, Any], why: str) -> dict[str, Any]:
    def blank(v: Any) -> Any:
        return {k: blank(x) for k, x in v.items()} if isinstance(v, dict) else None

    return {**blank(r), "applicable": False, "why": why}


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


def run_replay(specs: list[str], bulbs_only: bool = False, *, seed: int = 0, cuts: int | None = None,
               learning_days: float = 7.0, tick_s: float = 600.0, params: m.DetectorParams = m.DEFAULT_PARAMS,
               resident_check: ResidentCheck | None = ResidentCheck(0.7), asked_first: bool = False,
               watch_quality: bool = True) -> dict[str, Any]:
    """Replay real logs (``FORMAT:PATH``, see ``bench.casas``), each home on its own with incidents
    injected by cutting it; one result per home (``homes``), the figures of all homes pooled
    (``detector``, ``baselines``: with one log, that home's), and ``across_homes`` (median and worst home).

    ``watch_quality``: per home, how fast its own data lets the detector notice trouble (its welfare
    delays here) and what each device class adds: the same home replayed without that class."""
    from bench.casas import home_name, parse_spec, read_log, replay_from_log

    homes: list[dict[str, Any]] = []
    raws: dict[str, list[dict[str, Any]]] = {name: [] for name in ("detector", *BASELINES)}
    t0 = time.perf_counter()
    for spec in specs:
        fmt, path = parse_spec(spec)
        log = read_log(fmt, path)
        rp, info = replay_from_log(log, bulbs_only=bulbs_only, seed=seed, cuts=cuts, learning_days=learning_days,
                                   source=path)
        raw: dict[str, Any] = {}
        r = evaluate(rp, tick_s=tick_s, params=params, resident_check=resident_check, asked_first=asked_first, raw=raw)
        if not (rp.device_kinds == m.DEV_BULB).any():
            # The bulb rules watch bulbs: in a home without any they would alarm from the first day.
            for name in BULB_BASELINES:
                r["baselines"][name] = _not_applicable(r["baselines"][name], "the home has no bulbs")
                del raw[name]
        for name, v in raw.items():
            raws[name].append(v)
        home = {"home": home_name(spec), "replay": spec, **r, "run": info}
        if watch_quality:
            home["watch_quality"] = _watch_quality(log, r, bulbs_only=bulbs_only, seed=seed, cuts=cuts,
                                                   learning_days=learning_days, tick_s=tick_s, params=params,
                                                   resident_check=resident_check, asked_first=asked_first)
        homes.append(home)
    if len(homes) == 1:
        result = {"detector": homes[0]["detector"], "baselines": homes[0]["baselines"]}
    else:
        result = {"detector": pool_metrics(raws["detector"], resident_check),
                  "baselines": {name: pool_metrics(raws[name], resident_check) for name in BASELINES}}
    result["homes"] = homes
    result["across_homes"] = {name: _across_homes(homes, name) for name in ("detector", *BASELINES)}
    result["run"] = {"replay": specs, "bulbs_only": bulbs_only, "seed": seed, "cuts": cuts,
                     "learning_days": learning_days, "tick_s": tick_s, "asked_first": asked_first,
                     "resident_answers": resident_check.answer_rate if resident_check else None,
                     "replay_s": round(time.perf_counter() - t0, 2)}
    if len(homes) == 1:
        result["run"].update(homes[0]["run"])
    return result


ABLATION_CUTS = 12  # cuts per home when measuring what a device class adds (watch quality)
_DEVICE_ADVICE = {
    m.DEV_MOTION: "a motion sensor in the living room",
    m.DEV_DOOR: "a door sensor on the front door",
    m.DEV_PLUG: "a smart plug on the kettle or TV",
    m.DEV_BULB: "a smart bulb in the room used most in the evening",
}


def _watch_quality(log: Any, r: dict[str, Any], *, bulbs_only: bool, **kw: Any) -> dict[str, Any]:
    """How fast this home's own data lets the detector notice trouble now, and the measured effect of
    each device class it has (the home replayed without it): what a home lacking it would gain."""
    from bench.casas import replay_from_log

    det = r["detector"]
    out: dict[str, Any] = {"notice_median_h": det["welfare"]["median_delay_h"], "notice_p90_h": det["welfare"]["p90_delay_h"],
                           "asks_per_household_month": det["false_alerts_per_household_month"]}
    kinds = np.array(log.sensor_kinds, np.int8)
    present = sorted({int(k) for k in kinds} & ({m.DEV_BULB} if bulbs_only else set(_DEVICE_ADVICE)))
    out["devices"] = [m.DEVICE_KINDS[k] for k in present]
    out["missing"] = [_DEVICE_ADVICE[k] for k in _DEVICE_ADVICE if k not in present]
    effects = {}
    for k in present:
        if len(present) < 2:
            break
        keep = kinds != k
        sel = keep[log.sensor]
        sub = type(log)(log.time[sel], log.sensor[sel], log.kind[sel], log.sensors,
                        [kk if kk != k else m.DEV_NONE for kk in log.sensor_kinds], log.lines, log.malformed,
                        log.odd_values_repaired, log.skipped_values, log.unsorted, log.fmt, log.extra)
        try:
            # Fewer cuts than the home's own row: an estimate of the device class's effect, at a third of the cost.
            rp, _ = replay_from_log(sub, seed=kw["seed"], cuts=min(kw["cuts"] or 40, ABLATION_CUTS),
                                    learning_days=kw["learning_days"])
        except ValueError:
            continue
        w = evaluate(rp, tick_s=kw["tick_s"], params=kw["params"], resident_check=kw["resident_check"],
                     asked_first=kw["asked_first"])["detector"]
        effects[m.DEVICE_KINDS[k]] = {
            "without_median_h": w["welfare"]["median_delay_h"], "without_p90_h": w["welfare"]["p90_delay_h"],
            "without_asks_per_household_month": w["false_alerts_per_household_month"]}
    out["measured_effect_of_device_class"] = effects
    out["measured_effect_cuts"] = min(kw["cuts"] or 40, ABLATION_CUTS)
    return out


def replay_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A replay's table: per home and system, the welfare delays (the system's and the team's),
    questions to the resident and false alerts to the team per household-month; then all homes pooled."""
    def row(home: str, system: str, r: dict[str, Any]) -> dict[str, Any]:
        team = r.get("team") or {}
        return {"home": home, "system": system, "cuts": r["welfare"]["incidents"], "recall": r["welfare"]["recall"],
                "median_h": r["welfare"]["median_delay_h"], "p90_h": r["welfare"]["p90_delay_h"],
                "team_median_h": (team.get("welfare") or {}).get("median_delay_h"),
                "team_p90_h": (team.get("welfare") or {}).get("p90_delay_h"),
                "asks_per_month": r["false_alerts_per_household_month"],
                "team_false_per_month": team.get("false_alerts_per_household_month")}

    rows = []
    for h in result["homes"]:
        rows.append(row(h["home"], "detector", h["detector"]))
        rows.extend(row(h["home"], name, b) for name, b in h["baselines"].items() if b.get("applicable", True))
    if len(result["homes"]) > 1:
        rows.append(row("all (pooled)", "detector", result["detector"]))
        rows.extend(row("all (pooled)", name, b) for name, b in result["baselines"].items() if b["incidents"])
    return rows


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per system (detector, then the baselines) for a human-readable table."""
    systems = [("detector", result["detector"]), *result["baselines"].items()]
    keys = ("recall", "median_delay_h", "p90_delay_h", "false_alerts_per_household_month")
    rows = []
    for name, r in systems:
        nights = r.get("unannounced_nights_away") or {}
        rows.append({"system": name, **{k: r[k] for k in keys},
                     "nights_away_alerted": f"{nights.get('nights_alerted', 0)} of {nights.get('nights', 0)}"})
    return rows
