"""``mimamori bench detector``: one scoring pass over a large fleet, and the state it needs.

The fleet's state is filled as after weeks of learning (histograms with counts, silences under
way, some lights on, devices reporting), then ``detector.model.score`` is timed on one core.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mimamori.detector import model as m

DAY = 86400.0


def make_fleet_state(households: int, *, seed: int = 0, now: float = 1_767_225_600.0 + 60 * DAY) -> m.FleetState:
    rng = np.random.default_rng(seed)
    kinds = np.full((households, m.MAX_DEVICES), m.DEV_NONE, np.int8)
    n_bulbs = rng.integers(1, 5, households)
    sensors = rng.random(households) < 0.35
    for j in range(4):
        kinds[:, j] = np.where(j < n_bulbs, m.DEV_BULB, m.DEV_NONE)
    kinds[sensors, 4] = m.DEV_MOTION
    kinds[sensors, 5] = m.DEV_MOTION
    kinds[sensors, 6] = m.DEV_DOOR
    area = (np.arange(households) // 25).astype(np.int32)
    state = m.new_state(kinds, epoch=now - 60 * DAY, area=area)
    # Learned histograms: decreasing exceedance counts per slot, as after weeks of history.
    chunk = 100_000
    for lo in range(0, households, chunk):
        hi = min(households, lo + chunk)
        base = rng.uniform(5, 30, (hi - lo, 2, 24, 1)).astype(np.float32)
        decay = np.cumprod(rng.uniform(0.3, 0.95, (hi - lo, 2, 24, len(m.SILENCE_EDGES_H))).astype(np.float32), axis=-1)
        state.sil_hist[lo:hi] = (base * decay / decay[..., :1]).astype(np.float16)
        on_base = rng.uniform(2, 20, (hi - lo, m.MAX_SWITCHES, m.N_ON_BLOCKS, 1)).astype(np.float32)
        on_decay = np.cumprod(rng.uniform(0.2, 0.9, (hi - lo, m.MAX_SWITCHES, m.N_ON_BLOCKS, len(m.ON_EDGES_H))).astype(np.float32), axis=-1)
        state.on_hist[lo:hi] = (on_base * on_decay / on_decay[..., :1]).astype(np.float16)
    # The daily routine: active days, and some 2-hour bins the household is active in every day.
    days = rng.uniform(15, 40, households).astype(np.float32)
    share = np.where(rng.random((households, m.N_BINS)) < 0.3, 1.0, rng.uniform(0.1, 0.95, (households, m.N_BINS)))
    state.days_active[:] = days.astype(np.float16)
    state.bin_days[:] = (days[:, None] * share).astype(np.float16)
    state.last_activity[:] = now - rng.exponential(2.0, households) * 3600.0
    state.quantile_h[:] = rng.uniform(1, 10, households).astype(np.float32)
    state.alarm_after_h[:] = state.quantile_h * 1.3 + 2.0
    state.slot_history[:] = rng.uniform(0, 30, households).astype(np.float16)
    present = kinds >= 0
    state.dev_heartbeats[:] = present
    state.dev_last_seen[:] = np.where(present, (now - state.epoch) - rng.uniform(0, 1800, present.shape), np.nan).astype(np.float32)
    state.dev_activity[:] = np.where(present, rng.uniform(0, 50, present.shape), 0).astype(np.float16)
    switch = state.dev_switch >= 0
    on = rng.random((households, m.MAX_SWITCHES)) < 0.2
    state.sw_on_since[:] = np.where(on, (now - state.epoch) - rng.exponential(2.0, on.shape) * 3600.0, np.nan).astype(np.float32)
    state.sw_alarm_after_h[:] = rng.uniform(2, 12, on.shape).astype(np.float32)
    del switch
    return state


def run_detector_bench(households: int = 1_000_000, *, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    now = 1_767_225_600.0 + 60 * DAY
    t0 = time.perf_counter()
    state = make_fleet_state(households, seed=seed, now=now)
    build_s = time.perf_counter() - t0
    away = np.full(households, np.nan)
    away[:: 50] = now + DAY
    asked_first = np.zeros(households, bool)  # homes asking their resident first, as the service passes them
    asked_first[:: 3] = True
    passes = []
    for i in range(repeats):
        t1 = time.perf_counter()
        sc = m.score(state, now + i * 600.0, away_until=away, asked_first=asked_first)
        passes.append(time.perf_counter() - t1)
    # One batch of new events (one per household) through the online update.
    rng = np.random.default_rng(seed + 1)
    hh = np.arange(households)
    dev = np.zeros(households, np.int64)
    t = now + rng.uniform(0, 600, households)
    kind = np.full(households, m.EV_ON, np.int64)
    t2 = time.perf_counter()
    m.observe(state, hh, dev, t, kind)
    observe_s = time.perf_counter() - t2
    return {
        "households": households,
        "score_pass_s": round(min(passes), 4),
        "score_pass_s_all": [round(p, 4) for p in passes],
        "state_bytes_per_household": round(state.state_bytes() / households, 1),
        "observe_batch_s": round(observe_s, 4),
        "observe_batch_events": households,
        "alarms_in_pass": {"inactivity": int(sc.inactivity.sum()), "long_on": int(sc.long_on.sum()),
                           "device_offline": int(sc.device_offline.sum())},
        "build_state_s": round(build_s, 2),
    }
