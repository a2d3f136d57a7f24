"""The pure detector model on hand-made streams."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from detector import model as m
from detector.baselines import HelloLight24h, Kanazawa8hOn24hOff

pytestmark = pytest.mark.unit

H = 3600.0
TZ = 9 * 3600
# 2026-01-05 00:00 local (a Monday) in Asia/Tokyo
MONDAY = 1_767_538_800.0


def busy_day(rng: np.random.Generator, midnight: float, wake_h: float, bed_h: float, devices: tuple[int, ...]) -> list[tuple[float, int, int]]:
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
    arr = np.array(sorted(rows))
    return arr


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


def winter_light_day(rng: np.random.Generator, mid: float) -> list[tuple[float, int, int]]:
    """One day of light 0 in winter: on when getting up in the dark, off after breakfast, on at dusk
    (about 17:00), off at bedtime."""
    return [(mid + rng.uniform(6.0, 6.5) * H, 0, m.EV_ON), (mid + rng.uniform(7.3, 8.0) * H, 0, m.EV_OFF),
            (mid + rng.uniform(16.6, 17.4) * H, 0, m.EV_ON), (mid + rng.uniform(21.5, 22.3) * H, 0, m.EV_OFF)]


def lights_only_days(days: int, *, seed: int = 5) -> np.ndarray:
    """A bulbs-only home in winter daylight: ``winter_light_day`` every day, nothing else."""
    rng = np.random.default_rng(seed)
    return np.array(sorted(r for d in range(days) for r in winter_light_day(rng, MONDAY + d * 86400)))


def spring_lights_days(days: int, *, seed: int = 5) -> np.ndarray:
    """A bulbs-only home in spring daylight: no light needed in the morning; on at dusk (about 17:00),
    off at bedtime (about 22:00). From bedtime to dusk the home shows no sign of life every day."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(days):
        mid = MONDAY + d * 86400
        rows += [(mid + rng.uniform(16.6, 17.4) * H, 0, m.EV_ON), (mid + rng.uniform(21.5, 22.3) * H, 0, m.EV_OFF)]
    return np.array(sorted(rows))


@pytest.mark.slow
def test_no_light_by_the_usual_evening_after_a_night_alarms_by_the_routine() -> None:
    # Bedtime, then nothing: the night's silence normally lasts until the dusk light (19 h), so the
    # quantile waits for the hard cap; the evening bin (16:00-18:00, lit every day) passing in silence
    # (+ margin) alarms hours before it.
    state = fleet([[m.DEV_BULB]])
    history = spring_lights_days(28)
    bed = float(history[-1, 0])  # the last evening's light off at bedtime, then nothing
    results = feed(state, 0, history, bed + 24 * H, since=bed)
    alarm = first_alarm(results)
    evening_end = MONDAY + 28 * 86400 + 18 * H + m.DEFAULT_PARAMS.routine_margin_h * H
    assert alarm is not None and evening_end <= alarm <= evening_end + 600, (alarm - bed) / H
    assert dict(results)[alarm].inactivity_rule[0] == m.RULE_ROUTINE
    # Without the routine rule the night's silence alarms only later.
    off = dataclasses.replace(m.DEFAULT_PARAMS, routine=False)
    later = first_alarm(feed(fleet([[m.DEV_BULB]]), 0, history, bed + 24 * H, since=bed, p=off))
    assert later is None or later > alarm + H
    # An ordinary day of the same home raises nothing.
    rows = spring_lights_days(30)
    results = feed(fleet([[m.DEV_BULB]]), 0, rows, MONDAY + 30 * 86400, since=MONDAY + 28 * 86400)
    assert first_alarm(results) is None and first_alarm(results, what="long_on") is None


