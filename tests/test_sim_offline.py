"""firmware_sim offline mode: determinism, independence, believable days, firmware rules."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from mimamori.firmware_sim.devices import ACTIVITY_CODES, K_HEARTBEAT, K_MOTION, K_ON, KIND_CODES, MOTION_HOLDOFF_S
from mimamori.firmware_sim.homes import HouseholdSeeds, household_seed, make_household
from mimamori.firmware_sim.offline import FleetStreams, bench_offline, simulate_offline
from mimamori.firmware_sim.resident import ACTIVE, ASLEEP, BEDROOM, ENTER, Draws, simulate_resident
from mimamori.kernel import protocol

pytestmark = pytest.mark.unit

TZ = ZoneInfo("Asia/Tokyo")
WINTER = datetime(2026, 1, 5, tzinfo=TZ).timestamp()  # a Monday
SUMMER = datetime(2026, 7, 6, tzinfo=TZ).timestamp()  # a Monday


def _local_hours(t: np.ndarray) -> np.ndarray:
    return ((t + 9 * 3600) % 86400) / 3600  # Asia/Tokyo has no DST


def _same(a: FleetStreams, b: FleetStreams, k: int) -> bool:
    x, y = a[k].events, b[k].events
    fields = ("time", "device", "kind", "value", "seq", "arrival")
    return all(np.array_equal(getattr(x, f), getattr(y, f), equal_nan=(f == "value")) for f in fields)


def test_same_seed_same_streams_other_seed_differs() -> None:
    a = simulate_offline(4, 3, seed=11)
    b = simulate_offline(4, 3, seed=11)
    c = simulate_offline(4, 3, seed=12)
    assert all(_same(a, b, k) for k in range(4))
    assert a[0].device_ids == b[0].device_ids
    assert not all(len(a[k].events) == len(c[k].events) and _same(a, c, k) for k in range(4))


def test_household_k_does_not_depend_on_fleet_size() -> None:
    small = simulate_offline(2, 2, seed=5)
    large = simulate_offline(7, 2, seed=5)
    assert _same(small, large, 1)
    assert small[1].info == large[1].info
    # The per-household seed is SeedSequence(seed).spawn(n)[k], whatever n is.
    spawned = np.random.SeedSequence(5).spawn(9)[3]
    assert spawned.generate_state(4).tolist() == household_seed(5, 3).generate_state(4).tolist()


def test_arrays_have_the_documented_types_and_order() -> None:
    fleet = simulate_offline(3, 2, seed=2)
    for hh in fleet.households:
        assert hh.time.dtype == np.float64 and hh.kind.dtype == np.int8 and hh.value.dtype == np.float32
        assert np.all(np.diff(hh.time) >= 0)
        assert hh.device.max() < len(hh.info.devices)
        assert fleet.start <= hh.time.min() and hh.time.max() < fleet.end
    assert KIND_CODES[K_ON] == "on" and set(KIND_CODES) == set(protocol.EVENT_KINDS)
    flat = fleet.concatenated()
    assert len(flat.time) == fleet.total_events() and np.all(np.diff(flat.time) >= 0)
    k = 2
    mine = flat.household == k
    assert np.array_equal(np.sort(flat.time[mine]), fleet[k].time)
    assert all(flat.device_ids[g].startswith(fleet[k].info.household_id) for g in flat.device_global[mine][:50])
    assert [fleet[k].info.gateway_id, fleet[k].info.household_id] == ["gw-0003", "hh-0003"]


def test_events_are_valid_protocol_messages() -> None:
    hh = simulate_offline(3, 1, seed=2)[2]
    events = list(hh.protocol_events())
    assert len(events) == len(hh.events)
    for event in events[:: max(1, len(events) // 200)]:
        assert protocol.decode_event(protocol.encode_event(event), event.device_id) == event


def test_seq_is_per_device_monotonic_and_heartbeats_carry_the_latest() -> None:
    for hh in simulate_offline(4, 3, seed=3).households:
        for dev in range(len(hh.info.devices)):
            mine = hh.device == dev
            seq, kind = hh.seq[mine], hh.kind[mine]
            ev = kind != K_HEARTBEAT
            assert seq[ev].tolist() == list(range(1, int(ev.sum()) + 1))  # boot is 1, then +1 each
            assert KIND_CODES[kind[0]] == "boot"
            latest = np.maximum.accumulate(np.where(ev, seq, 0))
            assert np.array_equal(seq[~ev], latest[~ev])
            hb_t = hh.time[mine][~ev]
            assert len(hb_t) >= 2 * 24 - 2 and np.all(np.abs(np.diff(hb_t) - 1800) < 5)  # every 30 min


def test_motion_sensors_respect_their_hold_off() -> None:
    fleet = simulate_offline(12, 3, seed=1)
    checked = 0
    for hh in fleet.households:
        for dev in range(len(hh.info.devices)):
            t = hh.time[(hh.device == dev) & (hh.kind == K_MOTION)]
            if len(t) > 1:
                assert np.diff(t).min() >= MOTION_HOLDOFF_S
                checked += 1
    assert checked >= 3


def test_bulbs_only_keeps_the_same_bulbs() -> None:
    full = simulate_offline(12, 1, seed=1)
    bulbs = simulate_offline(12, 1, seed=1, bulbs_only=True)
    assert any(hh.info.has_sensors for hh in full.households)
    for a, b in zip(full.households, bulbs.households, strict=True):
        assert {d.kind for d in b.info.devices} == {"bulb"}
        assert [d for d in a.info.devices if d.kind == "bulb"] == list(b.info.devices)


def _wake_and_bed(k: int, seed: int, start: float, days: int) -> tuple[list[float], list[float], list[int]]:
    info = make_household(k, seed)
    acts = simulate_resident(info.params, Draws(np.random.default_rng(HouseholdSeeds.of(seed, k).days)), start, start + days * 86400)
    wake, bed, weekday = [], [], []
    for d in range(days):
        m = start + d * 86400
        sel = (acts.action == ENTER) & (acts.room == BEDROOM)
        up = acts.time[sel & (acts.level == ACTIVE) & (acts.time >= m + 3.5 * 3600) & (acts.time < m + 12 * 3600)]
        down = acts.time[sel & (acts.level == ASLEEP) & (acts.time >= m + 19 * 3600) & (acts.time < m + 27 * 3600)]
        if len(up) and len(down):
            wake.append((up[0] - m) / 3600)
            bed.append((down[0] - m) / 3600)
            weekday.append(d % 7)  # start is a Monday
    return wake, bed, weekday


def test_a_day_looks_believable() -> None:
    means, sunday_shift = [], []
    for k in range(12):
        wake, bed, weekday = _wake_and_bed(k, seed=4, start=WINTER, days=28)
        assert len(wake) >= 24  # a few nights away are allowed
        assert all(4.0 <= w <= 10.5 for w in wake), wake
        assert all(19.5 <= b <= 25.5 for b in bed), bed
        assert np.std(wake) > 5 / 60  # wake time varies day to day
        means.append(np.mean(wake))
        wk = np.array(weekday)
        w = np.array(wake)
        sunday_shift.append(w[wk == 6].mean() - w[wk < 5].mean())
    assert np.std(means) > 0.2  # households have their own chronotype
    assert np.mean(sunday_shift) > 0.25  # later Sunday mornings


def test_night_is_quiet_and_mornings_and_evenings_are_busy() -> None:
    flat = simulate_offline(40, 14, seed=6, start=WINTER).concatenated()
    hours = _local_hours(flat.time[np.isin(flat.kind, ACTIVITY_CODES)])
    per_hour = np.bincount(hours.astype(int), minlength=24)
    night = per_hour[1:4].mean()
    assert per_hour[6:9].mean() > 5 * night
    assert per_hour[17:21].mean() > 5 * night
    assert per_hour[17:21].mean() > per_hour[13:16].mean()  # evening lights and dinner


def test_winter_evenings_need_lights_earlier() -> None:
    def share_16_to_18(start: float) -> float:
        flat = simulate_offline(40, 14, seed=6, start=start).concatenated()
        bulb = np.array([k == "bulb" for k in flat.device_kinds])[flat.device_global]
        h = _local_hours(flat.time[(flat.kind == K_ON) & bulb])
        return float(((h >= 16) & (h < 18)).mean())

    assert share_16_to_18(WINTER) > 3 * share_16_to_18(SUMMER)


def test_bench_offline_reports_figures() -> None:
    out = bench_offline(5, 2, seed=1)
    assert out["households"] == 5 and out["events"] > 0 and out["wall_s"] > 0
    assert out["events"] == sum(out["events_by_kind"].values())


@pytest.mark.parametrize("bad", [(-1, 1.0), (1, 0.0)])
def test_rejects_nonsense_sizes(bad: tuple[int, float]) -> None:
    with pytest.raises(ValueError, match="households must be >= 0 and days > 0"):
        simulate_offline(bad[0], bad[1], seed=1)


def test_life_includes_outings_naps_and_nights_away_and_quieter_sundays() -> None:
    from mimamori.firmware_sim.resident import OUT

    days, homes = 63, 15
    out_by_weekday = np.zeros(7)
    long_naps = nights_away = 0
    for k in range(homes):
        info = make_household(k, 8)
        acts = simulate_resident(info.params, Draws(np.random.default_rng(HouseholdSeeds.of(8, k).days)), WINTER, WINTER + days * 86400)
        enters = np.flatnonzero(acts.action == ENTER)
        t, room, level = acts.time[enters], acts.room[enters], acts.level[enters]
        stay = np.diff(np.append(t, WINTER + days * 86400))
        day = ((t - WINTER) // 86400).astype(int)
        for d in set(day[(room == OUT) & (stay >= 3600)].tolist()):
            out_by_weekday[d % 7] += 1  # WINTER is a Monday
        afternoon = (_local_hours(t) > 11) & (_local_hours(t) < 17)
        long_naps += int(np.sum((room == BEDROOM) & (level == ASLEEP) & (stay >= 1.5 * 3600) & afternoon))
        nights_away += len(acts.nights_away)
    share = out_by_weekday / (homes * days / 7)
    assert 0.25 < share[:5].mean() < 0.8  # out for an hour or more (shopping, clinic, day care) on many days
    assert share[6] < 0.6 * share[:5].mean()  # Sundays at home
    assert long_naps >= 5
    assert nights_away >= 1


def test_presence_says_when_the_resident_is_away_or_asleep() -> None:
    from mimamori.firmware_sim.offline import AWAY, PRESENT_ASLEEP, PRESENT_AWAKE, simulate_household

    start = datetime(2026, 1, 5, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
    homes = [simulate_household(k, 7, start, start + 60 * 86400) for k in range(40)]
    home = next(h for h in homes if h.nights_away)
    times, states = home.presence  # type: ignore[misc]
    assert np.all(np.diff(times) >= 0) and set(np.unique(states)) <= {PRESENT_AWAKE, PRESENT_ASLEEP, AWAY}

    def at(t: float) -> int:
        return int(states[np.searchsorted(times, t, side="right") - 1])

    left, back = home.nights_away[0]
    assert at((left + back) / 2) == AWAY
    # 03:00 on the nights at home: asleep; 15:00 on most days: awake at home or out
    nights = [start + d * 86400 + 3 * 3600 for d in range(1, 60)]
    at_home = [t for t in nights if not any(a <= t <= b for a, b in home.nights_away)]
    assert sum(at(t) == PRESENT_ASLEEP for t in at_home) >= 0.9 * len(at_home)
    assert sum(at(start + d * 86400 + 15 * 3600) != PRESENT_ASLEEP for d in range(60)) >= 50
