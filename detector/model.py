"""The learned watch-over model: pure numpy, arrays in, scores out, no I/O, no clock.

Struct of arrays over all households at once (``FleetState``). For each household it learns, with
exponential decay (routines drift), how long silences last given when they began:

- a *silence* is the time between two resident-caused events (switch, motion, door) of any device
  of the household; only silences of at least ``silence_min_h`` are recorded;
- they are kept as decayed *exceedance counts* per (light context, local start hour, duration
  edge): ``sil_hist[h, ctx, hour, k]`` = how many recorded silences that began then, with some
  switch on (``ctx = 1``) or all off (``ctx = 0``), lasted at least ``SILENCE_EDGES_H[k]`` hours.
  ``k = 0`` is the exposure (active hours, once per context), so the conditional survival is
  ``sil_hist[..., k] / sil_hist[..., 0]``. A light left on in a silent home is how a collapse
  looks; all off is how sleep and going out look;
- a population prior (pseudo-counts of the fleet's average survival curve) covers new homes and
  thin slots.

When a silence begins its threshold is fixed from the survival curve of its start slot: the
duration ``q`` past which only ``beta`` of such silences last, plus a margin; the improbability
score of the silence rises from there on an exponential tail, so ``score >= -log10(alpha)`` exactly
when the silence passed ``q + margin``. Night needs no special case: a silence that began at
bedtime is expected to last until the usual wake-up; not waking by then plus the margin is what
raises the score. Scoring is then O(households) per pass.

Long-on is judged per switchable device (bulb, plug) the same way: decayed exceedance counts of
on-episode durations per local start block.

Going out is learned per home (issue 14): a silence that began with a departure (the front door with
no motion after it, or the last light switched off at a lit waking hour) is an *outing*; its length
is recorded in ``out_hist`` and the outing is "out" (no alarm) until this home's outings are usually
over (``outing_thresholds``), then "not back" (``RULE_NOT_BACK``), at most ``door_away_cap_h``.

The home's own past bounds its thresholds (sensor homes): the *budget cap* (``budget_cap_h``) is the
silence length that its own past silences (with the population's rate as a few pseudo-days) passed at
most ``budget_per_month`` times a month, plus a margin; and a home whose past silences would have
passed the *tight* threshold (quantile + 1 h + 10 %) at most ``tight_budget_per_month`` times a month
gets that instead of the wide margin. So thresholds tighten with evidence, and a home often silent
keeps wide ones. ``watch_quality`` says how fast a home's own data lets the detector notice trouble.

Context is an input: away mode, device health (missing heartbeats, gateway last will) and area
outages suppress welfare alerts; device problems are reported as such. Hard caps (``silence_cap_h``,
``on_cap_h``) stay as safety nets whatever the model says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------
# Codes (the detector's own; callers map their names onto these)
# ---------------------------------------------------------------------------------------------

EVENT_KINDS = ("on", "off", "motion", "open", "close", "heartbeat", "boot", "fault")
EV_ON, EV_OFF, EV_MOTION, EV_OPEN, EV_CLOSE, EV_HEARTBEAT, EV_BOOT, EV_FAULT = range(8)
ACTIVITY_CODES = (EV_ON, EV_OFF, EV_MOTION, EV_OPEN, EV_CLOSE)

DEVICE_KINDS = ("bulb", "motion", "door", "plug")
DEV_NONE, DEV_BULB, DEV_MOTION, DEV_DOOR, DEV_PLUG = -1, 0, 1, 2, 3

# Why a welfare alarm is held back (``Scores.suppressed``).
SUPPRESS_NONE, SUPPRESS_AWAY, SUPPRESS_DEVICE, SUPPRESS_AREA, SUPPRESS_DOOR = 0, 1, 2, 3, 4
SUPPRESS_REASONS = ("none", "away", "device_offline", "area_outage", "inferred_away")

# Which rule raised the inactivity alarm (``Scores.inactivity_rule``).
RULE_NONE, RULE_MODEL, RULE_PRIOR, RULE_HARD_CAP, RULE_ROUTINE, RULE_NOT_BACK = 0, 1, 2, 3, 4, 5
RULES = ("none", "model", "population_prior", "hard_cap", "routine", "not_back")

# Edge 0 counts *exposure*: local hours in which the household was active at all. Each such hour
# is one trial: the silence that follows its last event. So ``hist[..., k] / hist[..., 0]`` is the
# chance that the silence after an active hour lasts at least ``edge k`` - a slot that never sees
# a long silence (a busy morning) says so, instead of falling back to the prior.
SILENCE_EDGES_H = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16], dtype=np.float32)
ON_EDGES_H = np.array([0, 0.5, 1, 2, 3, 5, 8, 11], dtype=np.float32)  # edge 0: every episode (exposure)
# Outings (a silence that began with a departure: the front door, or the lights switched off at a
# lit hour): exceedance counts of their lengths per kind of departure (0 door, 1 lights out); edge 0
# counts every outing.
OUT_EDGES_H = np.array([0, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24], dtype=np.float32)
OUT_DOOR, OUT_LIGHTS = 0, 1
ON_BLOCK_H = 4  # long-on episodes are grouped by the local 4-hour block they began in
N_ON_BLOCKS = 24 // ON_BLOCK_H

BIN_H = 2  # the daily routine: activity per local 2-hour bin
N_BINS = 24 // BIN_H

MAX_DEVICES = 12  # per household
MAX_SWITCHES = 6  # switchable devices (bulbs, plugs) whose long-on is learned per household

_FLAG_DOOR = np.uint8(1)  # the current silence began with a front-door event (resident went out?)
_FLAG_BLIND = np.uint8(2)  # part of the current silence was unobservable or paused: do not learn it
_FLAG_REJUDGED = np.uint8(4)  # the threshold was recomputed from the end of that stretch
_FLAG_MOVED_AFTER_DOOR = np.uint8(8)  # a motion sensor saw someone after the latest front-door event
_FLAG_LIGHTS_OUT = np.uint8(16)  # the current silence began with the last light switched off at a lit, waking hour
_FLAGS_OUT = np.uint8(_FLAG_DOOR | _FLAG_LIGHTS_OUT)  # the resident probably went out


@dataclass(frozen=True)
class DetectorParams:
    """Everything tunable, in hours unless the name says otherwise. Defaults are the shipped ones."""

    half_life_days: float = 28.0
    silence_min_h: float = 0.5
    # Survival smoothing: pseudo-count weight of the population prior, and how much the
    # neighbouring start hours and the other light context (lit / all off) lend to a slot.
    prior_strength: float = 4.0
    neighbour_weight: float = 0.35
    other_context_weight: float = 0.2
    # The threshold: the (1 - beta) quantile of silences from this slot, plus a margin.
    beta: float = 0.005
    margin_h: float = 3.0
    margin_frac: float = 0.25
    min_alarm_h: float = 3.0
    # ... for an all-off silence that began at a waking hour of this home (see ``dark_silence_kind``).
    day_margin_h: float = 2.0
    day_margin_frac: float = 0.1
    alpha: float = 1e-3  # score threshold = -log10(alpha)
    tail_tau_h: float = 3.0  # extrapolation past the last edge
    min_history: float = 6.0  # less exposure than this behind a threshold: the "population prior" rule
    # The daily routine: a local 2-hour bin from ``routine_from_hour`` on in which the household was
    # active on at least ``routine_p`` of its active days (the evening light) passing entirely in
    # silence on a later day than the silence began, plus ``routine_margin_h``, is an alarm too (rule
    # "routine"), for silences that began as the home's night. Only bins from noon: the morning light
    # follows sunrise and stops being needed as spring comes (every first bright morning was a false
    # alert), while after dark a light is needed all year. On since session 3 (seeds 11/12/13: p90
    # 10.76/14.10/12.40 -> 9.26/12.92/12.19 h, false alerts +0/+4/+0).
    routine: bool = True
    routine_from_hour: float = 12.0
    # ... in a home with motion sensors, from this hour: daylight does not switch a motion sensor off,
    # so its morning (getting up) is as reliable as its evening (issue 14: real homes' nights).
    routine_from_hour_sensors: float = 4.0
    # The day a night belongs to ends at this local hour: a bedtime after midnight (00:14) is that
    # night's, and its morning is missed that same morning, not the next one's.
    routine_day_start_h: float = 4.0
    routine_p: float = 0.99  # above one day's decay (0.9755): a bin missed once is not trusted for weeks
    routine_margin_h: float = 1.0
    routine_min_days: float = 6.0  # active days learned before the rule applies (10 until issue 14: real logs give a week)
    anomalous_weight: float = 1.0  # weight of a silence that exceeded its own alarm threshold
    # Hard caps (safety nets): Kanazawa's 24 h off rule; long-on capped at 16 h (8 h would wake
    # everyone who sleeps with a light on).
    silence_cap_h: float = 24.0
    # The home's own false-alert budget (issue 14): whatever the slot, a silence is an alarm once it
    # is longer than this home's silences are more often than ``budget_per_month`` times a month,
    # judged from its own decayed past (silences at least that long per active day), with the
    # population's rate as ``budget_prior_days`` pseudo-days (a new home starts from the fleet's), plus
    # ``budget_margin_h``. A home rarely silent for long gets a tight cap; one that often is, a loose one.
    # Only in homes with motion sensors: a bulb follows daylight, so a bulbs-only home's silences
    # lengthen with the season (spring mornings without the light) beyond anything in its past.
    budget_cap: bool = True
    budget_per_month: float = 0.3
    budget_prior_days: float = 7.0
    budget_margin_h: float = 1.0
    # ... and the tight threshold: a home whose own past silences would have passed the quantile plus
    # ``tight_margin_h`` + ``tight_margin_frac`` at most ``tight_budget_per_month`` times a month
    # (with ``tight_min_days`` active days seen) gets it instead of the usual margin: a home rarely
    # silent beyond its usual is judged tightly; one that often is keeps the wide margin.
    tight: bool = True
    tight_margin_h: float = 1.0
    tight_margin_frac: float = 0.1
    tight_budget_per_month: float = 0.3
    tight_min_days: float = 5.0
    on_cap_h: float = 16.0
    # Homes whose resident is asked first (the alert engine's resident check, when a resident has a
    # channel of their own): an alarm reaches the resident, who answers "fine" or "out" before the
    # team hears of it, so those homes can afford a faster threshold: the quantile plus this margin
    # at most, whatever the silence's kind. ``asked_first_margin_h`` None: no faster threshold.
    asked_first_margin_h: float | None = 1.0
    asked_first_margin_frac: float = 0.1
    # Long-on threshold from the learned on-durations.
    on_beta: float = 0.05
    on_margin_h: float = 1.5
    on_margin_frac: float = 0.3
    on_min_alarm_h: float = 1.5
    # A switch on since this long before the current silence began is not evidence about it.
    on_stale_h: float = 24.0
    # A light forgotten on at bedtime: a lit silence whose light had been on ``lit_night_on_for_s``
    # when it began, or usually stays on for hours (long-on threshold >= ``lit_night_long_light_h``),
    # and which reaches the home's bedtime (its next long-silence hour) within
    # ``lit_bedtime_within_h``, is judged no stricter than that night: the hours to bedtime plus the
    # home's ``night_beta`` quantile of the night (its median), with ``lit_night_margin_*``.
    lit_bedtime_as_night: bool = True
    lit_bedtime_within_h: float = 6.0
    lit_night_on_for_s: float = 1800.0
    lit_night_long_light_h: float = 4.0
    night_beta: float = 0.5
    lit_night_margin_h: float = 2.0
    lit_night_margin_frac: float = 0.1
    # ... and only while the household is quiet: past its silence quantile by this share of the margin.
    on_silence_frac: float = 0.8
    on_silence_q: float = 1.0  # ... and past this share of its silence quantile
    on_cap_quiet_q: float = 1.0  # past the on cap the silence must still be past this share of its quantile (a light
    # forgotten on since the evening while the resident is up in another room is not an alarm)
    # Inferred away: a silence that began with the front door (and a home that has motion
    # sensors, so a return would be seen) is "out" until this home's outings are usually over: the
    # ``out_beta`` quantile of its learned outing lengths (with the population prior, pseudo-count
    # ``out_prior_strength``) plus ``out_margin_h`` + ``out_margin_frac``, at least ``out_min_h``
    # and at most ``door_away_cap_h``. Past it, "not back" (RULE_NOT_BACK): an outing far past this
    # home's usual is an alarm of its own (someone lost outside), whatever the hour.
    door_away_cap_h: float = 28.0  # the longest "out" ever (a night with family lasts up to ~26 h)
    out_beta: float = 0.01
    out_margin_h: float = 1.0
    out_margin_frac: float = 0.25
    out_min_h: float = 2.0
    out_prior_strength: float = 3.0
    # ... when the silence began at most this long after the door with no motion since (lights are
    # switched off on the way out, so the last event is often a switch just after the door).
    door_grace_s: float = 600.0
    # ... unless the door came after this long with no other activity: then someone came in.
    door_arrival_quiet_s: float = 7200.0
    # ... nor a door at the home's bedtime (a long-silence hour, see ``night_share``): the bedroom door
    # or the lock for the night (issue 14: a real home's last door of the day was "not back" 2 h later).
    door_not_at_bedtime: bool = True
    # Inferred away without a door sensor: the last light switched off, leaving the home dark, at an
    # hour this home is usually lit when active (``lights_out_lit_share`` of its active hours), and
    # not its bedtime (fewer than ``night_share`` of all-off silences from that hour last
    # ``night_long_h``): people switch the lights off when they go out. Judged as "out" for up to
    # ``door_away_cap_h``, like a door departure.
    lights_out: bool = True
    lights_out_lit_share: float = 0.5
    # The home's long-silence hours: an hour from which at least ``night_share`` of its all-off
    # silences lasted ``night_long_h`` (with ``night_min_exposure`` of them seen): bedtime, and in a
    # bulbs-only home the morning switch-off before a day without lights. A dark silence that began
    # then may be a night (the routine rule judges only those); one that began at another (waking)
    # hour gets the day margin, and a switch-off then on a lit evening may be a departure (lights-out).
    night_share: float = 0.5
    night_long_h: float = 6.0
    night_min_exposure: float = 3.0
    # Device health.
    heartbeat_timeout_s: float = 2 * 3600.0
    # A gateway offline this long is a device problem (a reboot or a firmware update takes minutes;
    # and when a whole area goes down, its area outage forms first instead of one ticket per home).
    # Welfare alarms pause at once all the same.
    gateway_grace_s: float = 600.0
    offline_share_suppress: float = 0.3  # offline devices carrying this share of activity: suppress
    # Area outage: this many gateways of an area offline at once, and this share of them.
    area_min_gateways: int = 3
    area_min_share: float = 0.3


DEFAULT_PARAMS = DetectorParams()


def default_silence_prior() -> np.ndarray:
    """A broad generic survival curve [2 light contexts, 24, E] for a fleet with no history yet.

    Broad on purpose: a home with bulbs only is often silent from the morning until the lights go on
    at dusk (10 h and more), so a fleet with no history alarms on little more than the hard cap."""
    hours = np.arange(24)
    # Longer expected silences from the evening (sleep) than from the day.
    night = ((hours >= 19) | (hours < 5)).astype(np.float32)
    tau = 3.5 + 1.5 * night  # hours
    d = np.maximum(SILENCE_EDGES_H[None, :] - 0.5, 0.0)
    surv = np.where(SILENCE_EDGES_H[None, :] > 0, (0.3 + 0.1 * night[:, None]) * np.exp(-d / tau[:, None]), 1.0).astype(np.float32)
    return np.broadcast_to(surv, (2, 24, len(SILENCE_EDGES_H))).copy()


def default_silence_rate() -> np.ndarray:
    """Generic silences of at least each ``SILENCE_EDGES_H`` per day (edge 0 unused): a night's sleep
    most days, a long day out now and then; broad, so that a fleet with no history caps at the hard
    cap and its own homes' past tightens it."""
    rate = np.array([0.0, 8, 5, 3.5, 2.5, 1.6, 1.2, 1.0, 0.9, 0.6, 0.25, 0.06, 0.02], np.float32)  # edge 0: unused (finite, to store)
    return rate[: len(SILENCE_EDGES_H)]


