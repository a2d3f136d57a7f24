"""The model's state (``FleetState``): per-household parallel arrays, and local time slots.

Pure numpy, no I/O, no clock (see ``detector.model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mimamori.detector.model_params import (
    DEFAULT_PARAMS,
    DEV_BULB,
    DEV_MOTION,
    DEV_NONE,
    DEV_PLUG,
    MAX_DEVICES,
    MAX_SWITCHES,
    N_BINS,
    N_ON_BLOCKS,
    ON_EDGES_H,
    OUT_EDGES_H,
    SILENCE_EDGES_H,
    DetectorParams,
    default_on_prior,
    default_out_prior,
    default_silence_prior,
    default_silence_rate,
)

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
    reported any activity yet is silent since then (so only the hard cap applies, never at once).
    """
    kinds = np.full((device_kinds.shape[0], MAX_DEVICES), DEV_NONE, dtype=np.int8)
    kinds[:, : device_kinds.shape[1]] = device_kinds[:, :MAX_DEVICES]
    h = kinds.shape[0]
    switchable = (kinds == DEV_BULB) | (kinds == DEV_PLUG)
    rank = np.cumsum(switchable, axis=1) - 1
    dev_switch = np.where(switchable & (rank < MAX_SWITCHES), rank, -1).astype(np.int8)
    nan32 = np.float32(np.nan)
    return FleetState(
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


def local_slot(t: np.ndarray, tz_offset_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(daytype 0 weekday / 1 weekend, local hour) of epoch seconds ``t``."""
    local = np.asarray(t, np.float64) + tz_offset_s
    days = np.floor(local / 86400.0).astype(np.int64)
    hour = ((local - days * 86400.0) // 3600).astype(np.int64)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (3, Monday = 0)
    return (weekday >= 5).astype(np.int64), np.clip(hour, 0, 23)