@pytest.mark.slow
def test_the_first_bright_morning_without_the_morning_light_is_not_an_alarm() -> None:
    # Four weeks with the light on every dark morning (06:00-08:00), then spring: up in daylight, no
    # light until dusk. The morning habit follows sunrise, so its bin is not part of the routine.
    history = lights_only_days(28)
    bright_day = MONDAY + 28 * 86400
    rows = np.concatenate([history, [(bright_day + 17.0 * H, 0, m.EV_ON)]])
    bed = float(history[-1, 0])
    results = feed(fleet([[m.DEV_BULB]]), 0, rows, bright_day + 17.0 * H, since=bed)
    assert first_alarm(results) is None
    # Judged by the morning bin too, it would have raised an alarm at 09:00.
    with_mornings = dataclasses.replace(m.DEFAULT_PARAMS, routine_from_hour=0.0)
    alarm = first_alarm(feed(fleet([[m.DEV_BULB]]), 0, rows, bright_day + 17.0 * H, since=bed, p=with_mornings))
    assert alarm is not None and alarm <= bright_day + 9 * H + 600


def evening_outings_days(days: int, *, seed: int = 7) -> np.ndarray:
    """``lights_only_days`` with a kitchen light (column 1) switched on and off for a few minutes each
    evening hour while the living-room light (column 0) stays on, and an evening out every third day:
    the living-room light switched off at about 18:00 when leaving, on again at about 20:00 when back."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(days):
        mid = MONDAY + d * 86400
        rows += winter_light_day(rng, mid)
        out = d % 3 == 0
        if out:
            rows += [(mid + rng.uniform(18.0, 18.4) * H, 0, m.EV_OFF), (mid + rng.uniform(20.0, 20.4) * H, 0, m.EV_ON)]
        for hour in (17.5, 18.5, 19.5, 20.5):
            if not (out and 18 <= hour <= 20.5):
                t = mid + (hour + rng.uniform(0, 0.3)) * H
                rows += [(t, 1, m.EV_ON), (t + rng.uniform(3, 8) * 60, 1, m.EV_OFF)]
    return np.array(sorted(rows))


@pytest.mark.slow
def test_the_last_light_switched_off_on_a_lit_evening_is_a_departure_not_a_collapse() -> None:
    # A bulbs-only home that goes out some evenings (light off at 18:00, back by 20:30). Without a
    # door sensor the dark home on an evening it is normally lit is how leaving looks: judged as out
    # for as long as this home's outings last, not as a silence at home; an outing far past its
    # usual is "not back" (issue 14: no fixed 28 h away cap any more).
    history = evening_outings_days(28)
    leave = MONDAY + 28 * 86400 + 18.17 * H
    day = np.array([(leave - 11 * H, 0, m.EV_ON), (leave - 10.3 * H, 0, m.EV_OFF), (leave - 1.1 * H, 0, m.EV_ON), (leave, 0, m.EV_OFF)])
    rows = np.concatenate([history, day])
    usual_back = leave + 2.3 * H
    results = feed(fleet([[m.DEV_BULB, m.DEV_BULB]]), 0, rows, usual_back, since=leave)
    assert first_alarm(results) is None
    # Held back as inferred away ("out"), which the service records as the reason.
    assert all(sc.suppressed[0] == m.SUPPRESS_DOOR for now, sc in results if now > leave + 600)
    # The same evening judged as a silence at home raises an alarm before the next evening.
    off = dataclasses.replace(m.DEFAULT_PARAMS, lights_out=False)
    alarm = first_alarm(feed(fleet([[m.DEV_BULB, m.DEV_BULB]]), 0, rows, leave + 22.8 * H, since=leave, p=off))
    assert alarm is not None and alarm < leave + 22.8 * H
    # Not back far past the home's usual 2-2.5 h: an alarm hours before the old 28 h cap (the later of
    # "not back" and the silence's own threshold: switching the light off is a weaker sign of leaving
    # than the front door).
    results = feed(fleet([[m.DEV_BULB, m.DEV_BULB]]), 0, rows, leave + 30 * H, since=leave)
    late = first_alarm(results)
    assert late is not None and usual_back < late <= leave + 16 * H


@pytest.mark.slow
def test_bedtime_and_the_morning_daylight_switch_off_are_not_departures() -> None:
    history = evening_outings_days(28)
    state = fleet([[m.DEV_BULB, m.DEV_BULB]])
    bed = float(history[-1, 0])  # the last bedtime switch-off, at about 22:00
    results = feed(state, 0, history, bed + 12 * H, since=bed)
    assert all(sc.suppressed[0] == m.SUPPRESS_NONE for _, sc in results)
    # The morning light goes off at about 07:30 because daylight came: not a departure either.
    last_day = history[history[:, 0] >= MONDAY + 27 * 86400]
    morning_off = float(last_day[1, 0])
    assert 7.2 <= ((morning_off + TZ) % 86400) / H <= 8.0 and last_day[1, 2] == m.EV_OFF
    state = fleet([[m.DEV_BULB, m.DEV_BULB]])
    results = feed(state, 0, history[history[:, 0] <= morning_off], morning_off + 6 * H, since=morning_off)
    assert all(sc.suppressed[0] == m.SUPPRESS_NONE for _, sc in results)


def days_with_outings(days: int, *, seed: int = 11) -> np.ndarray:
    """A home with a bulb, a motion sensor and a front door (columns 0, 1, 2): busy days, out every
    afternoon from about 14:00 to 16:00 through the door."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, int, int]] = []
    for d in range(days):
        mid = MONDAY + d * 86400
        leave, back = mid + rng.uniform(13.8, 14.2) * H, mid + rng.uniform(15.8, 16.2) * H
        day = [r for r in busy_day(rng, mid, rng.uniform(6.5, 7.5), rng.uniform(21.5, 22.5), (0, 1)) if not leave - 60 <= r[0] <= back + 60]
        rows += day + [(leave, 2, m.EV_OPEN), (leave + 20, 2, m.EV_CLOSE), (back, 2, m.EV_OPEN), (back + 20, 2, m.EV_CLOSE),
                       (back + 120, 1, m.EV_MOTION)]
    return np.array(sorted(rows))


