"""The pure detector model on hand-made streams."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mimamori.detector import model as m
from mimamori.detector.baselines import HelloLight24h, Kanazawa8hOn24hOff

pytestmark = pytest.mark.unit

H = 3600.0
TZ = 9 * 3600
# 2026-01-05 00:00 local (a Monday) in Asia/Tokyo
MONDAY = 1_767_538_800.0


def busy_day(rng: np.random.Generator, midnight: float, wake_h: float, bed_h: float,
             devices: tuple[int, ...]) -> list[tuple[float, int, int]]:
    """(t, device column, EV_*) of an ordinary day: up at wake, active every few minutes, bed at bed_h."""
    rows: list[tuple[float, int, int]] = []
    t = midnight + wake_h * H
    bulb, motion = devices[0], devices[1] if len(devices) > 1 else None
    rows.append((t, bulb, m.EV_ON))
    rows.append((t + 0.5 * H, bulb, m.EV_OFF))
    while t < midnight + bed_h * H:
        if motion is not None:
            rows.append((t, motion, m.EV_MOTION))
            t += rng.uniform(3, 25) * 60
        else:
            t += rng.uniform(0.5, 2.0) * H
            rows.append((t, bulb, m.EV_ON))
            rows.append((t + 300, bulb, m.EV_OFF))
    rows.append((midnight + (bed_h - 3) * H, bulb, m.EV_ON))
    rows.append((midnight + bed_h * H, bulb, m.EV_OFF))
    return rows


def routine(days: int, *, seed: int = 1, devices: tuple[int, ...] = (0, 1), sunday_wake: tuple[float, float] = (8.0, 9.75)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, int, int]] = []
    for day in range(days):
        midnight = MONDAY + day * 86400
        weekday = day % 7
        wake = rng.uniform(*sunday_wake) if weekday >= 5 else rng.uniform(6.5, 7.5)
        rows += busy_day(rng, midnight, wake, rng.uniform(21.5, 22.5), devices)
    return np.array(sorted(rows))


def fleet(kinds: list[list[int]], area: list[int] | None = None) -> m.FleetState:
    dk = np.full((len(kinds), max(len(k) for k in kinds)), m.DEV_NONE, np.int8)
    for i, k in enumerate(kinds):
        dk[i, : len(k)] = k
    return m.new_state(dk, epoch=MONDAY - 86400, tz_offset_s=TZ, area=None if area is None else np.array(area))


def feed(state: m.FleetState, hh: int, rows: np.ndarray, until: float, *, tick: float = 600.0, since: float | None = None,
         away_until: np.ndarray | None = None, asked_first: np.ndarray | None = None,
         p: m.DetectorParams = m.DEFAULT_PARAMS) -> list[tuple[float, m.Scores]]:
    """Feed one household's rows tick by tick up to ``until``; return the scores at each tick after ``since``."""
    out = []
    t = float(rows[0, 0]) if since is None else since
    t = min(t, float(rows[0, 0])) if len(rows) else t
    i = 0
    now = float(rows[0, 0]) if len(rows) else until
    while now <= until:
        j = int(np.searchsorted(rows[:, 0], now, side="right")) if len(rows) else 0
        if j > i:
            b = rows[i:j]
            m.observe(state, np.full(len(b), hh), b[:, 1].astype(int), b[:, 0], b[:, 2].astype(int), p)
            i = j
        sc = m.score(state, now, away_until=away_until, asked_first=asked_first, p=p)
        if since is None or now >= since:
            out.append((now, sc))
        now += tick
    return out


def first_alarm(results: list[tuple[float, m.Scores]], hh: int = 0, what: str = "inactivity") -> float | None:
    for now, sc in results:
        if getattr(sc, what)[hh]:
            return now
    return None


def learn_busy_neighbours(state: m.FleetState, n: int, days: int) -> None:
    """Households 1..n-1 of the fleet live busy routines too; the population prior comes from them."""
    for hh in range(1, n):
        rows = routine(days, seed=100 + hh)
        m.observe(state, np.full(len(rows), hh), rows[:, 1].astype(int), rows[:, 0], rows[:, 2].astype(int))
    m.refresh_prior(state)


