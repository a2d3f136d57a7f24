"""Thresholds from survival curves: when a silence, an outing or a lit light becomes alarming for a home.

Pure numpy, no I/O, no clock (see ``detector.model``).
"""

from __future__ import annotations

import math

import numpy as np

from mimamori.detector.model_params import DEFAULT_PARAMS, N_ON_BLOCKS, ON_BLOCK_H, ON_EDGES_H, SILENCE_EDGES_H, DetectorParams
from mimamori.detector.model_state import FleetState, local_slot

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
    return np.asarray(np.where(has, q_inside, q_tail), dtype=np.float32)


def lit_context(state: FleetState, rows: np.ndarray) -> np.ndarray:
    """Light context of the current silence of ``rows``: 1 if any switch is on, 0 if all are off."""
    return np.asarray((~np.isnan(state.sw_on_since[rows])).any(axis=1), dtype=np.int64)


def dark_silence_kind(state: FleetState, rows: np.ndarray, hour: np.ndarray, p: DetectorParams) -> tuple[np.ndarray, np.ndarray]:
    """(known, long) for all-off silences of ``rows`` beginning at local ``hour``: ``known`` when the
    home has seen enough of them (``night_min_exposure``), ``long`` when at least ``night_share`` of
    them lasted ``night_long_h`` — its bedtime, or in a bulbs-only home also the morning switch-off
    after which nothing happens until dusk. Short ones are a waking hour's (an outing, a chore).
    """
    dark = state.sil_hist[rows, 0, hour].astype(np.float32)  # rows and hour broadcast ([n] or [n, m])
    k = int(np.searchsorted(SILENCE_EDGES_H, p.night_long_h))
    known = dark[..., 0] >= p.night_min_exposure
    return known, known & (dark[..., k] >= p.night_share * dark[..., 0])


def silence_thresholds(state: FleetState, rows: np.ndarray, start: np.ndarray,
                       p: DetectorParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantile_h, alarm_after_h, history) for silences of households ``rows`` that began at ``start``
    (in the light context the households are in now: nothing can switch during a silence).
    """
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
    ``DetectorParams.budget_cap``); ``silence_cap_h`` when even the last edge is too common.
    """
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
    for minutes (a fall in the night-time bathroom) keeps the fast path. Returns the rows raised.
    """
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
    nb = (state.on_hist[rows, sw, (block - 1) % N_ON_BLOCKS].astype(np.float32)
          + state.on_hist[rows, sw, (block + 1) % N_ON_BLOCKS].astype(np.float32))
    pooled = own + 0.25 * nb
    prior = state.prior_on[state.has_motion[rows].astype(np.int64), block]
    q = _quantile(pooled, prior, ON_EDGES_H, p.prior_strength, p.on_beta, p.tail_tau_h)
    return np.clip(q + p.on_margin_h + p.on_margin_frac * q, p.on_min_alarm_h, p.on_cap_h).astype(np.float32)