@pytest.mark.slow
def test_the_front_door_means_out_when_leaving_and_in_when_coming_home() -> None:
    history = days_with_outings(28)
    kinds = [[m.DEV_BULB, m.DEV_MOTION, m.DEV_DOOR]]
    mid = MONDAY + 28 * 86400
    morning = np.array([(mid + 7 * H + k * 600, 1, m.EV_MOTION) for k in range(40)])  # 07:00-13:30
    leave = mid + 14 * H
    # Out through the door: held as "out" while this home's outings (about 2 h) usually last; far
    # past that (a night with family nobody announced, or lost outside), "not back".
    rows = np.concatenate([history, morning, [(leave, 2, m.EV_OPEN), (leave + 20, 2, m.EV_CLOSE)]])
    results = feed(fleet(kinds), 0, rows, leave + 24 * H, since=leave)
    assert all(sc.suppressed[0] == m.SUPPRESS_DOOR for now, sc in results if leave + 600 < now < leave + 2.5 * H)
    not_back = first_alarm(results)
    assert not_back is not None and leave + 2.5 * H < not_back < leave + 8 * H
    assert next(sc.inactivity_rule[0] for now, sc in results if now == not_back) == m.RULE_NOT_BACK
    # Back at 16:30 through the door, and nothing more (a fall just inside): the door after more than
    # two quiet hours is an arrival, so the silence is judged at home and alarms within hours.
    back = mid + 16.5 * H
    rows = np.concatenate([history, morning, [(leave, 2, m.EV_OPEN), (leave + 20, 2, m.EV_CLOSE), (back, 2, m.EV_OPEN), (back + 20, 2, m.EV_CLOSE)]])
    alarm = first_alarm(feed(fleet(kinds), 0, rows, back + 30 * H, since=back))
    assert alarm is not None and alarm <= back + 16 * H, (alarm - back) / H if alarm else None
    # Taken for a departure (the rule off), the same fall waits for "not back".
    no_arrivals = dataclasses.replace(m.DEFAULT_PARAMS, door_arrival_quiet_s=0.0)
    late = first_alarm(feed(fleet(kinds), 0, rows, back + 30 * H, since=back, p=no_arrivals))
    assert late is not None and late >= back + 2.5 * H