@pytest.mark.slow
def test_fall_at_ten_on_a_busy_morning_alerts_within_hours() -> None:
    state = fleet([[m.DEV_BULB, m.DEV_MOTION]] * 8)
    learn_busy_neighbours(state, 8, 35)
    history = routine(35)
    test_day = MONDAY + 35 * 86400  # the Monday after five weeks
    day = busy_day(np.random.default_rng(9), test_day, 7.0, 22.0, (0, 1))
    fall = test_day + 10 * H
    day = np.array([r for r in day if r[0] < fall])
    rows = np.concatenate([history, day])
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    results = feed(state, 0, rows, fall + 12 * H, since=test_day)
    alarm = first_alarm(results)
    assert alarm is not None and fall < alarm <= fall + 5 * H, (alarm - fall) / H if alarm else None
    # Evidence: the model (not the hard cap) fired, with a real score.
    sc = dict(results)[alarm]
    assert sc.inactivity_rule[0] == m.RULE_MODEL
    assert sc.inactivity_score[0] >= -np.log10(m.DEFAULT_PARAMS.alpha)
    assert sc.expected_by[0] < alarm


@pytest.mark.slow
def test_normal_late_sunday_morning_does_not_alert() -> None:
    state = fleet([[m.DEV_BULB, m.DEV_MOTION]] * 8)
    learn_busy_neighbours(state, 8, 42)
    history = routine(42)  # six weeks; Sunday wake between 08:00 and 09:45
    sunday = MONDAY + 48 * 86400
    assert (int((sunday + TZ) // 86400) + 3) % 7 == 6
    late = busy_day(np.random.default_rng(3), sunday, 9.7, 22.0, (0, 1))
    # Saturday as usual, then the late Sunday.
    saturday = busy_day(np.random.default_rng(4), sunday - 86400, 8.5, 22.0, (0, 1))
    rows = np.concatenate([history, routine(47, seed=1)[len(routine(42, seed=1)):], np.array(saturday), np.array(late)])
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    results = feed(state, 0, rows, sunday + 12 * H, since=sunday - 86400)
    assert first_alarm(results) is None
    # ... while the same household not getting up at all that Sunday raises it that afternoon.
    state2 = fleet([[m.DEV_BULB, m.DEV_MOTION]] * 8)
    learn_busy_neighbours(state2, 8, 42)
    rows2 = np.concatenate([history, routine(47, seed=1)[len(routine(42, seed=1)):], np.array(saturday)])
    rows2 = rows2[np.argsort(rows2[:, 0], kind="stable")]
    alarm = first_alarm(feed(state2, 0, rows2, sunday + 20 * H, since=sunday - 86400))
    assert alarm is not None and alarm <= sunday + 17 * H


def test_new_home_is_covered_from_day_one_by_the_prior_and_the_hard_cap() -> None:
    state = fleet([[m.DEV_BULB]])
    rows = np.array([[MONDAY + 8 * H, 0, m.EV_ON], [MONDAY + 8.2 * H, 0, m.EV_OFF]])
    alarm = first_alarm(feed(state, 0, rows, MONDAY + 40 * H))
    assert alarm is not None and alarm <= MONDAY + 8.2 * H + 24 * H


def test_long_on_is_judged_per_device() -> None:
    # Bulb 0: evening light ~3 h; bulb 1: a night light on all night, every night.
    rng = np.random.default_rng(5)
    rows = []
    for day in range(28):
        mid = MONDAY + day * 86400
        rows += [(mid + rng.uniform(18, 18.5) * H, 0, m.EV_ON), (mid + rng.uniform(21, 21.5) * H, 0, m.EV_OFF)]
        rows += [(mid + 21.5 * H, 1, m.EV_ON), (mid + (24 + rng.uniform(6, 6.5)) * H, 1, m.EV_OFF)]
        rows += [(mid + rng.uniform(7, 8) * H, 2, m.EV_MOTION), (mid + rng.uniform(12, 13) * H, 2, m.EV_MOTION)]
    last = MONDAY + 28 * 86400
    rows += [(last + 18.2 * H, 0, m.EV_ON), (last + 21.5 * H, 1, m.EV_ON)]  # and nobody switches them off
    arr = np.array(sorted(rows))
    state = fleet([[m.DEV_BULB, m.DEV_BULB, m.DEV_MOTION]])
    results = feed(state, 0, arr, last + 40 * H, since=last)
    alarm = first_alarm(results, what="long_on")
    # Long-on speaks once the household is also quieter than usual (after the usual night).
    assert alarm is not None and last + 30.5 * H < alarm <= last + 36 * H, (alarm - last) / H
    assert dict(results)[alarm].long_on_switch[0] == 0  # the evening light, not the night light


@pytest.mark.slow
def test_dead_bulb_is_a_device_problem_not_a_welfare_alert() -> None:
    # Bulbs only; the bulb also sends heartbeats every 15 minutes until it dies.
    history = routine(28, devices=(0,))
    hb = np.arange(MONDAY, MONDAY + 28 * 86400, 900.0)
    dies = MONDAY + 28 * 86400 + 12 * H
    rows = np.concatenate([history, np.column_stack([hb, np.zeros_like(hb), np.full_like(hb, m.EV_HEARTBEAT)])])
    rows = rows[(rows[:, 0] < dies)]
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    state = fleet([[m.DEV_BULB]])
    results = feed(state, 0, rows, dies + 48 * H, since=dies)
    assert first_alarm(results) is None
    assert first_alarm(results, what="long_on") is None
    offline = first_alarm(results, what="device_offline")
    assert offline is not None and offline <= dies + m.DEFAULT_PARAMS.heartbeat_timeout_s + 900
    assert results[-1][1].suppressed[0] == m.SUPPRESS_DEVICE


def test_area_outage_suppresses_welfare_alerts_there() -> None:
    # Eight households in area 0, four in area 1, all silent for 30 h after one event each.
    n = 12
    state = fleet([[m.DEV_BULB]] * n, area=[0] * 8 + [1] * 4)
    t0 = MONDAY + 8 * H
    m.observe(state, np.arange(n), np.zeros(n, int), np.full(n, t0), np.full(n, m.EV_ON))
    down = np.arange(5)  # five of area 0's gateways lose power together
    m.observe_gateway(state, down, np.full(5, t0 + H), np.zeros(5, bool))
    sc = m.score(state, t0 + 30 * H)
    assert sc.area_outage[:8].all() and not sc.area_outage[8:].any()
    assert not sc.inactivity[:8].any()  # suppressed in the outage area, even the ones still online
    assert (sc.suppressed[:8] == m.SUPPRESS_AREA).all()
    assert (sc.inactivity | sc.long_on)[8:].all()  # the other area is judged as usual (here: the hard caps)
    # The homes whose gateways are down are covered by the area's incident, not one ticket each.
    assert sc.gateway_offline[down].all() and not sc.device_offline.any()


def test_a_gateway_down_alone_is_a_device_problem_after_a_grace() -> None:
    state = fleet([[m.DEV_BULB]] * 8, area=[0] * 8)
    t0 = MONDAY + 8 * H
    m.observe(state, np.arange(8), np.zeros(8, int), np.full(8, t0), np.full(8, m.EV_ON))
    m.observe_gateway(state, np.array([3]), np.array([t0 + H]), np.array([False]))
    grace = m.DEFAULT_PARAMS.gateway_grace_s
    early = m.score(state, t0 + H + grace / 2)
    assert not early.device_offline.any() and early.suppressed[3] == m.SUPPRESS_DEVICE  # welfare pauses at once
    late = m.score(state, t0 + H + grace)
    assert late.device_offline[3] and late.device_offline.sum() == 1 and not late.area_outage.any()


@pytest.mark.slow
def test_away_mode_pauses_welfare_alerts_until_it_ends() -> None:
    state = fleet([[m.DEV_BULB, m.DEV_MOTION]])
    history = routine(28)
    state_rows = history[history[:, 0] < MONDAY + 28 * 86400]
    leave = float(state_rows[-1, 0])
    away_until = np.array([leave + 72 * H])
    results = feed(state, 0, state_rows, leave + 96 * H, since=leave, away_until=away_until)
    alarm = first_alarm(results)
    assert alarm is not None and alarm > leave + 72 * H
    assert all(sc.suppressed[0] == m.SUPPRESS_AWAY for now, sc in results if now < leave + 72 * H and now > leave + 1)


def test_state_fits_two_kilobytes_per_household() -> None:
    state = fleet([[m.DEV_BULB] * 6 + [m.DEV_MOTION] * 5 + [m.DEV_DOOR]] * 10)
    # 2048 bytes until issue 14: + the learned outing lengths (2 x 11 float16 counts and the
    # threshold) and the count of past silences beyond the tight threshold
    assert state.state_bytes() / state.n <= 2048 + 48


def test_baselines_fire_as_specified() -> None:
    kinds = np.array([[m.DEV_BULB]], np.int8)
    start = MONDAY
    hello = HelloLight24h(kinds, start)
    kanazawa = Kanazawa8hOn24hOff(kinds, start)
    on = MONDAY + 10 * H  # Monday 10:00 local: switched on, never again
    for b in (hello, kanazawa):
        b.observe(np.array([0]), np.array([0]), np.array([on]), np.array([m.EV_ON]))
    assert not kanazawa.check(on + 7.9 * H).long_on[0]
    assert kanazawa.check(on + 8 * H).long_on[0]
    assert not kanazawa.check(on + 23.9 * H).inactivity[0]
    assert kanazawa.check(on + 24 * H).inactivity[0]
    # Hello Light: Tuesday 09:00 sees the switch (23 h before); Wednesday 09:00 does not.
    assert not hello.check(MONDAY + 33 * H).inactivity[0]
    assert not hello.check(MONDAY + 56 * H).inactivity[0]
    assert hello.check(MONDAY + 57 * H).inactivity[0]
    hello.observe(np.array([0]), np.array([0]), np.array([MONDAY + 58 * H]), np.array([m.EV_OFF]))
    assert not hello.check(MONDAY + 59 * H).inactivity[0]


@pytest.mark.slow
@pytest.mark.parametrize("batch", [7, 40])
def test_learning_does_not_depend_on_batching(batch: int) -> None:
    rows = routine(21)

    def learn(size: int) -> m.FleetState:
        state = fleet([[m.DEV_BULB, m.DEV_MOTION]])
        for i in range(0, len(rows), size):
            b = rows[i : i + size]
            m.observe(state, np.zeros(len(b), int), b[:, 1].astype(int), b[:, 0], b[:, 2].astype(int))
        return state

    a, ref = learn(batch), learn(1)
    np.testing.assert_allclose(a.sil_hist.astype(np.float32), ref.sil_hist.astype(np.float32), rtol=0.02, atol=0.05)
    assert a.sil_hist[..., 0].sum() > 20


def test_a_home_whose_resident_is_asked_first_alarms_sooner() -> None:
    """Not getting up on a Sunday: the resident who is asked first (the alert engine's resident
    check) hears of it sooner; their team, only if they do not answer.
    """
    history = routine(42)
    sunday = MONDAY + 48 * 86400
    saturday = busy_day(np.random.default_rng(4), sunday - 86400, 8.5, 22.0, (0, 1))
    rows = np.concatenate([history, routine(47, seed=1)[len(routine(42, seed=1)):], np.array(saturday)])
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    alarms = {}
    # (Without the morning routine, the budget cap and the tight threshold of sensor homes, which find
    # this morning as soon for everyone: below.)
    base = dataclasses.replace(m.DEFAULT_PARAMS, routine_from_hour_sensors=12.0, budget_cap=False, tight=False)
    for name, asked, p in (("team first", None, base), ("asked first", np.ones(8, bool), base),
                           ("switched off", np.ones(8, bool), dataclasses.replace(base, asked_first_margin_h=None))):
        state = fleet([[m.DEV_BULB, m.DEV_MOTION]] * 8)
        learn_busy_neighbours(state, 8, 42)
        alarms[name] = first_alarm(feed(state, 0, rows, sunday + 20 * H, since=sunday - 86400, asked_first=asked, p=p))
    assert None not in alarms.values(), alarms
    assert alarms["asked first"] <= alarms["team first"] - H, {k: (v - sunday) / H for k, v in alarms.items()}
    assert alarms["switched off"] == alarms["team first"]
    state = fleet([[m.DEV_BULB, m.DEV_MOTION]] * 8)
    learn_busy_neighbours(state, 8, 42)
    results = feed(state, 0, rows, sunday + 20 * H, since=sunday - 86400)
    morning = first_alarm(results)
    assert morning is not None and morning <= alarms["asked first"]


def test_the_budget_cap_tightens_with_the_home_s_own_evidence() -> None:
    # Three sensor homes: one whose silences never pass 8 h (nights), one that is silent 14 h now and
    # then (every fourth day), one with no history yet (the population prior decides: the default's
    # broad curve, so the hard cap).
    state = fleet([[m.DEV_MOTION]] * 3)

    def days(first: int, last: int) -> np.ndarray:
        rows: list[tuple[float, int, int, int]] = []
        for d in range(first, last):
            mid = MONDAY + d * 86400
            wake = 7.0 if d % 4 else 13.0  # hh 1: up at 13:00 every fourth day after a 23:00 bedtime
            for hh, up in ((0, 7.0), (1, wake)):
                rows += [(mid + (up + k * 0.5) * H, hh, 0, m.EV_MOTION) for k in range(int((23.0 - up) * 2) + 1)]
        return np.array(sorted(rows))

    arr = days(0, 10)
    m.observe(state, arr[:, 1].astype(int), arr[:, 2].astype(int), arr[:, 0], arr[:, 3].astype(int))
    early = m.budget_cap_h(state, np.array([0, 1, 2]))
    arr = days(10, 40)
    m.observe(state, arr[:, 1].astype(int), arr[:, 2].astype(int), arr[:, 0], arr[:, 3].astype(int))
    cap = m.budget_cap_h(state, np.array([0, 1, 2]))
    assert cap[1] >= 14.0, cap  # its own 14 h silences are more common than the budget
    assert cap[2] == m.DEFAULT_PARAMS.silence_cap_h, cap  # the generic prior: broad
    assert cap[0] < cap[1] - 1.0, cap
    assert cap[0] < early[0] - 0.5, (early, cap)  # more evidence of short silences: tighter
    # The silence's own threshold never goes past the cap.
    _, alarm, _ = m.silence_thresholds(state, np.array([0]), np.array([MONDAY + 40 * 86400 + 23 * H]), m.DEFAULT_PARAMS)
    assert alarm[0] <= cap[0] + 1e-3


def test_watch_quality_says_how_fast_a_home_is_noticed_and_what_it_lacks() -> None:
    state = fleet([[m.DEV_BULB, m.DEV_MOTION], [m.DEV_BULB]])
    rows = routine(28)
    m.observe(state, np.zeros(len(rows), np.int64), rows[:, 1].astype(int), rows[:, 0], rows[:, 2].astype(int))
    before = state.sil_hist.copy()
    wq = m.watch_quality(state)
    assert np.array_equal(before, state.sil_hist)  # pure
    assert wq.notice_median_h[0] < wq.notice_median_h[1] <= m.DEFAULT_PARAMS.silence_cap_h  # learned vs nothing yet
    assert wq.notice_worst_h[0] >= wq.notice_median_h[0] and wq.history_days[0] > 10 and wq.history_days[1] == 0
    assert wq.missing[0] == ["door_sensor_front_door", "smart_plug_kettle_or_tv"]
    assert wq.missing[1][0] == "motion_sensor_living_room"


