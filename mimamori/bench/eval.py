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

The work is split by responsibility: ``bench.replay`` turns a simulated fleet into the streams an
evaluation replays, ``bench.scoring`` turns alert logs into the figures above, ``bench.casas`` reads
real logs, and this module runs the systems and composes the results (``mimamori eval``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mimamori.bench.casas import home_name, parse_spec, read_log, replay_from_log
from mimamori.bench.replay import DAY, Replay, replay_from_fleet
from mimamori.bench.scoring import AlertLog, ResidentCheck, _across_homes, by_device_set, metrics, pool_metrics
from mimamori.detector import model as m
from mimamori.detector.baselines import BASELINES, make_baseline
from mimamori.firmware_sim.offline import AWAY, PRESENT_ASLEEP, PRESENT_AWAKE
from mimamori.kernel import contract

__all__ = ["AWAY", "PRESENT_ASLEEP", "PRESENT_AWAKE", "AlertLog", "Replay", "ResidentCheck", "evaluate", "metrics",
           "replay_rows", "run_eval", "run_replay", "run_systems", "summary_rows"]

# ---------------------------------------------------------------------------------------------
# Running the systems with the simulated clock
# ---------------------------------------------------------------------------------------------


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
        log.update(contract.INACTIVITY, sc.inactivity, now, lambda r, sc=sc: {
            "rule": m.RULES[sc.inactivity_rule[r]], "score": float(sc.inactivity_score[r]),
            "silence_start": float(sc.silence_start[r]), "expected_by": float(sc.expected_by[r]),
            "history": float(state.slot_history[r])})
        log.update(contract.LONG_ON, sc.long_on, now, lambda r, sc=sc: {
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
# Composing the results
# ---------------------------------------------------------------------------------------------


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
    ``asked_first``: score every home as one whose resident is asked first (the faster threshold).
    """
    from mimamori.firmware_sim.incidents import IncidentPlan
    from mimamori.firmware_sim.offline import simulate_offline

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
        "tick_s": tick_s, "learning_days": learning_days, "events": len(rp.t),
        "incidents_injected": len(rp.incidents), "simulate_s": round(sim_s, 2),
        "replay_s": round(time.perf_counter() - t1, 2),
    }
    return result


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


#: Real logs: a resident who answers seven questions in ten (the what-if of ``ResidentCheck``).
DEFAULT_RESIDENT_CHECK = ResidentCheck(0.7)


def run_replay(specs: list[str], bulbs_only: bool = False, *, seed: int = 0, cuts: int | None = None,
               learning_days: float = 7.0, tick_s: float = 600.0, params: m.DetectorParams = m.DEFAULT_PARAMS,
               resident_check: ResidentCheck | None = DEFAULT_RESIDENT_CHECK, asked_first: bool = False,
               watch_quality: bool = True) -> dict[str, Any]:
    """Replay real logs (``FORMAT:PATH``, see ``bench.casas``), each home on its own with incidents
    injected by cutting it; one result per home (``homes``), the figures of all homes pooled
    (``detector``, ``baselines``: with one log, that home's), and ``across_homes`` (median and worst home).

    ``watch_quality``: per home, how fast its own data lets the detector notice trouble (its welfare
    delays here) and what each device class adds: the same home replayed without that class.
    """
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
    each device class it has (the home replayed without it): what a home lacking it would gain.
    """
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
    questions to the resident and false alerts to the team per household-month; then all homes pooled.
    """
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