def test_a_dark_silence_from_a_waking_hour_gets_the_day_margin_and_bedtime_the_full_one() -> None:
    # The home's all-off silences from about 18:00 are its short evenings out; from about 22:00 its nights.
    state = fleet([[m.DEV_BULB, m.DEV_BULB]])
    rows = evening_outings_days(28)
    m.observe(state, np.zeros(len(rows), np.int64), rows[:, 1].astype(int), rows[:, 0], rows[:, 2].astype(int))
    p = m.DEFAULT_PARAMS
    assert not m.lit_context(state, np.array([0]))[0]  # the day ended with the light off
    evening, bedtime = MONDAY + 28 * 86400 + np.array([18.2, 22.0]) * H
    hours = m.local_slot(np.array([evening, bedtime]), state.tz_offset_s[[0, 0]])[1]
    known, long = m.dark_silence_kind(state, np.array([0, 0]), hours, p)
    assert known.all() and list(long) == [False, True]
    q, alarm, _ = m.silence_thresholds(state, np.array([0, 0]), np.array([evening, bedtime]), p)
    expected = [q[0] + p.day_margin_h + p.day_margin_frac * q[0], q[1] + p.margin_h + p.margin_frac * q[1]]
    np.testing.assert_allclose(alarm, np.clip(expected, p.min_alarm_h, p.silence_cap_h), rtol=1e-3)
    assert p.day_margin_h < p.margin_h


def lit_evenings_town(n: int = 8) -> m.FleetState:
    """A fleet of homes living ``evening_outings_days`` (households 1..n-1 learned, their prior refreshed)."""
    state = fleet([[m.DEV_BULB, m.DEV_BULB]] * n)
    for hh in range(1, n):
        rows = evening_outings_days(29, seed=100 + hh)
        m.observe(state, np.full(len(rows), hh), rows[:, 1].astype(int), rows[:, 0], rows[:, 2].astype(int))
    m.refresh_prior(state)
    return state


@pytest.mark.slow
def test_a_light_forgotten_on_at_bedtime_waits_for_the_morning() -> None:
    # The living-room light (column 0) stays on after the last kitchen visit at about 20:30: the
    # resident went to bed and forgot it (the usual bedtime switch-off at about 22:00 never comes).
    # A light left on like this is judged as the night it probably is: no alarm while the home
    # usually sleeps; a morning with no sign of life still alarms.
    history = evening_outings_days(28)
    mid = MONDAY + 28 * 86400
    evening = np.array([(mid + 6.2 * H, 0, m.EV_ON), (mid + 7.5 * H, 0, m.EV_OFF), (mid + 17.0 * H, 0, m.EV_ON),
                        *[(mid + h * H, 1, ev) for h0 in (17.5, 18.5, 19.5, 20.5) for h, ev in ((h0, m.EV_ON), (h0 + 0.08, m.EV_OFF))]])
    last = float(evening[-1, 0])
    morning = mid + 86400 + 6.5 * H  # up at the usual time: the light switched off
    slept = np.concatenate([history, evening, [(morning, 0, m.EV_OFF)]])
    results = feed(lit_evenings_town(), 0, slept, morning + 600, since=last)
    assert first_alarm(results) is None and first_alarm(results, what="long_on") is None
    # Judged as an evening at home with the light on, the same night raised an alarm before morning.
    strict = dataclasses.replace(m.DEFAULT_PARAMS, lit_bedtime_as_night=False)
    results = feed(lit_evenings_town(), 0, slept, morning + 600, since=last, p=strict)
    early = [a for a in (first_alarm(results), first_alarm(results, what="long_on")) if a is not None]
    assert early and min(early) < morning
    # No morning at all (a collapse at 20:35 with the light on): the alarm comes by late morning.
    collapsed = np.concatenate([history, evening])
    results = feed(lit_evenings_town(), 0, collapsed, last + 20 * H, since=last)
    alarms = [a for a in (first_alarm(results), first_alarm(results, what="long_on")) if a is not None]
    assert alarms and min(alarms) <= last + 15 * H, [(a - last) / H for a in alarms]


