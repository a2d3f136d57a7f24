"""The pure detector model on hand-made streams: lights, outings and the night (split from
``test_detector_model.py``, whose stream helpers it shares).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import pytest

from mimamori.detector import model as m
from test_detector_model import MONDAY, TZ, H, busy_day, feed, first_alarm, fleet

pytestmark = pytest.mark.unit


def winter_light_day(rng: np.random.Generator, mid: float) -> list[tuple[float, int, int]]:
    """One day of light 0 in winter: on when getting up in the dark, off after breakfast, on at dusk
    (about 17:00), off at bedtime.
    """
    return [(mid + rng.uniform(6.0, 6.5) * H, 0, m.EV_ON), (mid + rng.uniform(7.3, 8.0) * H, 0, m.EV_OFF),
            (mid + rng.uniform(16.6, 17.4) * H, 0, m.EV_ON), (mid + rng.uniform(21.5, 22.3) * H, 0, m.EV_OFF)]


def lights_only_days(days: int, *, seed: int = 5) -> np.ndarray:
    """A bulbs-only home in winter daylight: ``winter_light_day`` every day, nothing else."""
    rng = np.random.default_rng(seed)
    return np.array(sorted(r for d in range(days) for r in winter_light_day(rng, MONDAY + d * 86400)))


def spring_lights_days(days: int, *, seed: int = 5) -> np.ndarray:
    """A bulbs-only home in spring daylight: no light needed in the morning; on at dusk (about 17:00),
    off at bedtime (about 22:00). From bedtime to dusk the home shows no sign of life every day.
    """
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
    the living-room light switched off at about 18:00 when leaving, on again at about 20:00 when back.
    """
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
    afternoon from about 14:00 to 16:00 through the door.
    """
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, int, int]] = []
    for d in range(days):
        mid = MONDAY + d * 86400
        leave, back = mid + rng.uniform(13.8, 14.2) * H, mid + rng.uniform(15.8, 16.2) * H
        day = [r for r in busy_day(rng, mid, rng.uniform(6.5, 7.5), rng.uniform(21.5, 22.5), (0, 1))
               if not leave - 60 <= r[0] <= back + 60]
        rows += [*day, (leave, 2, m.EV_OPEN), (leave + 20, 2, m.EV_CLOSE), (back, 2, m.EV_OPEN), (back + 20, 2, m.EV_CLOSE),
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
    door = [(leave, 2, m.EV_OPEN), (leave + 20, 2, m.EV_CLOSE), (back, 2, m.EV_OPEN), (back + 20, 2, m.EV_CLOSE)]
    rows = np.concatenate([history, morning, door])
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
        return sum(1 for (_, a), (_, b) in itertools.pairwise(results) if b.long_on[0] and not a.long_on[0])

    assert long_on_alarms(m.DEFAULT_PARAMS) == 0
    assert long_on_alarms(dataclasses.replace(m.DEFAULT_PARAMS, on_stale_h=1e9)) >= 1  # judged without the rule


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
