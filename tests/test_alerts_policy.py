"""The escalation policy: pure, driven with a ManualClock."""

from __future__ import annotations

import json

import pytest

from mimamori.alerts import policy
from mimamori.alerts.policy import AskResident, Blink, Cancel, Context, Log, Notify, State, Team, advance, validate_chain
from mimamori.kernel.clock import ManualClock

pytestmark = pytest.mark.unit

TEAM = Team(members=(("a", 1), ("b", 1), ("c", 2)), coordinators=("coord",), bulbs=(("gw1", "bulb1"),))


def notified(actions):
    return [(a.people, a.step_key) for a in actions if isinstance(a, Notify)]


def test_default_chain_tiers_waits_coordinator_and_repeat() -> None:
    clock = ManualClock()
    chain = list(policy.DEFAULT_CHAIN)
    ctx = Context(TEAM)
    out = advance(chain, State(), ctx, clock.now())
    assert notified(out.actions) == [(("a", "b"), "r0.s0")]
    assert out.next_step_at == clock.now() + 15 * 60
    # woken early: nothing happens, same deadline
    clock.advance(60)
    early = advance(chain, out.state, ctx, clock.now())
    assert early.actions == () and early.next_step_at == out.next_step_at
    clock.set(out.next_step_at)
    out = advance(chain, out.state, ctx, clock.now())
    assert notified(out.actions) == [(("c",), "r0.s2")]
    clock.set(out.next_step_at)
    out = advance(chain, out.state, ctx, clock.now())
    assert notified(out.actions) == [(("coord",), "r0.s4")]
    assert out.next_step_at == clock.now() + 30 * 60
    keys = []
    for _ in range(10):
        clock.set(out.next_step_at)
        out = advance(chain, out.state, ctx, clock.now())
        keys += [k for _, k in notified(out.actions)]
        if out.next_step_at is None:
            break
    # two repeats, each round re-alerts tier 1, tier 2 and the coordinator, then it stops
    assert keys == ["r1.s0", "r1.s2", "r1.s4", "r2.s0", "r2.s2", "r2.s4"]
    assert out.state.done and out.next_step_at is None
    assert out.state.notified == ("a", "b", "c", "coord")


def test_state_round_trips_through_json() -> None:
    s = State(step=3, round=1, rr=2, notified=("a",), wait_until=12.5, check_since=None, done=False)
    assert State.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert State.from_json({}) == State()


def test_notify_next_is_round_robin() -> None:
    clock = ManualClock()
    chain = [{"type": "notify_next", "tiers": [1, 2]}, {"type": "wait", "minutes": 5}, {"type": "repeat", "times": 4}]
    out = advance(chain, State(), Context(TEAM), clock.now())
    people = [notified(out.actions)[0][0][0]]
    while out.next_step_at is not None:
        clock.set(out.next_step_at)
        out = advance(chain, out.state, Context(TEAM), clock.now())
        people += [n[0][0] for n in notified(out.actions)]
    assert people == ["a", "b", "c", "a", "b"]


def test_empty_tier_is_logged_and_skipped() -> None:
    chain = [{"type": "notify", "tiers": [5]}, {"type": "notify", "tiers": [2]}]
    out = advance(chain, State(), Context(TEAM), 0.0)
    assert [type(a).__name__ for a in out.actions] == ["Log", "Notify", "Log"]
    assert out.state.done


def test_resident_check_blinks_and_cancels_on_activity() -> None:
    clock = ManualClock()
    chain = [{"type": "resident_check", "minutes": 5, "blinks": 2}, {"type": "notify", "tiers": [1]}]
    out = advance(chain, State(), Context(TEAM, last_activity_at=clock.now() - 3600), clock.now())
    assert out.actions == (Blink((("gw1", "bulb1"),), "r0.s0", {"times": 2, "reason": "resident_check"}),)
    blink_at = clock.now()
    assert out.next_step_at == blink_at + policy.RESIDENT_CHECK_POLL_S  # polls while it waits
    clock.advance(30)
    out2 = advance(chain, out.state, Context(TEAM, last_activity_at=blink_at - 1), clock.now())
    assert out2.actions == () and out2.next_step_at is not None
    clock.advance(30)
    out3 = advance(chain, out2.state, Context(TEAM, last_activity_at=blink_at + 45), clock.now())
    assert any(isinstance(a, Cancel) and a.outcome == "resident_responded" for a in out3.actions)
    assert out3.state.done and out3.next_step_at is None
    assert not notified(out3.actions)


def test_resident_check_times_out_and_escalates() -> None:
    clock = ManualClock()
    chain = [{"type": "resident_check", "minutes": 2}, {"type": "notify", "tiers": [1]}]
    out = advance(chain, State(), Context(TEAM), clock.now())
    for _ in range(10):
        clock.set(out.next_step_at)
        out = advance(chain, out.state, Context(TEAM, last_activity_at=None), clock.now())
        if notified(out.actions):
            break
    assert notified(out.actions) == [(("a", "b"), "r0.s1")]
    assert clock.now() == pytest.approx(1_767_225_600.0 + 120)


def test_validate_chain() -> None:
    assert validate_chain(list(policy.DEFAULT_CHAIN)) == list(policy.DEFAULT_CHAIN)
    assert validate_chain([{"type": "notify", "tiers": [1], "junk": 1}]) == [{"type": "notify", "tiers": [1]}]
    for bad in (
        [],
        "notify",
        [{"type": "explode"}],
        [{"type": "notify"}],
        [{"type": "notify", "tiers": [0]}],
        [{"type": "wait", "minutes": -1}],
        [{"type": "notify", "tiers": [1]}, {"type": "repeat", "times": 3}],  # no wait: a burst
        [{"type": "wait", "minutes": 1}, {"type": "repeat", "times": 99}],
    ):
        with pytest.raises(policy.ChainError):
            validate_chain(bad)


