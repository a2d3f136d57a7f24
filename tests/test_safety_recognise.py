"""The double-toggle recogniser (pure): two opposite switches of one bulb within the window after
the check started are "safe"; one switch, motion, doors, or switches spread out are only a sign of
life; before the start counts for nothing.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimamori.safety import recognise
from mimamori.safety.recognise import Ev
from mimamori.safety.recognise import recognise as judge
from mimamori.safety.throttle import Throttle

pytestmark = pytest.mark.unit

T0 = 1_767_225_600.0
BULBS = {"bulb-1", "bulb-2"}


def test_on_off_on_and_off_on_off_are_safe() -> None:
    for kinds in (("on", "off", "on"), ("off", "on", "off"), ("off", "on")):
        evs = [Ev(T0 + 1 + i * 1.5, "bulb-1", k, i) for i, k in enumerate(kinds)]
        v = judge(evs, since=T0, switchable=BULBS)
        assert v.state == "safe" and v.device_id == "bulb-1"
        assert v.at == T0 + 1 + 1.5  # recognised at the second switch


def test_one_toggle_motion_and_doors_are_only_a_sign_of_life() -> None:
    assert judge([Ev(T0 + 5, "bulb-1", "on")], since=T0, switchable=BULBS).state == "sign_of_life"
    evs = [Ev(T0 + 1, "pir-1", "motion"), Ev(T0 + 2, "door-1", "open"), Ev(T0 + 3, "door-1", "close"),
           Ev(T0 + 4, "pir-1", "motion")]
    assert judge(evs, since=T0, switchable=BULBS).state == "sign_of_life"


def test_toggles_spread_out_or_on_two_bulbs_or_before_the_start_are_not_safe() -> None:
    spread = [Ev(T0 + 10, "bulb-1", "on", 1), Ev(T0 + 25, "bulb-1", "off", 2), Ev(T0 + 40, "bulb-1", "on", 3)]
    assert judge(spread, since=T0, switchable=BULBS).state == "sign_of_life"
    two_bulbs = [Ev(T0 + 1, "bulb-1", "on", 1), Ev(T0 + 2, "bulb-2", "off", 1)]
    assert judge(two_bulbs, since=T0, switchable=BULBS).state == "sign_of_life"
    before = [Ev(T0 - 3, "bulb-1", "off", 1), Ev(T0 - 1, "bulb-1", "on", 2)]
    assert judge(before, since=T0, switchable=BULBS).state == "no_answer"
    straddling = [Ev(T0 - 1, "bulb-1", "off", 1), Ev(T0 + 1, "bulb-1", "on", 2)]
    assert judge(straddling, since=T0, switchable=BULBS).state == "sign_of_life"
    same_kind = [Ev(T0 + 1, "bulb-1", "on", 1), Ev(T0 + 2, "bulb-1", "on", 2)]
    assert judge(same_kind, since=T0, switchable=BULBS).state == "sign_of_life"
    not_switchable = [Ev(T0 + 1, "door-1", "on", 1), Ev(T0 + 2, "door-1", "off", 2)]
    assert judge(not_switchable, since=T0, switchable=BULBS).state == "sign_of_life"


def test_nothing_after_the_start_is_no_answer() -> None:
    assert judge([], since=T0).state == "no_answer"


kinds = st.sampled_from(["on", "off", "motion", "open", "close"])
events = st.lists(st.builds(Ev, st.floats(-60, 600), st.sampled_from(["bulb-1", "bulb-2", "pir-1"]), kinds,
                            st.integers(0, 10_000)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(events)
def test_safe_exactly_when_some_bulb_has_two_opposite_switches_within_the_window(evs: list[Ev]) -> None:
    evs = [Ev(T0 + e.time, e.device_id, e.kind, e.seq) for e in evs]
    v = judge(evs, since=T0, switchable=BULBS)
    expected = False
    for d in BULBS:
        sw = sorted((e for e in evs if e.device_id == d and e.kind in ("on", "off") and e.time >= T0),
                    key=lambda e: (e.time, e.seq))
        if any(a.kind != b.kind and b.time - a.time <= 10.0 for a, b in pairwise(sw)):
            expected = True
    assert (v.state == "safe") == expected
    if not any(e.time >= T0 for e in evs):
        assert v.state == "no_answer"
    elif v.state != "safe":
        assert v.state == "sign_of_life"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 60), max_size=20), st.floats(0.5, 10))
def test_single_switches_never_make_safe_whatever_their_timing(gaps: list[float], spacing: float) -> None:
    # one bulb switched on only (repeated "on" is not a change), plus motion everywhere
    evs = [Ev(T0 + g, "bulb-1", "on", i) for i, g in enumerate(gaps)] + [Ev(T0 + g, "pir-1", "motion") for g in gaps]
    assert judge(evs, since=T0, switchable=BULBS).state in ("no_answer", "sign_of_life")


def test_recognised_answers_only_go_up_and_never_over_a_persons_answer() -> None:
    assert recognise.upgrades("no_answer", None, "sign_of_life")
    assert recognise.upgrades("sign_of_life", "activity", "safe")
    assert not recognise.upgrades("safe", "double_toggle", "sign_of_life")
    assert not recognise.upgrades("needs_help", "link", "safe")
    assert not recognise.upgrades("no_answer", "on_behalf", "safe")


def test_unreachable_only_when_every_gateway_is_offline_and_nobody_answered() -> None:
    assert recognise.effective_state("no_answer", 1, 1) == "unreachable"
    assert recognise.effective_state("no_answer", 2, 1) == "no_answer"
    assert recognise.effective_state("no_answer", 0, 0) == "no_answer"
    assert recognise.effective_state("safe", 1, 1) == "safe"


def test_risk_order() -> None:
    rows = [("safe", True, None, "a"), ("no_answer", False, None, "b"), ("no_answer", True, T0 + 5, "c"),
            ("no_answer", True, None, "d"), ("needs_help", False, T0, "e"), ("unreachable", True, None, "f")]
    ordered = [r[3] for r in sorted(rows, key=lambda r: recognise.risk_key(*r))]
    assert ordered == ["e", "d", "c", "b", "f", "a"]


def test_throttle_keeps_each_channel_kind_under_its_rate() -> None:
    th = Throttle({"email": 2.0, "default": 1.0})
    sent = {"email": 0, "line": 0}
    t = 0.0
    while t < 10.0:
        for key in sent:
            if th.try_take(key, t):
                sent[key] += 1
        t += 0.01
    assert 19 <= sent["email"] <= 22  # 2/s over 10 s (+ a burst of 2)
    assert 10 <= sent["line"] <= 11
