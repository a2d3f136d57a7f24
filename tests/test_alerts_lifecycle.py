"""Claims that are never resolved, and area outages, on a real PostgreSQL. The engine's functions are
driven directly (no worker threads) with a ManualClock: hours pass in milliseconds.
"""

from __future__ import annotations

import psycopg
import pytest

from mimamori.alerts import engine, policy, service
from mimamori.alerts.models import Actor, Conflict
from mimamori.kernel.clock import ManualClock, as_datetime
from support.town import actions as all_actions
from support.town import notices, open_incident, seed_town

pytestmark = pytest.mark.integration
MIN = 60.0


def run_engine(conn: psycopg.Connection, clock: ManualClock) -> int:
    """One worker's engine passes until nothing is left to do now."""
    total = 0
    while n := engine.adopt_new(conn, clock, "t") + engine.step_due(conn, clock, "t"):
        total += n
    return total


def actions(conn: psycopg.Connection, incident_id: int) -> list[str]:
    """The timeline without the reports about people with no channel besides the app (none here)."""
    return [a for a in all_actions(conn, incident_id) if a != "unreachable"]


def status(conn: psycopg.Connection, iid: int) -> tuple[str, str | None]:
    row = conn.execute("SELECT status, claimed_by FROM incidents WHERE incident_id = %s", (iid,)).fetchone()
    assert row is not None
    return row[0], row[1]


CHAIN = [{"type": "notify", "tiers": [1]}, {"type": "wait", "minutes": 15}, {"type": "notify", "tiers": [2]},
         {"type": "wait", "minutes": 15}, {"type": "notify", "coordinator": True}]


def test_unresolved_claim_reminds_the_claimer_then_reopens_to_the_team(conn: psycopg.Connection) -> None:
    clock = ManualClock()
    town = seed_town(conn, None)
    t1a, t1b = town.tier1
    t2 = town.tier2[0]
    chain = [*CHAIN, {"type": "claim_timeout", "minutes": 60, "grace_minutes": 20}]
    service.set_chain(conn, Actor(town.coordinator, "coordinator", town.area), town.household_id, chain, clock=clock)
    iid = open_incident(conn, town.household_id, clock.now())
    run_engine(conn, clock)
    assert notices(conn, t1a) == ["alert"] and notices(conn, t2) == []
    service.claim(conn, Actor(t1a, "watcher"), iid, clock=clock)
    # within the claim's time nothing happens: no tier 2, no coordinator, no reminder
    clock.advance(59 * MIN)
    run_engine(conn, clock)
    assert notices(conn, t1a) == ["alert"] and notices(conn, t2) == [] and "alert" not in notices(conn, town.coordinator)
    assert status(conn, iid) == ("claimed", t1a)
    # 60 minutes: the claimer is reminded (in the app; urgent), the claim still stands
    clock.advance(2 * MIN)
    run_engine(conn, clock)
    assert notices(conn, t1a) == ["alert", "claim_reminder"]
    assert notices(conn, t1b) == ["alert", "claimed"] and notices(conn, t2) == []
    assert status(conn, iid) == ("claimed", t1a)
    clock.advance(18 * MIN)
    run_engine(conn, clock)
    assert status(conn, iid) == ("claimed", t1a)
    # 20 minutes after the reminder, still unresolved: reopened to the whole team, escalation resumes
    # where it paused (the first wait is long over: tier 2 is alerted now)
    clock.advance(3 * MIN)
    run_engine(conn, clock)
    assert status(conn, iid) == ("open", None)
    assert notices(conn, t1a) == ["alert", "claim_reminder", "reopened"]
    assert notices(conn, t1b) == ["alert", "claimed", "reopened"]
    assert notices(conn, t2) == ["reopened", "alert"]
    trail = actions(conn, iid)
    assert trail == ["escalation_started", "notified", "claimed", "claim_reminder", "claim_expired", "escalation_resumed",
                     "notified"]
    expired = conn.execute("SELECT data FROM incident_timeline WHERE incident_id = %s AND action = 'claim_expired'",
                           (iid,)).fetchone()
    assert expired is not None and expired[0]["claimed_by"] == t1a and expired[0]["timeout_minutes"] == 60
    # someone else claims the reopened incident; this claim has its own timer; resolving ends it
    service.claim(conn, Actor(t2, "watcher"), iid, clock=clock)
    with pytest.raises(Conflict):
        service.claim(conn, Actor(t1a, "watcher"), iid, clock=clock)
    clock.advance(30 * MIN)
    run_engine(conn, clock)
    assert "alert" not in notices(conn, town.coordinator)  # paused again by the new claim
    service.resolve(conn, Actor(t2, "watcher"), iid, "fine", "元気でした", clock=clock)
    clock.advance(5 * 3600)
    run_engine(conn, clock)
    assert notices(conn, t2)[-1] != "claim_reminder"
    assert actions(conn, iid)[-2:] == ["claimed", "resolved"]


def test_default_claim_timeout_applies_without_the_option(conn: psycopg.Connection) -> None:
    clock = ManualClock()
    town = seed_town(conn, None)
    iid = open_incident(conn, town.household_id, clock.now())
    run_engine(conn, clock)
    service.claim(conn, Actor(town.tier1[0], "watcher"), iid, clock=clock)
    clock.advance(policy.DEFAULT_CLAIM_TIMEOUT_MINUTES * MIN - 1)
    run_engine(conn, clock)
    assert "claim_reminder" not in actions(conn, iid)
    clock.advance(2)
    run_engine(conn, clock)
    assert "claim_reminder" in actions(conn, iid)
    clock.advance(policy.DEFAULT_CLAIM_GRACE_MINUTES * MIN)
    run_engine(conn, clock)
    assert status(conn, iid) == ("open", None)