def test_quiet_hours() -> None:
    from datetime import datetime, time
    from zoneinfo import ZoneInfo

    tokyo = ZoneInfo("Asia/Tokyo")
    at = lambda h, m=0, d=1: datetime(2026, 1, d, h, m, tzinfo=tokyo).timestamp()  # noqa: E731
    q = policy.quiet_hours_end
    assert q(at(23), time(22), time(7), "Asia/Tokyo") == at(7, d=2)
    assert q(at(3), time(22), time(7), "Asia/Tokyo") == at(7)
    assert q(at(12), time(22), time(7), "Asia/Tokyo") is None
    assert q(at(13), time(12), time(14), "Asia/Tokyo") == at(14)
    assert q(at(14), time(12), time(14), "Asia/Tokyo") is None
    assert q(at(3), None, None, "Asia/Tokyo") is None


def test_lazy_tls_context_applies_settings_when_tls_is_used() -> None:
    import ssl

    from mimamori.alerts.channels import _LazyTlsContext, _SslForApprise

    shim = _SslForApprise()
    assert shim.CERT_NONE is ssl.CERT_NONE
    ctx = shim.create_default_context()
    assert isinstance(ctx, _LazyTlsContext) and ctx._real is None  # nothing loaded for plain SMTP
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    assert ctx._real is None
    assert ctx.verify_mode == ssl.CERT_NONE and ctx.check_hostname is False  # reading builds the real one
    assert isinstance(ctx._real, ssl.SSLContext)
    verified = shim.create_default_context()
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname is True


# --- asking the resident first ----------------------------------------------------------------

ASK_CHAIN = [{"type": "resident_check", "minutes": 10}, {"type": "notify", "tiers": [1]}]


def test_resident_check_asks_the_resident_even_without_a_bulb() -> None:
    team = Team(members=TEAM.members, coordinators=TEAM.coordinators, residents=("res",))
    out = advance(ASK_CHAIN, State(), Context(team), 0.0)
    assert out.actions == (AskResident(("res",), "r0.s0", 10.0),)
    assert out.state.check_since == 0.0 and not notified(out.actions)
    # with a bulb as well: both, blink first
    both = advance(ASK_CHAIN, State(), Context(Team(TEAM.members, TEAM.coordinators, TEAM.bulbs, ("res",))), 0.0)
    assert [type(a).__name__ for a in both.actions] == ["Blink", "AskResident"]


def test_resident_check_with_nobody_to_ask_and_no_bulb_goes_straight_to_the_team() -> None:
    team = Team(members=TEAM.members, coordinators=TEAM.coordinators)
    out = advance(ASK_CHAIN, State(), Context(team), 0.0)
    assert [type(a).__name__ for a in out.actions] == ["Log", "Notify", "Log"]
    assert notified(out.actions) == [(("a", "b"), "r0.s1")]
    # "ask": false keeps the old blink-only check: a resident alone is not asked
    blink_only = [{"type": "resident_check", "minutes": 10, "ask": False}, {"type": "notify", "tiers": [1]}]
    out = advance(blink_only, State(), Context(Team(TEAM.members, TEAM.coordinators, residents=("res",))), 0.0)
    assert not any(isinstance(a, AskResident) for a in out.actions) and notified(out.actions)


def test_resident_asking_for_help_ends_the_check_at_once() -> None:
    team = Team(members=TEAM.members, coordinators=TEAM.coordinators, residents=("res",))
    out = advance(ASK_CHAIN, State(), Context(team), 0.0)
    # an answer from before this check (an earlier incident's) does not count
    early = advance(ASK_CHAIN, out.state, Context(team, help_asked_at=-5.0), 60.0)
    assert early.actions == () and early.next_step_at is not None
    helped = advance(ASK_CHAIN, out.state, Context(team, help_asked_at=70.0), 75.0)
    assert [type(a).__name__ for a in helped.actions] == ["Log", "Notify", "Log"]
    assert helped.actions[0] == Log("resident_asked_for_help", {"since": 0.0})
    assert notified(helped.actions) == [(("a", "b"), "r0.s1")]  # at 75 s, not after 10 minutes
    # a switch toggled as well (someone who fell reached it) does not cancel a call for help
    both = advance(ASK_CHAIN, out.state, Context(team, last_activity_at=72.0, help_asked_at=70.0), 75.0)
    assert not any(isinstance(a, Cancel) for a in both.actions) and notified(both.actions)


def test_validate_chain_keeps_the_ask_switch() -> None:
    assert validate_chain([{"type": "resident_check", "minutes": 5, "ask": False}]) == [
        {"type": "resident_check", "minutes": 5.0, "blinks": 3, "ask": False}]
    with pytest.raises(policy.ChainError):
        validate_chain([{"type": "resident_check", "minutes": 5, "ask": "no"}])


def test_a_repeat_goes_back_to_the_team_not_to_the_resident() -> None:
    team = Team(members=TEAM.members, coordinators=TEAM.coordinators, residents=("res",))
    chain = list(policy.RESIDENT_FIRST_CHAIN)
    out = advance(chain, State(), Context(team), 0.0)
    asked = [a for a in out.actions if isinstance(a, AskResident)]
    assert asked == [AskResident(("res",), "r0.s0", 10.0)]
    while out.state.round == 0 and out.next_step_at is not None:
        out = advance(chain, out.state, Context(team), out.next_step_at)
    # round 1 begins: tier 1 again at once, no second question to the resident
    assert out.state.round == 1 and not any(isinstance(a, AskResident) for a in out.actions)
    assert notified(out.actions)[-1] == (("a", "b"), "r1.s1")
