"""The detector's model persists: packing is exact, a restart resumes where the saved state left off,
a changed fleet is fitted in place, and shards split the fleet with one holder each."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from mimamori.bench.detector_bench import make_fleet_state
from mimamori.detector import checkpoint
from mimamori.detector import model as m
from mimamori.detector.service import DetectorService, Shard, ShardLease
from mimamori.firmware_sim.offline import DEFAULT_START, simulate_household
from mimamori.kernel.clock import ManualClock
from test_detector_service import KINDS, store_household

H = 3600.0
DAY = 86400.0


def _same(a: m.FleetState, b: m.FleetState) -> list[str]:
    """Names of the per-household fields that differ (NaN equals NaN)."""
    return [name for name in checkpoint.household_fields(a)
            if not np.array_equal(getattr(a, name), getattr(b, name), equal_nan=getattr(a, name).dtype.kind == "f")]


# -- the pure core ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_packed_rows_unpack_to_the_same_state() -> None:
    state = make_fleet_state(40, seed=3)
    fresh = m.new_state(state.dev_kind, epoch=state.epoch)
    assert _same(state, fresh), "the test needs states that differ"
    checkpoint.unpack_rows(fresh, np.arange(40), checkpoint.pack_rows(state))
    assert _same(state, fresh) == []


@pytest.mark.unit
def test_rows_can_be_carried_to_other_positions() -> None:
    state = make_fleet_state(10, seed=4)
    other = m.new_state(state.dev_kind[::-1].copy(), epoch=state.epoch)
    checkpoint.copy_rows(state, np.array([0, 3]), other, np.array([9, 6]))
    for src, dst in ((0, 9), (3, 6)):
        assert checkpoint.pack_rows(state, [src]).tobytes() == checkpoint.pack_rows(other, [dst]).tobytes()
    assert checkpoint.pack_rows(state, [1]).tobytes() != checkpoint.pack_rows(other, [8]).tobytes()


@pytest.mark.unit
def test_a_changed_field_changes_the_format_and_a_wrong_width_is_refused() -> None:
    state = make_fleet_state(5)
    before = checkpoint.state_format(state)
    state.quantile_h = state.quantile_h.astype(np.float32)  # a model that changed a dtype
    assert checkpoint.state_format(state) != before
    with pytest.raises(ValueError, match="bytes"):
        checkpoint.unpack_rows(state, np.arange(5), checkpoint.pack_rows(make_fleet_state(5)))


@pytest.mark.unit
def test_shards_partition_the_fleet_and_keep_an_area_together() -> None:
    homes = [(f"hh-{i:04d}", f"area-{i % 7}" if i % 5 else None) for i in range(500)]
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    owners = [[s.index for s in shards if s.owns(h, a)] for h, a in homes]
    assert all(len(o) == 1 for o in owners)
    by_area: dict[str, set[int]] = {}
    for (h, a), o in zip(homes, owners, strict=False):  # noqa: B007
        if a:
            by_area.setdefault(a, set()).add(o[0])
    assert all(len(s) == 1 for s in by_area.values())
    assert len({o[0] for o in owners}) == 3
    with pytest.raises(ValueError):
        Shard.parse("3/3")


# -- on the database -------------------------------------------------------------------------------



def _town(url: str, homes: int, days: float, *, seed: int = 5) -> tuple[list, float]:
    start, end = DEFAULT_START, DEFAULT_START + days * DAY
    streams = [simulate_household(k, seed, start, end + DAY) for k in range(homes)]
    for stream in streams:
        store_household(url, stream, end)
    return streams, end


def _add_events(url: str, streams: list, since: float, until: float, received: float) -> None:
    with psycopg.connect(url) as conn, conn.cursor().copy(
            "COPY events (time, household_id, device_id, seq, kind, received_at) FROM STDIN") as copy:
        for stream in streams:
            ids = stream.info.device_ids
            for t, dev, kind, seq in zip(stream.time.tolist(), stream.device.tolist(), stream.kind.tolist(), stream.seq.tolist(), strict=False):
                if since <= t < until and KINDS[kind] != "heartbeat":
                    copy.write_row((datetime.fromtimestamp(t, UTC), stream.info.household_id, ids[dev], seq, KINDS[kind],
                                    datetime.fromtimestamp(received, UTC)))


@pytest.mark.integration
def test_a_restart_resumes_from_the_saved_state_exactly(pg_url: str) -> None:
    streams, end = _town(pg_url, 4, 10)
    clock = ManualClock(end)
    first = DetectorService(pg_url, clock)
    assert first.started_from == "rebuild"
    try:
        for step in range(4):  # the town lives on; the detector takes it tick by tick
            t0 = end + step * H
            _add_events(pg_url, streams, t0, t0 + H, received=t0 + H)
            clock.set(t0 + H)
            first.tick()
        first.save_checkpoint()
        second = DetectorService(pg_url, clock)
        try:
            assert second.started_from == "checkpoint"
            assert _same(first.state, second.state) == []
            assert second.cursor == first.cursor
            # Both take the next hour and still agree.
            _add_events(pg_url, streams, end + 4 * H, end + 5 * H, received=end + 5 * H)
            clock.set(end + 5 * H)
            first.tick()
            second.tick()
            assert _same(first.state, second.state) == []
        finally:
            second.close(save=False)
    finally:
        first.close(save=False)


@pytest.mark.integration
def test_a_paired_device_is_fitted_in_place(pg_url: str) -> None:
    streams, end = _town(pg_url, 3, 8)
    clock = ManualClock(end)
    service = DetectorService(pg_url, clock)
    try:
        service.tick()
        target = streams[1].info
        others = [h for h in service.fleet.households if h != target.household_id]
        before = {h: checkpoint.pack_rows(service.state, [service.fleet.row_of[h]]).tobytes() for h in others}
        with psycopg.connect(pg_url) as conn:
            conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES ('new-plug', %s, %s, 'plug')",
                         (target.gateway_id, target.household_id))
        assert service.sync_fleet() == 1  # only that home is replayed
        r = service.fleet.row_of[target.household_id]
        assert "new-plug" in service.fleet.devices[r]
        assert m.DEV_PLUG in service.state.dev_kind[r].tolist()
        assert not np.isnan(service.state.last_activity[r]), "the home's own history was replayed into its new row"
        for h in others:
            assert checkpoint.pack_rows(service.state, [service.fleet.row_of[h]]).tobytes() == before[h]
        service.tick()
    finally:
        service.close()
    # The next start loads every row as saved (the new layout included): nothing to replay.
    again = DetectorService(pg_url, clock)
    try:
        assert again.started_from == "checkpoint"
        assert "new-plug" in again.fleet.devices[again.fleet.row_of[target.household_id]]
    finally:
        again.close(save=False)


@pytest.mark.integration
def test_a_saved_state_of_another_format_is_rebuilt_and_a_deleted_home_takes_its_state_along(pg_url: str) -> None:
    streams, end = _town(pg_url, 2, 5)
    clock = ManualClock(end)
    DetectorService(pg_url, clock).close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM detector_state").fetchone()[0] == 2
        conn.execute("UPDATE detector_checkpoints SET format = 'older-model'")
    service = DetectorService(pg_url, clock)
    try:
        assert service.started_from == "rebuild"
    finally:
        service.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT format FROM detector_checkpoints").fetchone()[0] == checkpoint.state_format(service.state)
        conn.execute("DELETE FROM households WHERE household_id = %s", (streams[0].info.household_id,))
        assert conn.execute("SELECT count(*) FROM detector_state").fetchone()[0] == 1


@pytest.mark.integration
def test_one_holder_per_shard_and_a_standby_takes_over(pg_url: str) -> None:
    stop = threading.Event()
    first, second = ShardLease(pg_url, Shard(1, 2)), ShardLease(pg_url, Shard(1, 2))
    other_shard = ShardLease(pg_url, Shard(0, 2))
    try:
        assert first.acquire(stop)
        assert other_shard.acquire(stop)
        got: list[bool] = []
        waiter = threading.Thread(target=lambda: got.append(second.acquire(stop, poll_s=0.05)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive(), "the second holder of a shard must wait"
        first.release()  # the holder died: its connection is gone
        waiter.join(5)
        assert got == [True]
    finally:
        stop.set()
        for lease in (first, second, other_shard):
            lease.release()


@pytest.mark.integration
def test_two_shards_split_the_town_without_overlap(pg_url: str) -> None:
    _town(pg_url, 6, 3)
    clock = ManualClock(DEFAULT_START + 3 * DAY)
    services = [DetectorService(pg_url, clock, shard=Shard(i, 2), worker=f"detector-{i}") for i in range(2)]
    try:
        seen = [set(s.fleet.households) for s in services]
        assert not seen[0] & seen[1]
        with psycopg.connect(pg_url) as conn:
            everyone = {r[0] for r in conn.execute("SELECT household_id FROM households")}
        assert seen[0] | seen[1] == everyone
    finally:
        for s in services:
            s.close()


@pytest.mark.integration
@pytest.mark.parametrize("with_history", [True, False])
def test_a_home_that_joins_without_events_is_watched_from_when_it_joined(pg_url: str, with_history: bool) -> None:
    """A household paired to a running detector, with no events yet, is silent since it joined (only the
    24 h cap applies later), never since the start of the model's history, also when the model has
    never taken an event (no cursor yet)."""
    start = DEFAULT_START + 30 * DAY
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('h1', 'x', 'a')")
        conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES ('g1', 'h1', 'a', 'online')")
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES ('d1', 'g1', 'h1', 'bulb')")
        if with_history:
            conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (to_timestamp(%s), 'h1', 'd1', 1, 'on')",
                         (start - 600,))
    clock = ManualClock(start)
    service = DetectorService(pg_url, clock)
    try:
        service.tick()
        with psycopg.connect(pg_url) as conn:
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('h2', 'y', 'a')")
            conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES ('g2', 'h2', 'a', 'online')")
            conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES ('d2', 'g2', 'h2', 'bulb')")
        service.sync_fleet()
        for _ in range(4):
            clock.advance(3600)
            service.tick()
        with psycopg.connect(pg_url) as conn:
            opened = conn.execute("SELECT household_id, kind FROM incidents WHERE household_id = 'h2'").fetchall()
        assert opened == []
        assert service.state.resume_from[service.fleet.row_of["h2"]] >= start
    finally:
        service.close(save=False)
