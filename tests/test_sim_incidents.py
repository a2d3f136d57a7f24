"""firmware_sim incidents: each kind does what its ground truth says."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from mimamori.firmware_sim.devices import ACTIVITY_CODES, K_BOOT, K_HEARTBEAT, K_OFF, K_ON, KIND_CODES
from mimamori.firmware_sim.incidents import IncidentPlan, IncidentSpec
from mimamori.firmware_sim.offline import HouseholdStream, simulate_offline

pytestmark = pytest.mark.unit

TZ = ZoneInfo("Asia/Tokyo")
START = datetime(2026, 1, 5, tzinfo=TZ).timestamp()  # Monday 00:00 local
DAY, H = 86400.0, 3600.0
SEED = 1  # household 0: kitchen, living, bathroom bulbs + motion sensors, door, plug


def _one(kind: str, at: float, household: int = 0, households: int = 1, days: float = 8, **kw) -> HouseholdStream:
    plan = IncidentPlan.at(IncidentSpec(kind, household, at, **kw))
    return simulate_offline(households, days, SEED, start=START, incidents=plan)[household]


def _dev(hh: HouseholdStream, room: str, kind: str = "bulb") -> int:
    return next(i for i, d in enumerate(hh.info.devices) if d.room == room and d.kind == kind)


def _bulb_state_at(hh: HouseholdStream, dev: int, t: float) -> bool:
    sel = (hh.device == dev) & np.isin(hh.kind, [K_ON, K_OFF]) & (hh.time <= t)
    kinds = hh.kind[sel]
    return bool(len(kinds)) and kinds[-1] == K_ON


def test_collapse_stops_activity_and_lights_stay_as_they_were() -> None:
    t = START + 2 * DAY + 19.5 * H  # an evening: the living-room light is on
    hh = _one("collapse", t)
    normal = simulate_offline(1, 8, SEED, start=START)[0]
    living = _dev(hh, "living")
    assert _bulb_state_at(hh, living, t)
    after = hh.time > t
    assert not np.isin(hh.kind[after], ACTIVITY_CODES).any()
    assert np.isin(normal.kind[normal.time > t], ACTIVITY_CODES).sum() > 100  # would have been busy
    assert (hh.kind[after] == K_HEARTBEAT).sum() > 100  # devices keep reporting
    assert _bulb_state_at(hh, living, START + 8 * DAY)  # still on at the end
    (inc,) = hh.incidents
    assert (inc.kind, inc.start, inc.end, inc.welfare, inc.technical) == ("collapse", pytest.approx(t), None, True, False)
    # Before the collapse, the stream is the ordinary one.
    before = hh.time < t - 60
    assert np.array_equal(hh.time[before & (hh.kind != K_HEARTBEAT)], normal.time[(normal.time < t - 60) & (normal.kind != K_HEARTBEAT)])


def test_bathroom_collapse_leaves_the_bathroom_light_on() -> None:
    t = START + 3 * DAY + 10.25 * H  # mid-morning, daylight elsewhere
    hh = _one("bathroom_collapse", t)
    bath = _dev(hh, "bathroom")
    on = (hh.device == bath) & (hh.kind == K_ON)
    assert np.any(on & (hh.time >= t) & (hh.time < t + 10))
    assert _bulb_state_at(hh, bath, START + 8 * DAY)
    assert not np.isin(hh.kind[hh.time > t + 60], ACTIVITY_CODES).any()
    (inc,) = hh.incidents
    assert inc.welfare and inc.details["room"] == "bathroom" and inc.devices == (hh.info.devices[bath].device_id,)


def test_bulb_failure_stops_its_heartbeats_not_the_others() -> None:
    t = START + 2 * DAY + 12 * H
    hh = _one("bulb_failure", t, room="living")
    living = _dev(hh, "living")
    assert not np.any((hh.device == living) & (hh.time >= t))
    assert np.any((hh.device == living) & (hh.kind == K_HEARTBEAT) & (hh.time < t))
    others = (hh.device != living) & (hh.kind == K_HEARTBEAT) & (hh.time >= t)
    assert len(set(hh.device[others].tolist())) == len(hh.info.devices) - 1
    assert np.isin(hh.kind[hh.time > t], ACTIVITY_CODES).sum() > 100  # the resident is fine
    (inc,) = hh.incidents
    assert (inc.kind, inc.welfare, inc.technical, inc.devices) == ("bulb_failure", False, True, (hh.info.devices[living].device_id,))


@pytest.mark.parametrize("away_mode", [False, True])
def test_hospital_stay_silences_the_home_for_days(away_mode: bool) -> None:
    t = START + 2 * DAY + 10 * H
    hh = _one("hospital_stay", t, duration_s=3 * DAY, away_mode=away_mode)
    act = np.isin(hh.kind, ACTIVITY_CODES)
    assert not np.any(act & (hh.time > t + 30) & (hh.time < t + 3 * DAY))
    assert np.sum(act & (hh.time > t + 3 * DAY)) > 50  # back home, life goes on
    (inc,) = hh.incidents
    assert inc.end == pytest.approx(t + 3 * DAY)
    assert inc.welfare is (not away_mode) and inc.details["away_mode_set"] is away_mode
    if away_mode:
        assert t < inc.details["away_set_at"] < t + DAY


def test_trip_away_is_planned_and_switches_lights_off() -> None:
    t = START + 3 * DAY + 18.5 * H  # evening departure: lights were on
    hh = _one("trip_away", t, duration_s=2 * DAY)
    bulbs = [i for i, d in enumerate(hh.info.devices) if d.kind == "bulb"]
    assert not any(_bulb_state_at(hh, b, t + 1) for b in bulbs)
    act = np.isin(hh.kind, ACTIVITY_CODES)
    assert not np.any(act & (hh.time > t + 30) & (hh.time < t + 2 * DAY))
    (inc,) = hh.incidents
    assert not inc.welfare and inc.details["away_set_at"] < t and inc.details["away_until"] == pytest.approx(t + 2 * DAY)


def test_gateway_power_loss_buffers_events_and_loses_heartbeats() -> None:
    t, dur = START + 2 * DAY + 9 * H, 5 * H
    hh = _one("gateway_power_loss", t, duration_s=dur)
    normal = simulate_offline(1, 8, SEED, start=START)[0]
    act_hh, act_n = np.isin(hh.kind, ACTIVITY_CODES), np.isin(normal.kind, ACTIVITY_CODES)
    # The resident's life and the devices' events are unchanged ...
    assert np.array_equal(hh.time[act_hh], normal.time[act_n]) and np.array_equal(hh.seq[act_hh], normal.seq[act_n])
    inside = (hh.time >= t) & (hh.time < t + dur)
    assert not np.any(inside & (hh.kind == K_HEARTBEAT))
    assert np.any(inside & act_hh)
    # ... but what happened during the outage reaches the gateway only when it is back.
    assert np.all(hh.arrival[inside] > t + dur) and len(set(hh.arrival[inside].tolist())) == 1
    assert np.array_equal(hh.arrival[~inside], hh.time[~inside])
    (inc,) = hh.incidents
    assert inc.technical and not inc.welfare and inc.end == pytest.approx(t + dur)


def test_area_power_cut_hits_every_home_of_the_area() -> None:
    t, dur = START + 2 * DAY + 14 * H, 3 * H
    plan = IncidentPlan.at(IncidentSpec("area_power_cut", 0, t, dur))
    fleet = simulate_offline(4, 4, SEED, start=START, incidents=plan)
    assert [inc.kind for inc in fleet.incidents] == ["area_power_cut"] * 4
    assert len({(inc.start, inc.end) for inc in fleet.incidents}) == 1
    for hh in fleet.households:
        inside = (hh.time >= t) & (hh.time < t + dur)
        for i, dev in enumerate(hh.info.devices):
            mine = hh.device == i
            if dev.mains:  # unpowered: silent, then boots when power returns
                assert not np.any(mine & inside)
                boots = hh.time[mine & (hh.kind == K_BOOT)]
                assert len(boots) == 2 and t + dur < boots[1] < t + dur + 60
        assert np.all(hh.arrival[inside] > t + dur)  # battery sensors' events were buffered
        assert hh.incidents[0].details["area"] == "area-01"


def test_random_plan_is_deterministic_and_after_learning() -> None:
    plan = IncidentPlan.random(seed=9, learning_days=14)
    a = simulate_offline(60, 40, 2, incidents=plan)
    b = simulate_offline(60, 40, 2, incidents=plan)
    assert [i.to_dict() for i in a.incidents] == [i.to_dict() for i in b.incidents]
    assert len({i.kind for i in a.incidents}) >= 4
    for inc in a.incidents:
        assert inc.start >= a.start + 14 * DAY
        hospital_unannounced = inc.kind == "hospital_stay" and not inc.details["away_mode_set"]
        assert inc.welfare == (inc.kind in ("collapse", "bathroom_collapse") or hospital_unannounced)
    per_home = {}
    for inc in a.incidents:
        if inc.kind in ("collapse", "bathroom_collapse", "hospital_stay"):
            per_home[inc.household_id] = per_home.get(inc.household_id, 0) + 1
    assert max(per_home.values()) == 1
    # Household k's incidents do not depend on the fleet size either.
    small = simulate_offline(3, 40, 2, incidents=plan)
    assert [i.to_dict() for i in small.incidents if i.household_id == "hh-0002"] == [
        i.to_dict() for i in a.incidents if i.household_id == "hh-0002"]


def test_random_collapses_happen_at_home_while_awake() -> None:
    plan = IncidentPlan.random(seed=4, learning_days=7, rates={"collapse": 1.0})
    fleet = simulate_offline(20, 20, 3, incidents=plan)
    assert len(fleet.incidents) == 20
    for hh in fleet.households:
        (inc,) = hh.incidents
        assert inc.details["room"] in ("bedroom", "kitchen", "living", "bathroom", "entrance")
        assert not np.isin(hh.kind[hh.time > inc.start], ACTIVITY_CODES).any()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown incident kind 'meteor'"):
        IncidentSpec("meteor", 0, START)
    with pytest.raises(ValueError, match=r"unknown incident kinds \['meteor'\]"):
        IncidentPlan.random(rates={"meteor": 1.0})
    assert "heartbeat" in KIND_CODES