@pytest.mark.slow
def test_the_evening_light_switched_on_and_forgotten_overnight_waits_for_the_morning() -> None:
    # One bulb, usually on from dusk to bedtime (hours). Tonight it goes on at dusk and nothing else
    # happens until it is switched off at 08:00: the resident sat under it and went to bed leaving it
    # on. A light that normally stays on for hours being on says nothing; the night is judged as a night.
    state = fleet([[m.DEV_BULB]] * 8)
    for hh in range(1, 8):
        rows = spring_lights_days(29, seed=200 + hh)
        m.observe(state, np.full(len(rows), hh), rows[:, 1].astype(int), rows[:, 0], rows[:, 2].astype(int))
    m.refresh_prior(state)
    history = spring_lights_days(28)
    dusk = MONDAY + 28 * 86400 + 17.0 * H
    morning = dusk + 15 * H  # 08:00
    rows = np.concatenate([history, [(dusk, 0, m.EV_ON), (morning, 0, m.EV_OFF)]])
    results = feed(copy.deepcopy(state), 0, rows, morning - 600, since=dusk)
    assert first_alarm(results) is None and first_alarm(results, what="long_on") is None
    # Treated like a light switched on for minutes (the bathroom's), the night raised an alarm.
    strict = dataclasses.replace(m.DEFAULT_PARAMS, lit_night_long_light_h=99.0)
    results = feed(copy.deepcopy(state), 0, rows, morning - 600, since=dusk, p=strict)
    assert first_alarm(results) is not None or first_alarm(results, what="long_on") is not None


@pytest.mark.slow
def test_a_lamp_left_on_for_days_is_not_long_on_evidence() -> None:
    # A third light (a lamp in a spare room) switched on at noon on day 20 and never off, while the
    # resident lives the usual days: after a day it says nothing about any silence.
    state = fleet([[m.DEV_BULB] * 3] * 8)
    for hh in range(1, 8):
        rows = evening_outings_days(31, seed=100 + hh)
        m.observe(state, np.full(len(rows), hh), rows[:, 1].astype(int), rows[:, 0], rows[:, 2].astype(int))
    m.refresh_prior(state)
    rows = np.concatenate([evening_outings_days(31), [(MONDAY + 20 * 86400 + 12 * H, 2, m.EV_ON)]])
    rows = rows[np.argsort(rows[:, 0], kind="stable")]

    def long_on_alarms(p: m.DetectorParams) -> int:
        results = feed(copy.deepcopy(state), 0, rows, MONDAY + 31 * 86400, since=MONDAY + 21 * 86400, p=p)
        return sum(1 for (_, a), (_, b) in zip(results, results[1:]) if b.long_on[0] and not a.long_on[0])

    assert long_on_alarms(m.DEFAULT_PARAMS) == 0
    assert long_on_alarms(dataclasses.replace(m.DEFAULT_PARAMS, on_stale_h=1e9)) >= 1  # judged without the rule


@pytest.mark.slow
def test_a_home_whose_resident_is_asked_first_alarms_sooner() -> None:
    """Not getting up on a Sunday: the resident who is asked first (the alert engine's resident
    check) hears of it sooner; their team, only if they do not answer."""
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
    q, alarm, _ = m.silence_thresholds(state, np.array([0]), np.array([MONDAY + 40 * 86400 + 23 * H]), m.DEFAULT_PARAMS)
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


@pytest.mark.slow
def test_a_door_at_bedtime_is_the_night_not_a_departure() -> None:
    # The home's last event of the evening is the door (the lock for the night, a bedroom door):
    # judged as the night it is, not an outing that is "not back" two hours later.
    history = days_with_outings(28)
    kinds = [[m.DEV_BULB, m.DEV_MOTION, m.DEV_DOOR]]
    last_evening = float(history[-1, 0])
    bed_door = last_evening + 600
    rows = np.concatenate([history, [(bed_door, 2, m.EV_OPEN), (bed_door + 10, 2, m.EV_CLOSE)]])
    results = feed(fleet(kinds), 0, rows, bed_door + 7 * H, since=bed_door)
    assert first_alarm(results) is None
    assert all(sc.suppressed[0] != m.SUPPRESS_DOOR for _, sc in results)
    # With the rule off the same door is a departure, "not back" within hours.
    off = dataclasses.replace(m.DEFAULT_PARAMS, door_not_at_bedtime=False)
    results = feed(fleet(kinds), 0, rows, bed_door + 7 * H, since=bed_door, p=off)
    late = first_alarm(results)
    assert late is not None and dict(results)[late].inactivity_rule[0] == m.RULE_NOT_BACK
