"""The population prior (the fleet's average curves for new homes and thin slots) and watch quality
(how fast a home's own data lets the detector notice trouble, and which device would help).

Pure numpy, no I/O, no clock (see ``detector.model``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimamori.detector.model_params import (
    DEFAULT_PARAMS,
    DEV_DOOR,
    DEV_MOTION,
    DEV_PLUG,
    N_ON_BLOCKS,
    ON_EDGES_H,
    SILENCE_EDGES_H,
    DetectorParams,
    default_on_prior,
    default_out_prior,
    default_silence_prior,
    default_silence_rate,
)
from mimamori.detector.model_state import FleetState
from mimamori.detector.model_thresholds import silence_thresholds

# ---------------------------------------------------------------------------------------------
# Population prior
# ---------------------------------------------------------------------------------------------


def population_prior(state: FleetState, *, min_count: float = 3.0, default_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The fleet's average survival curves per kind of home (silence [2, 2, 24, E_S], on [2, blocks,
    E_O]), each slot an average over the homes with some history there, shrunk toward the generic default.
    """
    sil = np.zeros(state.prior_sil.shape, np.float64)
    cnt = np.zeros((*state.prior_sil.shape[:-1], 1), np.float64)
    on = np.zeros(state.prior_on.shape, np.float64)
    on_cnt = np.zeros((*state.prior_on.shape[:-1], 1), np.float64)
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
    ``min_count`` of them, shrunk toward the generic default (one busy home must not set it alone).
    """
    hist = state.out_hist.astype(np.float32)
    n = hist[..., :1]
    ok = n >= min_count
    surv = np.where(ok, hist / np.maximum(n, 1e-6), 0.0).sum(axis=0)
    cnt = ok.sum(axis=0)
    return np.asarray((surv + default_weight * default_out_prior()) / (cnt + default_weight), dtype=np.float32)


def population_rate_prior(state: FleetState, *, min_days: float = 5.0, default_weight: float = 3.0) -> np.ndarray:
    """The fleet's silences of at least each edge per active day, per kind of home [2, E_S], over
    the homes with ``min_days`` of history, shrunk toward the generic default.
    """
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
    latest activity), in the light context the home is in now. Pure: nothing in the state changes.
    """
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