def default_out_prior() -> np.ndarray:
    """Generic survival of outings [E_OUT]: most last an hour or two (shopping, a walk, the clinic),
    some a day out; a night away is rare."""
    d = OUT_EDGES_H
    return np.where(d > 0, 0.9 * np.exp(-d / 2.5) + 0.02 * np.exp(-d / 12.0), 1.0).astype(np.float32)


def default_on_prior() -> np.ndarray:
    """Generic survival of on-episodes [blocks, E]: longer from the evening blocks."""
    blocks = np.arange(N_ON_BLOCKS) * ON_BLOCK_H
    tau = np.where((blocks >= 16) | (blocks < 4), 4.0, 2.0).astype(np.float32)
    d = np.maximum(ON_EDGES_H[None, :] - 0.5, 0.0)
    return np.where(ON_EDGES_H[None, :] > 0, 0.3 * np.exp(-d / tau[:, None]), 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


@dataclass
class FleetState:
    """Per-household state as parallel arrays (row = household). Times are epoch seconds (UTC)."""

    epoch: float  # device times of the f32 columns are seconds since this instant
    tz_offset_s: np.ndarray  # int32[H] local time = UTC + offset (Asia/Tokyo: +32400)
    area: np.ndarray  # int32[H]
    has_motion: np.ndarray  # bool[H]
    dev_kind: np.ndarray  # int8[H, D]   DEV_* or -1
    dev_switch: np.ndarray  # int8[H, D]  index into the switch columns, or -1
    dev_last_seen: np.ndarray  # float32[H, D] (since epoch; NaN = never)
    dev_heartbeats: np.ndarray  # bool[H, D] the device sends heartbeats (only then can silence mean "dead")
    dev_activity: np.ndarray  # float16[H, D] decayed share-of-activity counts
    last_activity: np.ndarray  # float64[H] (NaN = never)
    door_at: np.ndarray  # float32[H] latest front-door event (since epoch; NaN = never)
    resume_from: np.ndarray  # float64[H] end of the latest paused/unobservable stretch
    flags: np.ndarray  # uint8[H]
    decay_day: np.ndarray  # int16[H] day (local day number minus the epoch's day) the histograms were last decayed to
    last_hour: np.ndarray  # int32[H, 2] the latest local hour (hours since epoch) counted as exposure, per light context
    quantile_h: np.ndarray  # float16[H] threshold parts for the current silence
    alarm_after_h: np.ndarray  # float16[H]
    slot_history: np.ndarray  # float16[H] recorded silences behind the current threshold
    sil_hist: np.ndarray  # float16[H, 2 light contexts (all off / some on), 24, E_S]
    on_hist: np.ndarray  # float16[H, W, blocks, E_O]
    sw_on_since: np.ndarray  # float32[H, W] (since epoch; NaN = off)
    sw_alarm_after_h: np.ndarray  # float16[H, W]
    out_hist: np.ndarray  # float16[H, 2 departure kinds (door, lights out), E_OUT] outing lengths
    out_alarm_h: np.ndarray  # float16[H] "not back" after this long, for the current outing
    over_tight: np.ndarray  # float16[H] decayed count of past silences that passed the tight threshold
    bin_days: np.ndarray  # float16[H, N_BINS] decayed count of active days with activity in each local 2-hour bin
    days_active: np.ndarray  # float16[H] decayed count of local days with any activity
    gateway_offline_since: np.ndarray  # float64[H] (NaN = online)
    # Population priors per kind of home (0: bulbs only, 1: with sensors): their rhythms differ.
    prior_sil: np.ndarray = field(default_factory=lambda: np.stack([default_silence_prior()] * 2))  # [2, 2, 24, E_S]
    prior_on: np.ndarray = field(default_factory=lambda: np.stack([default_on_prior()] * 2))  # [2, blocks, E_O]
    prior_out: np.ndarray = field(default_factory=lambda: np.stack([default_out_prior()] * 2))  # [2 kinds, E_OUT]
    # Silences at least each edge long per active day, per kind of home (the budget cap's prior).
    prior_rate: np.ndarray = field(default_factory=lambda: np.stack([default_silence_rate()] * 2))  # [2, E_S]

    @property
    def n(self) -> int:
        return len(self.last_activity)

    def state_bytes(self) -> int:
        """Bytes of per-household arrays (the shared prior is excluded: it is per fleet)."""
        skip = {"prior_sil", "prior_on", "prior_out", "prior_rate"}
        return sum(v.nbytes for k, v in vars(self).items() if isinstance(v, np.ndarray) and k not in skip)


def new_state(
    device_kinds: np.ndarray,
    *,
    epoch: float,
    tz_offset_s: np.ndarray | int = 9 * 3600,
    area: np.ndarray | None = None,
    params: DetectorParams = DEFAULT_PARAMS,
    watch_start: np.ndarray | float | None = None,
) -> FleetState:
    """A fleet with no history. ``device_kinds``: int8[H, D<=MAX_DEVICES], DEV_* codes, -1 = none.
    ``watch_start`` (epoch s, per household or one for all; default ``epoch``): a home that has not
    reported any activity yet is silent since then (so only the hard cap applies, never at once)."""
    kinds = np.full((device_kinds.shape[0], MAX_DEVICES), DEV_NONE, dtype=np.int8)
    kinds[:, : device_kinds.shape[1]] = device_kinds[:, :MAX_DEVICES]
    h = kinds.shape[0]
    switchable = (kinds == DEV_BULB) | (kinds == DEV_PLUG)
    rank = np.cumsum(switchable, axis=1) - 1
    dev_switch = np.where(switchable & (rank < MAX_SWITCHES), rank, -1).astype(np.int8)
    nan32 = np.float32(np.nan)
    state = FleetState(
        epoch=float(epoch),
        tz_offset_s=np.broadcast_to(np.asarray(tz_offset_s, dtype=np.int32), (h,)).copy(),
        area=np.zeros(h, np.int32) if area is None else np.asarray(area, np.int32).copy(),
        has_motion=(kinds == DEV_MOTION).any(axis=1),
        dev_kind=kinds,
        dev_switch=dev_switch,
        dev_last_seen=np.full((h, MAX_DEVICES), nan32, np.float32),
        dev_heartbeats=np.zeros((h, MAX_DEVICES), bool),
        dev_activity=np.zeros((h, MAX_DEVICES), np.float16),
        last_activity=np.full(h, np.nan),
        door_at=np.full(h, nan32, np.float32),
        resume_from=np.broadcast_to(np.asarray(epoch if watch_start is None else watch_start, np.float64), (h,)).copy(),
        flags=np.zeros(h, np.uint8),
        decay_day=np.zeros(h, np.int16),
        last_hour=np.full((h, 2), -1, np.int32),
        quantile_h=np.zeros(h, np.float16),
        alarm_after_h=np.full(h, params.silence_cap_h, np.float16),
        slot_history=np.zeros(h, np.float16),
        sil_hist=np.zeros((h, 2, 24, len(SILENCE_EDGES_H)), np.float16),
        on_hist=np.zeros((h, MAX_SWITCHES, N_ON_BLOCKS, len(ON_EDGES_H)), np.float16),
        sw_on_since=np.full((h, MAX_SWITCHES), nan32, np.float32),
        sw_alarm_after_h=np.full((h, MAX_SWITCHES), params.on_cap_h, np.float16),
        out_hist=np.zeros((h, 2, len(OUT_EDGES_H)), np.float16),
        out_alarm_h=np.full(h, params.door_away_cap_h, np.float16),
        over_tight=np.zeros(h, np.float16),
        bin_days=np.zeros((h, N_BINS), np.float16),
        days_active=np.zeros(h, np.float16),
        gateway_offline_since=np.full(h, np.nan),
    )
    return state


def local_slot(t: np.ndarray, tz_offset_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(daytype 0 weekday / 1 weekend, local hour) of epoch seconds ``t``."""
    local = np.asarray(t, np.float64) + tz_offset_s
    days = np.floor(local / 86400.0).astype(np.int64)
    hour = ((local - days * 86400.0) // 3600).astype(np.int64)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (3, Monday = 0)
    return (weekday >= 5).astype(np.int64), np.clip(hour, 0, 23)


# ---------------------------------------------------------------------------------------------
# Thresholds from survival curves
# ---------------------------------------------------------------------------------------------


def _quantile(pooled: np.ndarray, prior: np.ndarray, edges: np.ndarray, strength: float, beta: float, tail_tau: float) -> np.ndarray:
    """Duration past which only ``beta`` of silences last, from exceedance counts [n, E]."""
    n = pooled[:, :1]
    surv = (pooled + strength * prior) / (n + strength)
    surv = np.minimum(surv, 1.0)
    below = surv <= beta
    has = below.any(axis=1)
    k = np.where(has, np.argmax(below, axis=1), len(edges) - 1)
    k = np.maximum(k, 1)
    rows = np.arange(len(k))
    s_lo = np.maximum(surv[rows, k - 1], 1e-9)
    s_hi = np.maximum(surv[rows, k], 1e-9)
    log_b = math.log(beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(s_lo > s_hi, (np.log(s_lo) - log_b) / (np.log(s_lo) - np.log(s_hi)), 1.0)
    q_inside = edges[k - 1] + np.clip(frac, 0.0, 1.0) * (edges[k] - edges[k - 1])
    q_tail = edges[-1] + tail_tau * np.log(np.maximum(s_hi, beta) / beta)
    return np.where(has, q_inside, q_tail).astype(np.float32)


def lit_context(state: FleetState, rows: np.ndarray) -> np.ndarray:
    """Light context of the current silence of ``rows``: 1 if any switch is on, 0 if all are off."""
    return (~np.isnan(state.sw_on_since[rows])).any(axis=1).astype(np.int64)


def dark_silence_kind(state: FleetState, rows: np.ndarray, hour: np.ndarray, p: DetectorParams) -> tuple[np.ndarray, np.ndarray]:
    """(known, long) for all-off silences of ``rows`` beginning at local ``hour``: ``known`` when the
    home has seen enough of them (``night_min_exposure``), ``long`` when at least ``night_share`` of
    them lasted ``night_long_h`` — its bedtime, or in a bulbs-only home also the morning switch-off
    after which nothing happens until dusk. Short ones are a waking hour's (an outing, a chore)."""
    dark = state.sil_hist[rows, 0, hour].astype(np.float32)  # rows and hour broadcast ([n] or [n, m])
    k = int(np.searchsorted(SILENCE_EDGES_H, p.night_long_h))
    known = dark[..., 0] >= p.night_min_exposure
    return known, known & (dark[..., k] >= p.night_share * dark[..., 0])


def silence_thresholds(state: FleetState, rows: np.ndarray, start: np.ndarray, p: DetectorParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantile_h, alarm_after_h, history) for silences of households ``rows`` that began at ``start``
    (in the light context the households are in now: nothing can switch during a silence)."""
    _, hour = local_slot(start, state.tz_offset_s[rows])
    ctx = lit_context(state, rows)
    hist = state.sil_hist
    own = hist[rows, ctx, hour].astype(np.float32)
    nb = hist[rows, ctx, (hour - 1) % 24].astype(np.float32) + hist[rows, ctx, (hour + 1) % 24].astype(np.float32)
    other = hist[rows, 1 - ctx, hour].astype(np.float32)
    pooled = own + p.neighbour_weight * nb + p.other_context_weight * other
    prior = state.prior_sil[state.has_motion[rows].astype(np.int64), ctx, hour]
    q = _quantile(pooled, prior, SILENCE_EDGES_H, p.prior_strength, p.beta, p.tail_tau_h)
    known, long = dark_silence_kind(state, rows, hour, p)
    lit_held = _lit_night_quantile(state, rows, start, hour, ctx, q, p) if p.lit_bedtime_as_night else np.zeros(len(rows), bool)
    # A dark silence from a waking hour of this home (its dark silences from then are usually short:
    # an outing, a chore) ends with a regular event; one from bedtime ends with waking up, which
    # varies more (sleeping late): the waking hour's needs less margin.
    day = (ctx == 0) & known & ~long
    margin_h = np.where(day, p.day_margin_h, np.where(lit_held, p.lit_night_margin_h, p.margin_h)).astype(np.float32)
    margin_frac = np.where(day, p.day_margin_frac, np.where(lit_held, p.lit_night_margin_frac, p.margin_frac)).astype(np.float32)
    alarm = np.clip(q + margin_h + margin_frac * q, p.min_alarm_h, p.silence_cap_h).astype(np.float32)
    if p.tight:
        days = state.days_active[rows].astype(np.float32)
        rate = state.over_tight[rows].astype(np.float32) / np.maximum(days, 1e-3) * 30.0
        ok = (days >= p.tight_min_days) & (rate <= p.tight_budget_per_month) & state.has_motion[rows]
        tight = np.maximum(q + p.tight_margin_h + p.tight_margin_frac * q, p.min_alarm_h)
        alarm = np.where(ok, np.minimum(alarm, tight), alarm).astype(np.float32)
    if p.budget_cap:
        alarm = np.where(state.has_motion[rows], np.minimum(alarm, budget_cap_h(state, rows, p)), alarm).astype(np.float32)
    return q, alarm, pooled[:, 0]


def budget_cap_h(state: FleetState, rows: np.ndarray, p: DetectorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Per household of ``rows``: hours of silence (from any start) past which this home's own past
    says it would alarm at most ``budget_per_month`` times a month, plus the margin (see
    ``DetectorParams.budget_cap``); ``silence_cap_h`` when even the last edge is too common."""
    own = state.sil_hist[rows].astype(np.float32).sum(axis=(1, 2))  # [n, E]: silences at least edge k long
    days = state.days_active[rows].astype(np.float32)
    prior = state.prior_rate[state.has_motion[rows].astype(np.int64)]
    k0 = p.budget_prior_days
    rate = (own[:, 1:] + k0 * prior[:, 1:]) / (days[:, None] + k0)  # per active day
    budget = p.budget_per_month / 30.0
    ok = rate <= budget
    has = ok.any(axis=1)
    k = np.argmax(ok, axis=1)  # first edge (from edge 1) within the budget
    edges = SILENCE_EDGES_H[1:]
    rows_i = np.arange(len(rows))
    lo_rate = np.where(k > 0, rate[rows_i, np.maximum(k - 1, 0)], budget)
    hi_rate = np.maximum(rate[rows_i, k], budget / 4.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(k > 0, (np.log(lo_rate) - np.log(budget)) / (np.log(lo_rate) - np.log(hi_rate)), 1.0)
    lo_edge = np.where(k > 0, edges[np.maximum(k - 1, 0)], 0.0)
    cap = lo_edge + np.clip(np.nan_to_num(frac, nan=1.0), 0.0, 1.0) * (edges[k] - lo_edge)
    cap = np.where(has, cap + p.budget_margin_h, p.silence_cap_h)
    return np.clip(cap, p.min_alarm_h, p.silence_cap_h).astype(np.float32)


def _lit_night_quantile(state: FleetState, rows: np.ndarray, start: np.ndarray, hour: np.ndarray, ctx: np.ndarray,
                        q: np.ndarray, p: DetectorParams) -> np.ndarray:
    """A lit silence that began in the evening may run into a night's sleep with a light forgotten
    on: raise its quantile ``q`` (in place) to the hours until the home's next bedtime (its first
    long-silence hour within ``lit_bedtime_within_h``) plus its ``night_beta`` quantile of the night
    from then. Only for a light that had been on a while when the silence began, or one that usually
    stays on for hours (the evening light): a light switched on and then nothing that is normally on
    for minutes (a fall in the night-time bathroom) keeps the fast path. Returns the rows raised."""
    held = np.zeros(len(rows), bool)
    with np.errstate(all="ignore"):
        newest_on = np.fmax.reduce(state.sw_on_since[rows].astype(np.float64), axis=1)
        on_a_while = (start - state.epoch - newest_on) >= p.lit_night_on_for_s  # NaN (none on): False
        is_on = ~np.isnan(state.sw_on_since[rows])
        stays_on = (np.where(is_on, state.sw_alarm_after_h[rows].astype(np.float32), 0.0) >= p.lit_night_long_light_h).any(axis=1)
    lit = np.flatnonzero((ctx == 1) & (on_a_while | stays_on))
    if not len(lit):
        return held
    r = rows[lit]
    ahead = (hour[lit, None] + np.arange(int(p.lit_bedtime_within_h) + 1)[None, :]) % 24
    is_bed = dark_silence_kind(state, r[:, None], ahead, p)[1]
    has = is_bed.any(axis=1)
    if not has.any():
        return held
    to_bed = np.argmax(is_bed, axis=1)[has]
    r, bed = r[has], ahead[has, to_bed]
    hist = state.sil_hist
    pooled = (hist[r, 0, bed].astype(np.float32) + p.other_context_weight * hist[r, 1, bed].astype(np.float32)
              + p.neighbour_weight * (hist[r, 0, (bed - 1) % 24].astype(np.float32) + hist[r, 0, (bed + 1) % 24].astype(np.float32)))
    night = to_bed + _quantile(pooled, state.prior_sil[state.has_motion[r].astype(np.int64), 0, bed], SILENCE_EDGES_H,
                               p.prior_strength, p.night_beta, p.tail_tau_h)
    idx = lit[has]
    raised = night > q[idx]
    q[idx[raised]] = night[raised]
    held[idx[raised]] = True
    return held


def on_thresholds(state: FleetState, rows: np.ndarray, sw: np.ndarray, start: np.ndarray, p: DetectorParams) -> np.ndarray:
    _, hour = local_slot(start, state.tz_offset_s[rows])
    block = hour // ON_BLOCK_H
    own = state.on_hist[rows, sw, block].astype(np.float32)
    nb = state.on_hist[rows, sw, (block - 1) % N_ON_BLOCKS].astype(np.float32) + state.on_hist[rows, sw, (block + 1) % N_ON_BLOCKS].astype(np.float32)
    pooled = own + 0.25 * nb
    q = _quantile(pooled, state.prior_on[state.has_motion[rows].astype(np.int64), block], ON_EDGES_H, p.prior_strength, p.on_beta, p.tail_tau_h)
    return np.clip(q + p.on_margin_h + p.on_margin_frac * q, p.on_min_alarm_h, p.on_cap_h).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Online update
# ---------------------------------------------------------------------------------------------


def _decay(state: FleetState, rows: np.ndarray, day: np.ndarray, p: DetectorParams) -> None:
    """Bring the histograms of ``rows`` (unique) to ``day`` with the decay they missed."""
    day = day - int(state.epoch // 86400)  # int16 days since the epoch's day: 89 years of range
    gap = day - state.decay_day[rows]
    due = gap > 0
    if not due.any():
        return
    r = rows[due]
    f = (0.5 ** (gap[due] / p.half_life_days)).astype(np.float32)
    state.sil_hist[r] = (state.sil_hist[r].astype(np.float32) * f[:, None, None, None]).astype(np.float16)
    state.on_hist[r] = (state.on_hist[r].astype(np.float32) * f[:, None, None, None]).astype(np.float16)
    state.out_hist[r] = (state.out_hist[r].astype(np.float32) * f[:, None, None]).astype(np.float16)
    state.dev_activity[r] = (state.dev_activity[r].astype(np.float32) * f[:, None]).astype(np.float16)
    state.bin_days[r] = (state.bin_days[r].astype(np.float32) * f[:, None]).astype(np.float16)
    state.days_active[r] = (state.days_active[r].astype(np.float32) * f).astype(np.float16)
    state.over_tight[r] = (state.over_tight[r].astype(np.float32) * f).astype(np.float16)
    state.decay_day[r] = day[due]


def _add_exceedance(hist_flat: np.ndarray, base_index: np.ndarray, durations_h: np.ndarray, edges: np.ndarray, *, exposure: bool,
                    weight: np.ndarray | float = 1.0) -> None:
    """Add one silence/episode of each duration to the exceedance counts starting at ``base_index``
    (edge 0 too when ``exposure``: every episode is a trial)."""
    w = np.broadcast_to(np.asarray(weight, np.float32), durations_h.shape)[:, None]
    mask = (((durations_h[:, None] >= edges[None, :]) & ((edges[None, :] > 0) | exposure)) * w).astype(np.float16)
    idx = base_index[:, None] + np.arange(len(edges))[None, :]
    np.add.at(hist_flat, idx.ravel(), mask.ravel())


def observe(
    state: FleetState,
    hh: np.ndarray,
    dev: np.ndarray,
    t: np.ndarray,
    kind: np.ndarray,
    p: DetectorParams = DEFAULT_PARAMS,
) -> None:
    """Learn from a batch of events (any order, any households): household row, device column,
    epoch seconds, EV_* code. Call with batches in time order (each batch after the previous)."""
    if len(t) == 0:
        return
    hh = np.asarray(hh, np.int64)
    dev = np.asarray(dev, np.int64)
    t = np.asarray(t, np.float64)
    kind = np.asarray(kind, np.int64)
    order = np.lexsort((t, hh))
    hh, dev, t, kind = hh[order], dev[order], t[order], kind[order]

    # Device health: anything a device sends proves it is alive.
    rel = (t - state.epoch).astype(np.float32)
    key = hh * MAX_DEVICES + dev
    o = np.lexsort((t, key))
    last_idx = o[np.r_[key[o][1:] != key[o][:-1], True]]
    state.dev_last_seen.reshape(-1)[key[last_idx]] = rel[last_idx]
    state.dev_heartbeats.reshape(-1)[key[kind == EV_HEARTBEAT]] = True

    lit_after, lit_before = _lit_after_events(state, hh, dev, kind)
    _observe_switches(state, hh, dev, t, kind, p)
    act = np.isin(kind, ACTIVITY_CODES)
    if not act.any():
        return
    hh, dev, t, kind = hh[act], dev[act], t[act], kind[act]
    lit_after, lit_before = lit_after[act], lit_before[act]
    rows, first = np.unique(hh, return_index=True)
    local_day = ((t + state.tz_offset_s[hh]) // 86400).astype(np.int32)
    _decay(state, rows, local_day[first], p)

    # Activity share per device (for "are the offline devices the ones that carry the signal").
    np.add.at(state.dev_activity.reshape(-1), hh * MAX_DEVICES + dev, np.float16(1.0))

    same = np.r_[False, hh[1:] == hh[:-1]]
    # Light context at the start of the gap before each event: after the previous activity event.
    prev_lit = np.r_[False, lit_after[:-1]]
    prev_lit[~same] = lit_before[~same]
    prev_lit = prev_lit.astype(np.int64)

    # Exposure: each local hour with activity, once per light context an event left the home in
    # (each is a trial: the silence that follows such an event).
    hour_no = ((t + state.tz_offset_s[hh]) // 3600).astype(np.int64)
    ctx_after = lit_after.astype(np.int64)
    key = (hh * 2 + ctx_after) * (1 << 32) + hour_no
    _, first_idx = np.unique(key, return_index=True)
    new_hour = np.zeros(len(t), bool)
    new_hour[first_idx] = True
    new_hour &= hour_no > state.last_hour[hh, ctx_after]
    if new_hour.any():
        flat = ((hh[new_hour] * 2 + ctx_after[new_hour]) * 24 + hour_no[new_hour] % 24) * len(SILENCE_EDGES_H)
        np.add.at(state.sil_hist.reshape(-1), flat, np.float16(1.0))
    np.maximum.at(state.last_hour.reshape(-1), hh * 2 + ctx_after, hour_no.astype(np.int32))

    # Silences: the gap before each event (the first of a household's batch uses its last activity).
    prev = np.empty_like(t)
    prev[1:] = t[:-1]
    prev[~same] = state.last_activity[hh[~same]]
    starts_effective = prev.copy()
    # The daily routine: each (local day, 2-hour bin) with activity once, each active local day once.
    local_t = t + state.tz_offset_s[hh]
    local_prev = prev + state.tz_offset_s[hh]
    with np.errstate(invalid="ignore"):
        new_day = ~(np.floor(local_prev / 86400.0) == np.floor(local_t / 86400.0))  # NaN prev: new
        new_bin = new_day | ~(np.floor(local_prev / (BIN_H * 3600.0)) == np.floor(local_t / (BIN_H * 3600.0)))
    new_day &= prev <= t
    new_bin &= prev <= t  # a late arrival inside a stretch already counted is not a new day
    if new_bin.any():
        bins = ((local_t[new_bin] % 86400.0) // (BIN_H * 3600.0)).astype(np.int64)
        np.add.at(state.bin_days.reshape(-1), hh[new_bin] * N_BINS + bins, np.float16(1.0))
    # An active day is counted once it is over (at the first event of a later day): counted in the
    # morning, it would make every later bin of today look missed until the day's end.
    done_day = new_day & np.isfinite(prev)
    if done_day.any():
        # ... with the decay the bins of that day have had since (the histograms are already at today).
        age = np.floor(local_t[done_day] / 86400.0) - np.floor(local_prev[done_day] / 86400.0)
        np.add.at(state.days_active, hh[done_day], (0.5 ** (age / p.half_life_days)).astype(np.float16))
    learnable = np.isfinite(prev)
    # The first silence of each household in the batch may have been paused, blind or door-started.
    first_mask = ~same
    stored_flags = state.flags[hh]
    blind = (stored_flags & (_FLAG_BLIND | _FLAG_DOOR)) != 0  # a lights-out silence is learned: it says how long outings last
    learnable &= ~(first_mask & blind)
    # Inside the batch, a silence that began with a door event is not an at-home silence.
    out_after = _out_after_events(state, hh, dev, t, kind, same, p)
    door_start = same & np.r_[False, out_after[:-1]]
    learnable &= ~door_start
    gap_h = (t - prev) / 3600.0
    # Outings: how long this home's departures last (door: in the batch or stored; lights out: stored).
    unpaused = first_mask & ((stored_flags & _FLAG_BLIND) == 0) & np.isfinite(prev)
    out_door = door_start | (unpaused & ((stored_flags & _FLAG_DOOR) != 0))
    out_lights = unpaused & ~out_door & ((stored_flags & _FLAG_LIGHTS_OUT) != 0)
    for sel, kind_out in ((out_door, OUT_DOOR), (out_lights, OUT_LIGHTS)):
        if sel.any():
            base = (hh[sel] * 2 + kind_out) * len(OUT_EDGES_H)
            _add_exceedance(state.out_hist.reshape(-1), base, gap_h[sel].astype(np.float32), OUT_EDGES_H, exposure=True)
    rec = learnable & (gap_h >= p.silence_min_h)
    if rec.any():
        _, hour = local_slot(starts_effective[rec], state.tz_offset_s[hh[rec]])
        base = ((hh[rec] * 2 + prev_lit[rec]) * 24 + hour) * len(SILENCE_EDGES_H)
        # A silence that went past its alarm threshold can be learned with a smaller weight
        # (``anomalous_weight``), so a one-off does not blunt the detector for weeks; measured on the
        # simulator, full weight (1.0, the default) gave fewer false alerts at the same delays.
        alarmed = ~same[rec] & (gap_h[rec] > state.alarm_after_h[hh[rec]])
        weight = np.where(alarmed, p.anomalous_weight, 1.0)
        # Would the tight threshold have alarmed on it? (The home's own false-alert budget.)
        q_then = state.quantile_h[hh[rec]].astype(np.float32)
        tight_then = np.maximum(q_then + p.tight_margin_h + p.tight_margin_frac * q_then, p.min_alarm_h)
        over = ~same[rec] & (gap_h[rec] > tight_then)
        if over.any():
            np.add.at(state.over_tight, hh[rec][over], np.float16(1.0))
        _add_exceedance(state.sil_hist.reshape(-1), base, gap_h[rec].astype(np.float32), SILENCE_EDGES_H, exposure=False, weight=weight)

    # The new current silence of each household begins at its last event.
    last = np.r_[np.nonzero(hh[1:] != hh[:-1])[0], len(hh) - 1]
    r_last = hh[last]
    state.last_activity[r_last] = np.fmax(state.last_activity[r_last], t[last])  # late arrivals never move it back
    moved = state.flags[r_last] & _FLAG_MOVED_AFTER_DOOR  # updated by _out_after_events
    lights_out = _lights_out_departure(state, r_last, t[last], kind[last], lit_after[last], p)
    state.flags[r_last] = (np.where(out_after[last], _FLAG_DOOR, 0) | np.where(lights_out, _FLAG_LIGHTS_OUT, 0) | moved).astype(np.uint8)
    q, alarm, hist_n = silence_thresholds(state, r_last, state.last_activity[r_last], p)
    state.quantile_h[r_last] = q
    state.alarm_after_h[r_last] = alarm
    state.slot_history[r_last] = hist_n.astype(np.float16)
    out_kind = np.where(out_after[last], OUT_DOOR, OUT_LIGHTS)
    state.out_alarm_h[r_last] = outing_thresholds(state, r_last, out_kind, p).astype(np.float16)


def outing_thresholds(state: FleetState, rows: np.ndarray, out_kind: np.ndarray, p: DetectorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Hours after a departure (``out_kind``: OUT_DOOR / OUT_LIGHTS) past which the outing is far
    beyond this home's usual ones: "not back"."""
    own = state.out_hist[rows, out_kind].astype(np.float32)
    prior = state.prior_out[out_kind]
    q = _quantile(own, prior, OUT_EDGES_H, p.out_prior_strength, p.out_beta, p.tail_tau_h)
    return np.clip(q + p.out_margin_h + p.out_margin_frac * q, p.out_min_h, p.door_away_cap_h).astype(np.float32)


def _lights_out_departure(state: FleetState, rows: np.ndarray, t: np.ndarray, kind: np.ndarray, lit_after: np.ndarray,
                          p: DetectorParams) -> np.ndarray:
    """For each household's latest activity event: did it switch the last light off at an hour the
    home is usually lit while someone is up, and which is not its bedtime? Then the resident has
    probably gone out (the dark home is how leaving looks in a home with bulbs only)."""
    out = np.zeros(len(rows), bool)
    cand = (kind == EV_OFF) & ~lit_after
    if not p.lights_out or not cand.any():
        return out
    r = rows[cand]
    _, hour = local_slot(t[cand], state.tz_offset_s[r])
    known, long = dark_silence_kind(state, r, hour, p)
    # Lit at this hour and the next (so not the morning, when daylight switches the lights off).
    usually_lit = np.ones(len(r), bool)
    for h in (hour, (hour + 1) % 24):
        lit_exposure = state.sil_hist[r, 1, h, 0].astype(np.float32)
        usually_lit &= lit_exposure >= p.lights_out_lit_share * (lit_exposure + state.sil_hist[r, 0, h, 0].astype(np.float32))
    out[cand] = usually_lit & known & ~long
    return out


def _out_after_events(state: FleetState, hh: np.ndarray, dev: np.ndarray, t: np.ndarray, kind: np.ndarray, same: np.ndarray,
                      p: DetectorParams) -> np.ndarray:
    """For activity events sorted by (household, time): did the resident probably go out by then?
    True when the household's latest front-door event is at most ``door_grace_s`` before the event
    and no motion sensor saw anyone since the door (lights switched off on the way out come just
    after the door). Only homes with motion sensors: there a return would be seen. Updates the
    stored door time and the "moved after the door" flag."""
    n = len(t)
    idx = np.arange(n)
    first = ~same
    hh_start = np.maximum.accumulate(np.where(first, idx, 0))
    is_door = (state.dev_kind[hh, dev] == DEV_DOOR) & np.isin(kind, (EV_OPEN, EV_CLOSE))
    is_motion = kind == EV_MOTION
    leaving = is_door
    if p.door_arrival_quiet_s > 0 and is_door.any():
        # A door after a quiet home is someone coming in, not going out (a resident who collapses
        # just inside the door must not be taken for out): quiet = no other activity before it.
        last_other = np.maximum.accumulate(np.where(~is_door, idx, -1))
        other_in_batch = (last_other >= hh_start) & (last_other < idx)
        before = np.where(other_in_batch, t[np.maximum(last_other, 0)], state.last_activity[hh])
        with np.errstate(invalid="ignore"):
            arrival = ~((t - before) < p.door_arrival_quiet_s)  # never active before: an arrival too
        leaving = is_door & ~arrival
    if p.door_not_at_bedtime and leaving.any():
        # A door at this home's bedtime (an hour from which its silences usually last the night) is
        # the bedroom or the lock for the night, not a departure: judged as the night it is.
        d = np.flatnonzero(leaving)
        _, hour = local_slot(t[d], state.tz_offset_s[hh[d]])
        leaving[d[dark_silence_kind(state, hh[d], hour, p)[1]]] = False
    last_door = np.maximum.accumulate(np.where(leaving, idx, -1))
    last_motion = np.maximum.accumulate(np.where(is_motion, idx, -1))
    door_in_batch = last_door >= hh_start
    motion_in_batch = last_motion >= hh_start
    stored_door = state.door_at[hh].astype(np.float64) + state.epoch
    stored_moved = (state.flags[hh] & _FLAG_MOVED_AFTER_DOOR) != 0
    door_time = np.where(door_in_batch, t[np.maximum(last_door, 0)], stored_door)
    moved = np.where(door_in_batch, last_motion > last_door, stored_moved | motion_in_batch)
    with np.errstate(invalid="ignore"):
        out = state.has_motion[hh] & ~moved & ((t - door_time) <= p.door_grace_s)  # NaN door time: False
    last = np.r_[np.nonzero(hh[1:] != hh[:-1])[0], n - 1]
    r = hh[last]
    state.door_at[r] = (door_time[last] - state.epoch).astype(np.float32)
    state.flags[r] = np.where(moved[last], state.flags[r] | _FLAG_MOVED_AFTER_DOOR, state.flags[r] & ~_FLAG_MOVED_AFTER_DOOR).astype(np.uint8)
    return out


def _lit_after_events(state: FleetState, hh: np.ndarray, dev: np.ndarray, kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(any switch on after each event, any switch on before the batch) for events sorted by
    (household, time); call before ``_observe_switches`` updates the stored switch states."""
    on_before = (~np.isnan(state.sw_on_since[hh])).sum(axis=1).astype(np.int64)
    sw = state.dev_switch[hh, dev].astype(np.int64)
    m = (sw >= 0) & np.isin(kind, (EV_ON, EV_OFF, EV_BOOT))
    delta = np.zeros(len(hh), np.int64)
    if m.any():
        idx = np.flatnonzero(m)
        key = hh[idx] * MAX_SWITCHES + sw[idx]
        o = np.argsort(key, kind="stable")  # keeps time order within a switch
        idx, key = idx[o], key[o]
        new = (kind[idx] == EV_ON).astype(np.int64)
        first = np.r_[True, key[1:] != key[:-1]]
        stored = (~np.isnan(state.sw_on_since.reshape(-1)[key])).astype(np.int64)
        delta[idx] = new - np.where(first, stored, np.r_[0, new[:-1]])
    cs = np.cumsum(delta)
    start = np.maximum.accumulate(np.where(np.r_[True, hh[1:] != hh[:-1]], np.arange(len(hh)), 0))
    after = on_before + cs - (cs[start] - delta[start])
    return after > 0, on_before > 0


def _observe_switches(state: FleetState, hh: np.ndarray, dev: np.ndarray, t: np.ndarray, kind: np.ndarray, p: DetectorParams) -> None:
    """On/off episodes per switchable device (vectorised). After an event the device is on iff the
    event was ``on``; an episode opens at the first ``on`` after off and closes at the next ``off``;
    a ``boot`` (power back, restart) forgets the state without recording an episode."""
    sw = state.dev_switch[hh, dev]
    m = (sw >= 0) & ((kind == EV_ON) | (kind == EV_OFF) | (kind == EV_BOOT))
    if not m.any():
        return
    hh, sw, t, kind = hh[m], sw[m].astype(np.int64), t[m], kind[m]
    key = hh * MAX_SWITCHES + sw
    order = np.lexsort((t, key))
    key, hh, sw, t, kind = key[order], hh[order], sw[order], t[order], kind[order]
    flat_since = state.sw_on_since.reshape(-1)
    stored = flat_since[key].astype(np.float64) + state.epoch  # NaN when off
    first = np.r_[True, key[1:] != key[:-1]]
    is_on = kind == EV_ON
    prev_on = np.where(first, ~np.isnan(stored), np.r_[False, is_on[:-1]])
    # Start time of the current on-run at each event (valid at run starts, forward-filled).
    start = np.where(is_on & ~prev_on, t, np.where(first & is_on & prev_on, stored, np.nan))
    valid = ~np.isnan(start)
    last_valid = np.maximum.accumulate(np.where(valid, np.arange(len(t)), 0))
    since = start[last_valid]
    since_before = np.where(first, stored, np.r_[np.nan, since[:-1]])
    closes = (kind == EV_OFF) & prev_on & ~np.isnan(since_before)
    if closes.any():
        r, s_, st = hh[closes], sw[closes], since_before[closes]
        dur_h = ((t[closes] - st) / 3600.0).astype(np.float32)
        ok = dur_h >= 0
        _, hour = local_slot(st[ok], state.tz_offset_s[r[ok]])
        base = ((r[ok] * MAX_SWITCHES + s_[ok]) * N_ON_BLOCKS + hour // ON_BLOCK_H) * len(ON_EDGES_H)
        _add_exceedance(state.on_hist.reshape(-1), base, dur_h[ok], ON_EDGES_H, exposure=True)
    last = np.r_[key[1:] != key[:-1], True]
    final_on = is_on[last]
    final_since = np.where(final_on, since[last], np.nan)
    changed = final_on & ~(since[last] == stored[last])
    flat_since[key[last]] = (final_since - state.epoch).astype(np.float32)
    if changed.any():
        r, s_ = hh[last][changed], sw[last][changed]
        state.sw_alarm_after_h[r, s_] = on_thresholds(state, r, s_, final_since[changed], p)


def observe_gateway(state: FleetState, hh: np.ndarray, t: np.ndarray, online: np.ndarray) -> None:
    """Gateway status changes (``online`` False = the last will fired), in time order."""
    for r, ts, up in zip(np.asarray(hh).tolist(), np.asarray(t).tolist(), np.asarray(online).tolist()):
        if up:
            state.gateway_offline_since[r] = np.nan
        elif np.isnan(state.gateway_offline_since[r]):
            state.gateway_offline_since[r] = ts


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@dataclass
class Scores:
    """One scoring pass. Welfare alarms already have the context applied (suppressed = held back)."""

    inactivity: np.ndarray  # bool[H] welfare alarm: unusual silence
    inactivity_score: np.ndarray  # float32[H] -log10 P(silence at least this long | its start slot)
    inactivity_rule: np.ndarray  # uint8[H] RULE_*
    silence_start: np.ndarray  # float64[H]
    expected_by: np.ndarray  # float64[H] activity usually resumes by then (start + quantile)
    alarm_at: np.ndarray  # float64[H]
    long_on: np.ndarray  # bool[H] welfare alarm: a device on unusually long
    long_on_switch: np.ndarray  # int64[H] which switch column (-1 none)
    long_on_since: np.ndarray  # float64[H]
    long_on_hours: np.ndarray  # float32[H]
    device_offline: np.ndarray  # bool[H] technical: a device silent past its heartbeat timeout, or gateway down
    offline_devices: np.ndarray  # bool[H, D]
    gateway_offline: np.ndarray  # bool[H]
    area_outage: np.ndarray  # bool[H] the household's area has many gateways offline
    suppressed: np.ndarray  # uint8[H] SUPPRESS_* (why a welfare alarm is held back)


def routine_alarm_at(state: FleetState, ref: np.ndarray, now: float, p: DetectorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Per household, when the routine rule alarmed for the silence that began at ``ref`` (inf: not
    by now): the end of the first reliable 2-hour bin of a later local day that passed entirely in
    silence, plus the margin."""
    out = np.full(state.n, np.inf)
    if not p.routine:
        return out
    # Only silences that already reach into a later local day can fire (few at any time): cheap filter first.
    shift = p.routine_day_start_h * 3600.0
    with np.errstate(invalid="ignore"):
        tz_all = state.tz_offset_s.astype(np.float64) - shift
        later_day = np.floor((ref + tz_all) / 86400.0) < np.floor((now + tz_all) / 86400.0)
    rows = np.flatnonzero(later_day & (state.days_active >= p.routine_min_days))
    if not len(rows):
        return out
    # Only a silence that began as this home's night (all lights off, at an hour from which its
    # dark silences usually last the night): "went to bed and is not up". One that began in the
    # afternoon and ran into the next day is mostly a night away, which misses the morning too.
    _, start_hour = local_slot(ref[rows], state.tz_offset_s[rows])
    rows = rows[(lit_context(state, rows) == 0) & dark_silence_kind(state, rows, start_hour, p)[1]]
    if not len(rows):
        return out
    days = state.days_active[rows].astype(np.float32)  # complete active days (bins of today may be counted already)
    reliable_rows = state.bin_days[rows].astype(np.float32) >= p.routine_p * days[:, None]
    from_hour = np.where(state.has_motion[rows], p.routine_from_hour_sensors, p.routine_from_hour)
    reliable_rows &= (np.arange(N_BINS) * BIN_H)[None, :] >= from_hour[:, None]
    keep = reliable_rows.any(axis=1)
    rows, reliable_rows = rows[keep], reliable_rows[keep]
    if not len(rows):
        return out
    tz = state.tz_offset_s[rows].astype(np.float64)
    bin_s = BIN_H * 3600.0
    ref_local = ref[rows] + tz
    # Only the days after the one the silence began in (a day with no sign of life yet): within the
    # day, the quantile of the silence judges; a reliable bin of today missed by an afternoon silence
    # was too often a seasonal or one-off change (+0.06-0.10 false/household-month on seed 11).
    first_start = (np.floor((ref_local - shift) / 86400.0) + 1.0) * 86400.0 + shift  # the next local day start
    first_bin = ((first_start % 86400.0) // bin_s).astype(np.int64)
    k = (np.arange(N_BINS)[None, :] - first_bin[:, None]) % N_BINS  # bins after the first one
    end_local = first_start[:, None] + (k + 1) * bin_s
    at = end_local - tz[:, None] + p.routine_margin_h * 3600.0
    b = (first_bin[:, None] + k) % N_BINS
    at = np.where(np.take_along_axis(reliable_rows, b, axis=1) & (at <= now + 86400.0), at, np.inf)
    out[rows] = at.min(axis=1)
    return out


def area_outage_mask(gateway_offline: np.ndarray, area: np.ndarray, p: DetectorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Per household: is its area in an outage (many of its gateways offline at once)?"""
    n_areas = int(area.max()) + 1 if len(area) else 0
    total = np.bincount(area, minlength=n_areas)
    down = np.bincount(area, weights=gateway_offline.astype(np.float64), minlength=n_areas)
    outage = (down >= p.area_min_gateways) & (down >= p.area_min_share * total)
    return outage[area]


def score(
    state: FleetState,
    now: float,
    *,
    away_until: np.ndarray | None = None,
    asked_first: np.ndarray | None = None,
    p: DetectorParams = DEFAULT_PARAMS,
) -> Scores:
    """Score every household at ``now``. ``away_until``: float64[H], away mode ends then (NaN/-inf = not away).
    ``asked_first``: bool[H], homes whose resident the alert engine asks before the team
    (``p.asked_first_margin_h``).

    Also records in the state that a paused or unobservable stretch happened (so the silence is
    not learned and is judged afresh from its end), which is why it takes the state.
    """
    h = state.n
    # --- device health ---------------------------------------------------------------------
    rel_now = np.float32(now - state.epoch)
    with np.errstate(invalid="ignore"):
        dev_silent = ((rel_now - state.dev_last_seen) > p.heartbeat_timeout_s) & state.dev_heartbeats  # NaN compares False
    gw_off = ~np.isnan(state.gateway_offline_since)
    with np.errstate(invalid="ignore"):
        gw_down = (now - state.gateway_offline_since) >= p.gateway_grace_s  # reported as a problem (NaN: False)
    present = state.dev_kind >= 0
    offline_devices = dev_silent | (gw_off[:, None] & present)
    area_alarm = area_outage_mask(gw_down, state.area, p)
    # A home whose gateway is down in an area outage is covered by the area's incident.
    device_problem = ((dev_silent & present).any(axis=1) & ~gw_off) | (gw_down & ~area_alarm)
    act = state.dev_activity.astype(np.float32)
    total = act.sum(axis=1)
    offline_share = np.where(total > 0, (act * offline_devices).sum(axis=1) / np.maximum(total, 1e-6), 0.0)
    # Blind: nothing that could report activity is online. Partial: devices that carried a good
    # share of the activity are gone, so the learned rhythm no longer fits: only the hard cap.
    blind = gw_off | (present.any(axis=1) & ~(present & ~offline_devices).any(axis=1))
    partial = ~blind & (offline_share >= p.offline_share_suppress)
    area_out = area_outage_mask(gw_off, state.area, p)
    away = np.zeros(h, bool) if away_until is None else (np.nan_to_num(away_until, nan=-np.inf) > now)
    paused = away | blind | area_out

    # Remember the paused stretch: its silence is not learned, and is judged afresh after it, as
    # if activity had been seen when it ended (the resident may well have been active meanwhile).
    state.resume_from[paused] = now
    state.flags[paused] = (state.flags[paused] | _FLAG_BLIND) & ~_FLAG_REJUDGED
    resumed = np.flatnonzero(((state.flags & (_FLAG_BLIND | _FLAG_REJUDGED)) == _FLAG_BLIND) & ~paused)
    if len(resumed):
        q, alarm, hist_n = silence_thresholds(state, resumed, state.resume_from[resumed], p)
        state.quantile_h[resumed] = q
        state.alarm_after_h[resumed] = alarm
        state.slot_history[resumed] = hist_n.astype(np.float16)
        state.flags[resumed] |= _FLAG_REJUDGED

    # --- silence ---------------------------------------------------------------------------
    start = state.last_activity
    ref = np.fmax(start, state.resume_from)  # the silence being judged began here
    silence_h = ((now - ref) / 3600.0).astype(np.float32)  # NaN before any activity
    q = state.quantile_h.astype(np.float32)
    alarm_h = state.alarm_after_h.astype(np.float32)
    if asked_first is not None and p.asked_first_margin_h is not None:
        fast = np.clip(q + p.asked_first_margin_h + p.asked_first_margin_frac * q, p.min_alarm_h, p.silence_cap_h)
        alarm_h = np.where(asked_first, np.minimum(alarm_h, fast), alarm_h).astype(np.float32)
    margin = np.maximum(alarm_h - q, 1e-3)
    # Score: -log10(beta) at the quantile, rising to -log10(alpha) at the alarm threshold.
    lb, la = -math.log10(p.beta), -math.log10(p.alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        sc = np.where(silence_h <= q, lb * silence_h / np.maximum(q, 1e-3), lb + (la - lb) * (silence_h - q) / margin)
    sc = np.nan_to_num(sc, nan=0.0).astype(np.float32)
    alarm_at = ref + alarm_h * 3600.0
    cap_at = ref + p.silence_cap_h * 3600.0
    went_out = (state.flags & _FLAGS_OUT) != 0  # by the door, or the lights switched off (inferred away)
    by_door = (state.flags & _FLAG_DOOR) != 0
    # Out until this home's outings are usually over ("not back" past it).
    out_until = start + state.out_alarm_h.astype(np.float64) * 3600.0
    out_now = went_out & (now < out_until)
    alarm_at = np.minimum(alarm_at, cap_at)
    routine_at = routine_alarm_at(state, ref, now, p)
    by_routine = routine_at < alarm_at
    alarm_at = np.minimum(alarm_at, routine_at)
    # After the front door, the outing's length judges (the at-home silence does not apply); after
    # the lights went out (a weaker sign of leaving), whichever is later.
    alarm_at = np.where(by_door, out_until, np.where(went_out, np.maximum(alarm_at, out_until), alarm_at))
    inactive = now >= alarm_at  # False for NaN
    hard = now >= np.where(went_out, np.maximum(cap_at, out_until), cap_at)
    not_back = went_out & (alarm_at == out_until)
    rule = np.where(
        ~inactive,
        RULE_NONE,
        np.where(not_back, RULE_NOT_BACK, np.where(hard, RULE_HARD_CAP, np.where(by_routine, RULE_ROUTINE,
                 np.where(state.slot_history.astype(np.float32) < p.min_history, RULE_PRIOR, RULE_MODEL)))),
    ).astype(np.uint8)

    # --- long-on: a device on unusually long while the household is quieter than usual -----
    on_h = (rel_now - state.sw_on_since) / np.float32(3600.0)  # NaN when off
    gate_h = p.on_silence_q * q + p.on_silence_frac * margin
    with np.errstate(invalid="ignore"):
        over = (on_h >= state.sw_alarm_after_h) & ((silence_h >= gate_h)[:, None] | ((on_h >= p.on_cap_h) & (silence_h >= p.on_cap_quiet_q * q)[:, None]))
    over &= ~out_now[:, None]  # a light left on by someone who went out
    # A light that was on long before the current silence began, while the resident was up and
    # about, says nothing about this silence (a lamp left on for days, a stuck state).
    with np.errstate(invalid="ignore"):
        stale = ((ref - state.epoch)[:, None] - state.sw_on_since) > p.on_stale_h * 3600.0
    over &= ~stale
    long_on = over.any(axis=1)
    # When the long-on alarm began (for the switches past it), to keep one alarm kind per episode:
    # whichever of long-on and inactivity came first stays the alarm while the silence lasts.
    since_abs = state.sw_on_since.astype(np.float64) + state.epoch
    cap_onset = np.maximum(since_abs + p.on_cap_h * 3600.0, (ref + p.on_cap_quiet_q * q * 3600.0)[:, None])
    onset = np.maximum(since_abs + state.sw_alarm_after_h * 3600.0, np.minimum((ref + gate_h * 3600.0)[:, None], cap_onset))
    long_onset = np.min(np.where(over, onset, np.inf), axis=1)
    long_on = long_on & ~(inactive & (alarm_at < long_onset))
    with np.errstate(invalid="ignore"):
        ratio = np.where(over, on_h / state.sw_alarm_after_h, -1.0)
    which = np.where(long_on, np.argmax(ratio, axis=1), -1)
    rows = np.arange(h)
    wsafe = np.maximum(which, 0)
    long_on_since = np.where(long_on, state.sw_on_since[rows, wsafe].astype(np.float64) + state.epoch, np.nan)
    long_on_hours = np.where(long_on, on_h[rows, wsafe], 0.0).astype(np.float32)

    # --- context ---------------------------------------------------------------------------
    partial_hold = partial & (rule != RULE_HARD_CAP)
    suppressed = np.full(h, SUPPRESS_NONE, np.uint8)
    suppressed[out_now] = SUPPRESS_DOOR
    suppressed[blind | (partial_hold & inactive)] = SUPPRESS_DEVICE
    suppressed[area_out] = SUPPRESS_AREA
    suppressed[away] = SUPPRESS_AWAY
    welfare_ok = ~paused
    return Scores(
        # One welfare alarm per household: while a device is on too long, that is the alarm.
        inactivity=inactive & welfare_ok & ~partial_hold & ~(long_on & ~partial),
        inactivity_score=sc,
        inactivity_rule=rule,
        silence_start=ref.copy(),
        expected_by=ref + q * 3600.0,
        alarm_at=alarm_at,
        long_on=long_on & welfare_ok & ~partial,
        long_on_switch=which,
        long_on_since=long_on_since,
        long_on_hours=long_on_hours,
        device_offline=device_problem,
        offline_devices=offline_devices,
        gateway_offline=gw_off,
        area_outage=area_alarm,
        suppressed=suppressed,
    )


# ---------------------------------------------------------------------------------------------
# Population prior
# ---------------------------------------------------------------------------------------------


def population_prior(state: FleetState, *, min_count: float = 3.0, default_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The fleet's average survival curves per kind of home (silence [2, 2, 24, E_S], on [2, blocks,
    E_O]), each slot an average over the homes with some history there, shrunk toward the generic default."""
    sil = np.zeros(state.prior_sil.shape, np.float64)
    cnt = np.zeros(state.prior_sil.shape[:-1] + (1,), np.float64)
    on = np.zeros(state.prior_on.shape, np.float64)
    on_cnt = np.zeros(state.prior_on.shape[:-1] + (1,), np.float64)
    chunk = 65536
    for lo in range(0, state.n, chunk):
        group = state.has_motion[lo : lo + chunk]
        for g in (0, 1):
            sel = group == g
            if not sel.any():
                continue
            hs = state.sil_hist[lo : lo + chunk][sel].astype(np.float32)
            n = hs[..., :1]
            ok = n >= min_count
            sil[g] += np.where(ok, hs / np.maximum(n, 1e-6), 0.0).sum(axis=0)
            cnt[g] += ok.sum(axis=0)
            ho = state.on_hist[lo : lo + chunk][sel].astype(np.float32).reshape(-1, N_ON_BLOCKS, len(ON_EDGES_H))
            n = ho[..., :1]
            ok = n >= min_count
            on[g] += np.where(ok, ho / np.maximum(n, 1e-6), 0.0).sum(axis=0)
            on_cnt[g] += ok.sum(axis=0)
    prior_sil = ((sil + default_weight * default_silence_prior()) / (cnt + default_weight)).astype(np.float32)
    prior_on = ((on + default_weight * default_on_prior()) / (on_cnt + default_weight)).astype(np.float32)
    return prior_sil, prior_on


def population_out_prior(state: FleetState, *, min_count: float = 3.0, default_weight: float = 3.0) -> np.ndarray:
    """The fleet's average survival of outings per kind of departure [2, E_OUT], over the homes with
    ``min_count`` of them, shrunk toward the generic default (one busy home must not set it alone)."""
    hist = state.out_hist.astype(np.float32)
    n = hist[..., :1]
    ok = n >= min_count
    surv = np.where(ok, hist / np.maximum(n, 1e-6), 0.0).sum(axis=0)
    cnt = ok.sum(axis=0)
    return ((surv + default_weight * default_out_prior()) / (cnt + default_weight)).astype(np.float32)


def population_rate_prior(state: FleetState, *, min_days: float = 5.0, default_weight: float = 3.0) -> np.ndarray:
    """The fleet's silences of at least each edge per active day, per kind of home [2, E_S], over
    the homes with ``min_days`` of history, shrunk toward the generic default."""
    out = np.zeros(state.prior_rate.shape, np.float64)
    days = state.days_active.astype(np.float32)
    for g in (0, 1):
        sel = (state.has_motion == bool(g)) & (days >= min_days)
        cnt = int(sel.sum())
        total = np.zeros(len(SILENCE_EDGES_H), np.float64)
        for lo in range(0, state.n, 65536):
            part = sel[lo : lo + 65536]
            if part.any():
                own = state.sil_hist[lo : lo + 65536][part].astype(np.float32).sum(axis=(1, 2))
                total += (own / days[lo : lo + 65536][part][:, None]).sum(axis=0)
        out[g] = (total + default_weight * default_silence_rate()) / (cnt + default_weight)
    out[:, 0] = 0.0  # unused
    return out.astype(np.float32)


def refresh_prior(state: FleetState) -> None:
    state.prior_sil, state.prior_on = population_prior(state)
    state.prior_out = population_out_prior(state)
    state.prior_rate = population_rate_prior(state)




# ---------------------------------------------------------------------------------------------
# Watch quality
# ---------------------------------------------------------------------------------------------

#: What would let the detector see more, in the order to suggest (a device class a home lacks).
WATCH_SUGGESTIONS = ((DEV_MOTION, "motion_sensor_living_room"), (DEV_DOOR, "door_sensor_front_door"),
                     (DEV_PLUG, "smart_plug_kettle_or_tv"))


@dataclass
class WatchQuality:
    """Per household: how fast its own data lets the detector notice trouble now."""

    notice_median_h: np.ndarray  # float32[H] alarm threshold of a silence, median over the 24 local start hours
    notice_worst_h: np.ndarray  # float32[H] ... the longest of them
    history_days: np.ndarray  # float32[H] decayed active days learned
    missing: list[list[str]]  # per household, the WATCH_SUGGESTIONS it lacks


def watch_quality(state: FleetState, rows: np.ndarray | None = None, *, day: float | None = None,
                  p: DetectorParams = DEFAULT_PARAMS) -> WatchQuality:
    """How fast the detector would notice a silence in each home, from its thresholds for silences
    beginning at each local hour of ``day`` (epoch s of any instant of it; default: the state's
    latest activity), in the light context the home is in now. Pure: nothing in the state changes."""
    rows = np.arange(state.n) if rows is None else np.asarray(rows, np.int64)
    ref = np.nan_to_num(state.last_activity[rows], nan=state.epoch) if day is None else np.full(len(rows), float(day))
    local_midnight = np.floor((ref + state.tz_offset_s[rows]) / 86400.0) * 86400.0 - state.tz_offset_s[rows]
    alarms = np.zeros((len(rows), 24), np.float32)
    for hour in range(24):
        _, alarm, _ = silence_thresholds(state, rows, local_midnight + hour * 3600.0 + 1800.0, p)
        alarms[:, hour] = alarm
    kinds = state.dev_kind[rows]
    missing = [[name for code, name in WATCH_SUGGESTIONS if not (k == code).any()] for k in kinds]
    return WatchQuality(np.median(alarms, axis=1).astype(np.float32), alarms.max(axis=1),
                        state.days_active[rows].astype(np.float32), missing)