def test_claim_before_any_worker_adopted_it_still_expires(conn: psycopg.Connection) -> None:
    clock = ManualClock()
    town = seed_town(conn, None)
    iid = open_incident(conn, town.household_id, clock.now())
    service.claim(conn, Actor(town.tier1[0], "watcher"), iid, clock=clock)  # quicker than the worker
    run_engine(conn, clock)
    assert notices(conn, town.tier1[1]) == []  # nobody was alerted: someone is already going
    clock.advance(policy.DEFAULT_CLAIM_TIMEOUT_MINUTES * MIN + 1)
    run_engine(conn, clock)
    clock.advance(policy.DEFAULT_CLAIM_GRACE_MINUTES * MIN + 1)
    run_engine(conn, clock)
    assert status(conn, iid) == ("open", None)
    assert notices(conn, town.tier1[1]) == ["reopened", "alert"]  # the chain starts from its first step


def open_outage(conn: psycopg.Connection, area: str, at: float) -> int:
    """What the detector does when many gateways of an area go offline together."""
    row = conn.execute("""INSERT INTO incidents (household_id, area, kind, opened_at, updated_at, rule, score, evidence)
                          VALUES (NULL, %s, 'area_outage', %s, %s, 'gateways_offline', 5, '{}') RETURNING incident_id""",
                       (area, as_datetime(at), as_datetime(at))).fetchone()
    assert row is not None
    return int(row[0])


def close_outage(conn: psycopg.Connection, outage: int, at: float) -> None:
    conn.execute("""UPDATE incidents SET status = 'resolved', outcome = 'auto_closed', closed_at = %s, updated_at = %s
                    WHERE incident_id = %s""", (as_datetime(at), as_datetime(at), outage))


def test_area_outage_pauses_welfare_escalation_in_flight_and_resumes_after(conn: psycopg.Connection) -> None:
    clock = ManualClock()
    town = seed_town(conn, None)
    elsewhere = seed_town(conn, None)
    iid = open_incident(conn, town.household_id, clock.now())
    other = open_incident(conn, elsewhere.household_id, clock.now())
    run_engine(conn, clock)
    assert notices(conn, town.tier1[0]) == ["alert"]
    clock.advance(5 * MIN)
    outage = open_outage(conn, town.area, clock.now())
    # the trigger makes the escalation due at once: it pauses now, with a timeline entry
    assert conn.execute("SELECT next_step_at <= %s FROM alert_escalations WHERE incident_id = %s",
                        (as_datetime(clock.now()), iid)).fetchone() == (True,)
    run_engine(conn, clock)
    assert actions(conn, iid)[-1] == "escalation_paused"
    esc = conn.execute("SELECT status, state->>'paused_for' FROM alert_escalations WHERE incident_id = %s", (iid,)).fetchone()
    assert esc == ("paused", f"area_outage:{outage}")
    # an hour of outage: tier 2 and the coordinator are not alerted; one pause entry, not one per recheck
    for _ in range(12):
        clock.advance(5 * MIN)
        run_engine(conn, clock)
    assert notices(conn, town.tier2[0]) == [] and "alert" not in notices(conn, town.coordinator)
    assert actions(conn, iid).count("escalation_paused") == 1
    # the other area's incident escalated as usual
    assert notices(conn, elsewhere.tier2[0]) == ["alert"]
    # a welfare incident opening during the outage starts paused
    conn.execute("UPDATE incidents SET kind = 'long_on' WHERE incident_id = %s", (iid,))  # free the (household, kind) slot
    second = open_incident(conn, town.household_id, clock.now())
    run_engine(conn, clock)
    assert actions(conn, second) == ["escalation_started", "escalation_paused"]
    # the outage closes: both resume where they were (the wait is over: tier 2 now), with a timeline entry
    close_outage(conn, outage, clock.now())
    run_engine(conn, clock)
    assert actions(conn, iid)[-2:] == ["escalation_resumed", "notified"]
    assert notices(conn, town.tier2[0]) == ["alert"]
    assert actions(conn, second)[-2:] == ["escalation_resumed", "notified"]
    resumed = conn.execute("""SELECT data->>'reason' FROM incident_timeline WHERE incident_id = %s
                              AND action = 'escalation_resumed'""", (iid,)).fetchone()
    assert resumed == ("area_outage_closed",)
    assert other != iid


def test_claim_timeout_option_is_validated() -> None:
    steps = policy.validate_chain([{"type": "notify", "tiers": [1]}, {"type": "claim_timeout", "minutes": 45, "x": 1}])
    assert steps[1] == {"type": "claim_timeout", "minutes": 45.0, "grace_minutes": policy.DEFAULT_CLAIM_GRACE_MINUTES}
    assert policy.claim_timeout(steps) == (45 * MIN, policy.DEFAULT_CLAIM_GRACE_MINUTES * MIN)
    with pytest.raises(policy.ChainError):
        policy.validate_chain([{"type": "claim_timeout", "minutes": 45}, {"type": "claim_timeout", "minutes": 50}])
    with pytest.raises(policy.ChainError):
        policy.validate_chain([{"type": "claim_timeout", "minutes": 0}])
    assert policy.claim_due(steps, 0.0, None, 44 * MIN) == (None, 45 * MIN)
    assert policy.claim_due(steps, 0.0, None, 45 * MIN)[0] == "remind"
    assert policy.claim_due(steps, 0.0, 45 * MIN, 45 * MIN + policy.DEFAULT_CLAIM_GRACE_MINUTES * MIN)[0] == "reopen"
    # the option does nothing when the chain reaches it
    adv = policy.advance(steps, policy.State(), policy.Context(policy.Team((("p", 1),))), 0.0)
    assert adv.state.done and [type(a).__name__ for a in adv.actions] == ["Notify", "Log"]
