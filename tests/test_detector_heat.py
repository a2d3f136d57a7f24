"""Heat watch, pure core: indoor WBGT, a sustained danger, and whom to ask (issue 16)."""

from __future__ import annotations

import pytest

from mimamori.detector.heat import Reading, decide, indoor_wbgt, level, sustained_danger

pytestmark = pytest.mark.unit

T0 = 1_780_000_000.0
MIN = 60.0


def test_the_ministrys_estimate_without_sun_and_with_a_light_draught() -> None:
    # Ono et al. (2014) as the Ministry of the Environment publishes it, SR = 0 and WS = 0.2 m/s.
    ta, rh = 30.0, 60.0
    by_hand = 0.735 * ta + 0.0374 * rh + 0.00292 * ta * rh - 0.0572 * 0.2 - 4.064
    assert indoor_wbgt(ta, rh) == pytest.approx(by_hand) == pytest.approx(25.47, abs=0.01)


def test_hotter_or_more_humid_is_never_safer() -> None:
    for ta in range(20, 40):
        for rh in range(20, 100, 10):
            assert indoor_wbgt(ta + 1, rh) > indoor_wbgt(ta, rh)
            assert indoor_wbgt(ta, rh + 10) > indoor_wbgt(ta, rh)


@pytest.mark.parametrize(("wbgt", "word"), [(20.9, None), (21.0, "注意"), (27.9, "警戒"), (28.0, "厳重警戒"), (31.5, "危険")])
def test_the_guidelines_words(wbgt: float, word: str | None) -> None:
    assert level(wbgt) == word


def hot_afternoon(minutes: int, temperature: float = 34.0, humidity: float = 65.0, every: int = 5) -> list[Reading]:
    return [Reading(T0 + m * MIN, temperature, humidity) for m in range(0, minutes + 1, every)]


def test_danger_is_named_only_once_it_has_lasted() -> None:
    readings = hot_afternoon(40)  # about 29.5 WBGT
    assert sustained_danger(readings, T0 + 25 * MIN) is None
    danger = sustained_danger(readings, T0 + 35 * MIN)
    assert danger is not None and danger.since == T0 and danger.level == "厳重警戒"


def test_a_cooler_reading_ends_the_spell() -> None:
    readings = hot_afternoon(40)
    readings.insert(4, Reading(T0 + 21 * MIN, 26.0, 50.0))  # the air conditioner went on for a while
    danger = sustained_danger(readings, T0 + 40 * MIN)
    assert danger is None  # the spell began again at 25 minutes: 15 minutes ago


def test_a_silent_sensor_says_nothing_about_now() -> None:
    assert sustained_danger(hot_afternoon(40), T0 + 40 * MIN + 3 * 3600) is None


def test_the_resident_is_asked_first_then_the_team() -> None:
    danger = sustained_danger(hot_afternoon(40), T0 + 40 * MIN)
    now = T0 + 40 * MIN
    active = now - 10 * MIN
    assert decide(danger, now=now, last_activity_at=active, away=False, asked_at=None).action == "ask_resident"
    assert decide(danger, now=now, last_activity_at=active, away=False, asked_at=now - 5 * MIN).action == "none"
    assert decide(danger, now=now, last_activity_at=active, away=False, asked_at=now - 16 * MIN).action == "alert_team"
    assert decide(danger, now=now, last_activity_at=active, away=False, asked_at=now - 16 * MIN,
                  answered=True).action == "none"


def test_an_empty_or_sleeping_home_is_not_disturbed() -> None:
    danger = sustained_danger(hot_afternoon(40), T0 + 40 * MIN)
    now = T0 + 40 * MIN
    assert decide(danger, now=now, last_activity_at=now, away=True, asked_at=None).reason == "the resident is away"
    assert decide(danger, now=now, last_activity_at=now - 3 * 3600, away=False, asked_at=None).action == "none"
