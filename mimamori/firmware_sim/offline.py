"""Fast offline mode: the fleet's event streams as numpy arrays, no MQTT.

``simulate_offline(households, days, seed)`` gives, per household, the events its devices send
(device time, device index, kind code, value, seq, arrival). The MQTT fleet runner
(``fleet.run_fleet``) feeds exactly these streams through real gateways, so both modes agree.

Household k's stream depends only on (seed, k, start, days, options): not on how many households
are simulated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from mimamori.firmware_sim.devices import ACTIVITY_CODES, DEFAULT_HEARTBEAT_S, KIND_CODES, EventArrays, firmware_events
from mimamori.firmware_sim.homes import HouseholdInfo, HouseholdSeeds, make_household
from mimamori.firmware_sim.incidents import Incident, IncidentPlan, apply_incidents
from mimamori.firmware_sim.resident import ASLEEP, DEFAULT_TIMEZONE, ENTER, OUT, Draws, ResidentActions, simulate_resident
from mimamori.kernel.protocol import Event

DAY = 86400.0
#: Default start: Monday 2026-01-05 00:00 Asia/Tokyo (a winter quarter follows).
DEFAULT_START = datetime(2026, 1, 5, tzinfo=ZoneInfo(DEFAULT_TIMEZONE)).timestamp()

__all__ = ["DEFAULT_START", "KIND_CODES", "FleetArrays", "FleetStreams", "HouseholdStream", "bench_offline", "simulate_household", "simulate_offline"]


@dataclass
class HouseholdStream:
    info: HouseholdInfo
    events: EventArrays  # sorted by device time
    incidents: list[Incident]
    nights_away: tuple[tuple[float, float], ...] = ()
    #: Where the resident is, as changes: (times, state) with state PRESENT_AWAKE / PRESENT_ASLEEP / AWAY
    #: from each time on (ground truth for evaluation: could the resident have answered a message?).
    presence: tuple[np.ndarray, np.ndarray] | None = None

    # Convenience views of the arrays the brief names.
    @property
    def time(self) -> np.ndarray:
        return self.events.time

    @property
    def device(self) -> np.ndarray:
        return self.events.device

    @property
    def kind(self) -> np.ndarray:
        return self.events.kind

    @property
    def value(self) -> np.ndarray:
        return self.events.value

    @property
    def seq(self) -> np.ndarray:
        return self.events.seq

    @property
    def arrival(self) -> np.ndarray:
        return self.events.arrival

    @property
    def device_ids(self) -> list[str]:
        return self.info.device_ids

    @property
    def device_kinds(self) -> list[str]:
        return [d.kind for d in self.info.devices]

    @property
    def device_rooms(self) -> list[str]:
        return [d.room for d in self.info.devices]

    def activity_mask(self) -> np.ndarray:
        return np.isin(self.kind, ACTIVITY_CODES)

    def protocol_event(self, i: int) -> Event:
        v = float(self.value[i])
        return Event(self.info.devices[int(self.device[i])].device_id, int(self.seq[i]), round(float(self.time[i]) * 1000.0), KIND_CODES[int(self.kind[i])], None if v != v else v)  # noqa: E501, PLR0124

    def protocol_events(self) -> Iterator[Event]:
        ids = self.device_ids
        for d, s, t, k, v in zip(self.device.tolist(), self.seq.tolist(), self.time.tolist(), self.kind.tolist(), self.value.tolist(), strict=False):
            yield Event(ids[d], s, round(t * 1000.0), KIND_CODES[k], None if v != v else v)  # noqa: PLR0124


@dataclass
class FleetArrays:
    """All households' events concatenated, sorted by device time (stable)."""

    time: np.ndarray
    arrival: np.ndarray
    household: np.ndarray  # int32 index into FleetStreams.households
    device: np.ndarray  # int32 index into that household's devices
    device_global: np.ndarray  # int32 index into device_ids
    kind: np.ndarray
    value: np.ndarray
    seq: np.ndarray
    device_ids: list[str]
    device_household: np.ndarray  # int32 per global device
    device_kinds: list[str]
    device_rooms: list[str]


