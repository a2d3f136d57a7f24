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

The model is split by responsibility, all pure: ``model_params`` (codes, flags, ``DetectorParams``,
default priors), ``model_state`` (``FleetState``), ``model_thresholds`` (survival curves → thresholds),
``model_observe`` (the online update), ``model_score`` (alarms at one instant) and ``model_prior``
(population prior, watch quality). This module is their one public face: callers use ``detector.model``.
"""

from __future__ import annotations

import numpy as np

from mimamori.detector.model_observe import (
    observe,
    observe_gateway,
    outing_thresholds,
)
from mimamori.detector.model_params import (
    _FLAG_REJUDGED,
    ACTIVITY_CODES,
    BIN_H,
    DEFAULT_PARAMS,
    DEV_BULB,
    DEV_DOOR,
    DEV_MOTION,
    DEV_NONE,
    DEV_PLUG,
    DEVICE_KINDS,
    EV_BOOT,
    EV_CLOSE,
    EV_FAULT,
    EV_HEARTBEAT,
    EV_MOTION,
    EV_OFF,
    EV_ON,
    EV_OPEN,
    EVENT_KINDS,
    MAX_DEVICES,
    MAX_SWITCHES,
    N_BINS,
    N_ON_BLOCKS,
    ON_BLOCK_H,
    ON_EDGES_H,
    OUT_DOOR,
    OUT_EDGES_H,
    OUT_LIGHTS,
    RULE_HARD_CAP,
    RULE_MODEL,
    RULE_NONE,
    RULE_NOT_BACK,
    RULE_PRIOR,
    RULE_ROUTINE,
    RULES,
    SILENCE_EDGES_H,
    SUPPRESS_AREA,
    SUPPRESS_AWAY,
    SUPPRESS_DEVICE,
    SUPPRESS_DOOR,
    SUPPRESS_NONE,
    SUPPRESS_REASONS,
    DetectorParams,
    default_on_prior,
    default_out_prior,
    default_silence_prior,
    default_silence_rate,
)
from mimamori.detector.model_prior import (
    WATCH_SUGGESTIONS,
    WatchQuality,
    population_out_prior,
    population_prior,
    population_rate_prior,
    refresh_prior,
    watch_quality,
)
from mimamori.detector.model_score import (
    Scores,
    area_outage_mask,
    routine_alarm_at,
    score,
)
from mimamori.detector.model_state import (
    FleetState,
    local_slot,
    new_state,
)
from mimamori.detector.model_thresholds import (
    budget_cap_h,
    dark_silence_kind,
    lit_context,
    on_thresholds,
    silence_thresholds,
)

__all__ = [
    "ACTIVITY_CODES",
    "BIN_H",
    "DEFAULT_PARAMS",
    "DEVICE_KINDS",
    "DEV_BULB",
    "DEV_DOOR",
    "DEV_MOTION",
    "DEV_NONE",
    "DEV_PLUG",
    "EVENT_KINDS",
    "EV_BOOT",
    "EV_CLOSE",
    "EV_FAULT",
    "EV_HEARTBEAT",
    "EV_MOTION",
    "EV_OFF",
    "EV_ON",
    "EV_OPEN",
    "MAX_DEVICES",
    "MAX_SWITCHES",
    "N_BINS",
    "N_ON_BLOCKS",
    "ON_BLOCK_H",
    "ON_EDGES_H",
    "OUT_DOOR",
    "OUT_EDGES_H",
    "OUT_LIGHTS",
    "RULES",
    "RULE_HARD_CAP",
    "RULE_MODEL",
    "RULE_NONE",
    "RULE_NOT_BACK",
    "RULE_PRIOR",
    "RULE_ROUTINE",
    "SILENCE_EDGES_H",
    "SUPPRESS_AREA",
    "SUPPRESS_AWAY",
    "SUPPRESS_DEVICE",
    "SUPPRESS_DOOR",
    "SUPPRESS_NONE",
    "SUPPRESS_REASONS",
    "WATCH_SUGGESTIONS",
    "DetectorParams",
    "FleetState",
    "Scores",
    "WatchQuality",
    "area_outage_mask",
    "budget_cap_h",
    "dark_silence_kind",
    "default_on_prior",
    "default_out_prior",
    "default_silence_prior",
    "default_silence_rate",
    "lit_context",
    "local_slot",
    "new_state",
    "observe",
    "observe_gateway",
    "on_thresholds",
    "outing_thresholds",
    "population_out_prior",
    "population_prior",
    "population_rate_prior",
    "refresh_prior",
    "rejudged_after_pause",
    "routine_alarm_at",
    "score",
    "silence_thresholds",
    "watch_quality",
]


def rejudged_after_pause(state: FleetState, rows: np.ndarray) -> np.ndarray:
    """Per row: the current silence's threshold was re-fixed from the end of a paused stretch (away,
    blind, area outage), so a later re-judging (after a replay) must keep it.
    """
    return np.asarray((state.flags[rows] & _FLAG_REJUDGED) != 0, dtype=bool)
