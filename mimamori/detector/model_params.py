"""Codes, flags and tuning of the watch-over model (``detector.model``): the detector's own event and
device codes, ``DetectorParams`` with the reason for each default, and the default survival priors.

Pure numpy, no I/O, no clock (see ``detector.model``).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    at dusk (10 h and more), so a fleet with no history alarms on little more than the hard cap.
    """
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
    cap and its own homes' past tightens it.
    """
    rate = np.array([0.0, 8, 5, 3.5, 2.5, 1.6, 1.2, 1.0, 0.9, 0.6, 0.25, 0.06, 0.02], np.float32)  # edge 0: unused (finite, to store)
    return rate[: len(SILENCE_EDGES_H)]


def default_out_prior() -> np.ndarray:
    """Generic survival of outings [E_OUT]: most last an hour or two (shopping, a walk, the clinic),
    some a day out; a night away is rare.
    """
    d = OUT_EDGES_H
    return np.where(d > 0, 0.9 * np.exp(-d / 2.5) + 0.02 * np.exp(-d / 12.0), 1.0).astype(np.float32)


def default_on_prior() -> np.ndarray:
    """Generic survival of on-episodes [blocks, E]: longer from the evening blocks."""
    blocks = np.arange(N_ON_BLOCKS) * ON_BLOCK_H
    tau = np.where((blocks >= 16) | (blocks < 4), 4.0, 2.0).astype(np.float32)
    d = np.maximum(ON_EDGES_H[None, :] - 0.5, 0.0)
    return np.where(ON_EDGES_H[None, :] > 0, 0.3 * np.exp(-d / tau[:, None]), 1.0).astype(np.float32)

