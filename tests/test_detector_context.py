"""The light context of a silence (any switch on / all off) and one alarm kind per episode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mimamori.detector import model as m

pytestmark = pytest.mark.unit

H = 3600.0
TZ = 9 * 3600
MONDAY = 1_767_538_800.0  # 2026-01-05 00:00 local (Asia/Tokyo)


def bulbs_home(days: int, *, seed: int = 3) -> np.ndarray:
    """(t, device, EV_*) of a two-bulb home: at night the bathroom light is on for minutes; all day
    (lights off) and all night (asleep) long silences."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, int, int]] = []
    for day in range(days):
        mid = MONDAY + day * 86400
        wake = mid + rng.uniform(6.5, 7.0) * H
        rows += [(wake, 0, m.EV_ON), (wake + 0.4 * H, 0, m.EV_OFF)]
        dusk = mid + rng.uniform(16.5, 17.0) * H
        rows += [(dusk, 0, m.EV_ON), (mid + rng.uniform(21.5, 22.0) * H, 0, m.EV_OFF)]
        for _ in range(2):  # night bathroom visits: the bathroom light on for a few minutes
            t = mid + 86400 + rng.uniform(1.0, 5.0) * H
            rows += [(t, 1, m.EV_ON), (t + rng.uniform(3, 8) * 60, 1, m.EV_OFF)]
    return np.array(sorted(rows))


def learned(days: int = 28, homes: int = 20) -> tuple[m.FleetState, float]:
    """Home 0 and ``homes - 1`` others like it (so the fleet prior is learned too)."""
    state = m.new_state(np.full((homes, 2), m.DEV_BULB, np.int8), epoch=MONDAY - 86400, tz_offset_s=TZ)
    parts = [np.c_[np.full(len(r), h), r] for h in range(homes) for r in [bulbs_home(days, seed=3 + h)]]
    end = MONDAY + days * 86400
    rows = np.concatenate(parts)
    rows = rows[rows[:, 1] < end]  # the last night's visits would come after the test's own events
    rows = rows[np.argsort(rows[:, 1], kind="stable")]
    for lo in range(0, len(rows), 50):
        b = rows[lo : lo + 50]
        m.observe(state, b[:, 0].astype(int), b[:, 2].astype(int), b[:, 1], b[:, 3].astype(int))
    m.refresh_prior(state)
    return state, end


def test_lit_silences_are_learned_apart_from_dark_ones() -> None:
    state, _ = learned()
    hist = state.sil_hist[0].astype(np.float32)
    # Night hours: silences in the dark (asleep) are long, silences with the bathroom light on short.
    night = slice(1, 5)
    dark_long = hist[0, night, list(m.SILENCE_EDGES_H).index(2.0)].sum()
    lit_long = hist[1, night, list(m.SILENCE_EDGES_H).index(2.0)].sum()
    assert dark_long > 5
    assert lit_long < 0.5


def test_a_light_left_on_at_night_alarms_sooner_than_the_dark() -> None:
    state, end = learned(days=56, homes=40)
    t0 = end + 2 * H  # 02:00 local: a night visit
    # Without lending from the dark context (the shipped 0.2 covers lights forgotten on overnight).
    p = dataclasses.replace(m.DEFAULT_PARAMS, other_context_weight=0.0)
    m.observe(state, np.array([0]), np.array([1]), np.array([t0]), np.array([m.EV_ON]), p)
    lit_alarm = float(state.alarm_after_h[0])
    m.observe(state, np.array([0]), np.array([1]), np.array([t0 + 300]), np.array([m.EV_OFF]), p)
    dark_alarm = float(state.alarm_after_h[0])
    assert lit_alarm + 2 < dark_alarm
    # ... and the light left on raises exactly one alarm kind for the whole episode.
    kinds = set()
    state2, _ = learned(days=56, homes=40)
    m.observe(state2, np.array([0]), np.array([1]), np.array([t0]), np.array([m.EV_ON]), p)
    for k in range(1, 30):
        sc = m.score(state2, t0 + k * 0.5 * H, p=p)
        if sc.inactivity[0]:
            kinds.add("inactivity")
        if sc.long_on[0]:
            kinds.add("long_on")
    assert len(kinds) == 1