@dataclass
class FleetStreams:
    households: list[HouseholdStream]
    start: float
    end: float
    seed: int
    kind_codes: tuple[str, ...] = KIND_CODES
    area_incidents: list[Incident] = field(default_factory=list)

    @property
    def incidents(self) -> list[Incident]:
        return [inc for hh in self.households for inc in hh.incidents]

    def __len__(self) -> int:
        return len(self.households)

    def __getitem__(self, k: int) -> HouseholdStream:
        return self.households[k]

    def total_events(self) -> int:
        return sum(len(hh.events) for hh in self.households)

    def counts_by_kind(self) -> dict[str, int]:
        counts = np.zeros(len(KIND_CODES), np.int64)
        for hh in self.households:
            counts += np.bincount(hh.kind, minlength=len(KIND_CODES))
        return {k: int(c) for k, c in zip(KIND_CODES, counts, strict=False)}

    def concatenated(self, *, sort: bool = True) -> FleetArrays:
        offsets = np.cumsum([0] + [len(hh.info.devices) for hh in self.households])
        n = [len(hh.events) for hh in self.households]
        household = np.repeat(np.arange(len(self.households), dtype=np.int32), n)
        device = np.concatenate([hh.device for hh in self.households]) if self.households else np.zeros(0, np.int32)
        arrays = FleetArrays(
            time=np.concatenate([hh.time for hh in self.households]),
            arrival=np.concatenate([hh.arrival for hh in self.households]),
            household=household,
            device=device,
            device_global=(device + offsets[:-1][household]).astype(np.int32),
            kind=np.concatenate([hh.kind for hh in self.households]),
            value=np.concatenate([hh.value for hh in self.households]),
            seq=np.concatenate([hh.seq for hh in self.households]),
            device_ids=[d for hh in self.households for d in hh.device_ids],
            device_household=np.repeat(np.arange(len(self.households), dtype=np.int32), np.diff(offsets)),
            device_kinds=[d for hh in self.households for d in hh.device_kinds],
            device_rooms=[d for hh in self.households for d in hh.device_rooms],
        )
        if sort:
            order = np.argsort(arrays.time, kind="stable")
            for name in ("time", "arrival", "household", "device", "device_global", "kind", "value", "seq"):
                setattr(arrays, name, getattr(arrays, name)[order])
        return arrays


def simulate_household(
    k: int,
    seed: int,
    start: float,
    end: float,
    *,
    bulbs_only: bool = False,
    incidents: IncidentPlan | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
) -> HouseholdStream:
    info = make_household(k, seed, bulbs_only=bulbs_only)
    seeds = HouseholdSeeds.of(seed, k)
    actions = simulate_resident(info.params, Draws(np.random.Generator(np.random.PCG64(seeds.days))), start, end, info.timezone)
    specs = []
    if incidents is not None:
        specs = incidents.for_household(k, start, end) + incidents.for_area(info.area_index, start, end)
    applied = apply_incidents(
        info.household_id,
        info.device_ids,
        [d.kind for d in info.devices],
        [d.room for d in info.devices],
        actions,
        specs,
        start,
        end,
        np.random.Generator(np.random.PCG64(seeds.incidents)),
        snap=incidents.snap if incidents is not None else True,
        area=info.area,
    )
    events = firmware_events(
        info.devices,
        applied.actions,
        start,
        end,
        np.random.Generator(np.random.PCG64(seeds.firmware)),
        heartbeat_s=heartbeat_s,
        dead=applied.dead,
        power_cuts=applied.power_cuts,
        gateway_down=applied.gateway_down,
    )
    return HouseholdStream(info, events, applied.incidents, actions.nights_away, presence_of(applied.actions))


PRESENT_AWAKE, PRESENT_ASLEEP, AWAY = 0, 1, 2


def presence_of(actions: ResidentActions) -> tuple[np.ndarray, np.ndarray]:
    """The resident's presence from their moves: (times, PRESENT_AWAKE / PRESENT_ASLEEP / AWAY)."""
    enters = actions.action == ENTER
    room, level = actions.room[enters], actions.level[enters]
    state = np.where(room == OUT, AWAY, np.where(level == ASLEEP, PRESENT_ASLEEP, PRESENT_AWAKE)).astype(np.int8)
    return actions.time[enters].astype(np.float64), state


def simulate_offline(
    households: int,
    days: float,
    seed: int,
    *,
    start: float | None = None,
    bulbs_only: bool = False,
    incidents: IncidentPlan | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
) -> FleetStreams:
    """Simulate ``households`` homes for ``days`` days; deterministic by ``seed``."""
    if households < 0 or days <= 0:
        raise ValueError("households must be >= 0 and days > 0")
    t0 = DEFAULT_START if start is None else float(start)
    t1 = t0 + days * DAY
    streams = [simulate_household(k, seed, t0, t1, bulbs_only=bulbs_only, incidents=incidents, heartbeat_s=heartbeat_s) for k in range(households)]
    return FleetStreams(streams, t0, t1, seed)


def bench_offline(households: int = 300, days: float = 90.0, seed: int = 1, **kwargs: object) -> dict:
    """Measure the offline mode (one core): wall time, events, events per second."""
    t0 = time.perf_counter()
    fleet = simulate_offline(households, days, seed, **kwargs)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    counts = fleet.counts_by_kind()
    total = sum(counts.values())
    activity = sum(counts[k] for k in ("on", "off", "motion", "open", "close"))
    return {
        "households": households,
        "days": days,
        "seed": seed,
        "wall_s": round(wall, 3),
        "events": total,
        "activity_events": activity,
        "events_by_kind": counts,
        "events_per_s": round(total / wall) if wall > 0 else None,
        "ms_per_household_day": round(1000 * wall / max(1, households * days), 4),
    }


if __name__ == "__main__":  # python -m mimamori.firmware_sim.offline [households] [days] [seed]
    import json
    import sys

    args = [float(a) for a in sys.argv[1:4]]
    h, d, s = (args + [300, 90, 1][len(args):])[:3]
    print(json.dumps(bench_offline(int(h), d, int(s)), indent=2))  # noqa: T201
