"""Scoring: every household's alarms (inactivity, long-on, device offline, area outage) at one instant.

Pure numpy, no I/O, no clock (see ``detector.model``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mimamori.detector.model_params import (
    _FLAG_BLIND,
    _FLAG_DOOR,
    _FLAG_REJUDGED,
    _FLAGS_OUT,
    BIN_H,
    DEFAULT_PARAMS,
    N_BINS,
    RULE_HARD_CAP,
    RULE_MODEL,
    RULE_NONE,
    RULE_NOT_BACK,
    RULE_PRIOR,
    RULE_ROUTINE,
    SUPPRESS_AREA,
    SUPPRESS_AWAY,
    SUPPRESS_DEVICE,
    SUPPRESS_DOOR,
    SUPPRESS_NONE,
    DetectorParams,
)
from mimamori.detector.model_state import FleetState, local_slot
from mimamori.detector.model_thresholds import dark_silence_kind, lit_context, silence_thresholds

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
    silence, plus the margin.
    """
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
    return np.asarray(outage[area], dtype=bool)


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
        over = (on_h >= state.sw_alarm_after_h) & (
            (silence_h >= gate_h)[:, None] | ((on_h >= p.on_cap_h) & (silence_h >= p.on_cap_quiet_q * q)[:, None]))
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


