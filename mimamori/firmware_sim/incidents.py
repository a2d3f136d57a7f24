"""Incidents injected into the simulation, with ground truth for evaluating the detector.

Kinds:

- ``collapse`` (welfare): at T the resident stops; lights stay as they were.
- ``bathroom_collapse`` (welfare): at T the resident goes into the bathroom, switches its light on
  and collapses there, so the light stays on.
- ``hospital_stay``: the resident is taken away at T and the home is silent for days. Welfare
  unless a watcher set away mode (``details["away_mode_set"]``, from ``details["away_set_at"]``).
- ``trip_away`` (not welfare): a planned trip; away mode set in advance with an end date.
- ``bulb_failure`` (technical): a bulb stops reporting from T (no events, no heartbeats).
- ``gateway_power_loss`` (technical): the home's gateway is off for hours; devices buffer.
- ``area_power_cut`` (technical, area outage): every gateway of an area is off together and
  mains-powered devices are unpowered; one ground-truth record per affected household.

An ``IncidentPlan`` gives incidents at fixed times (``IncidentSpec``) and/or draws them at random
times after a learning period, deterministically per household (and per area) from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mimamori.firmware_sim.resident import (
    ACTIVE,
    ASLEEP,
    BATHROOM,
    DOOR_CLOSE,
    DOOR_OPEN,
    ENTER,
    ENTRANCE,
    LIGHT_OFF,
    LIGHT_ON,
    N_ROOMS,
    OUT,
    ROOMS,
    STILL,
    ResidentActions,
)

H = 3600.0
DAY = 86400.0

WELFARE_KINDS = ("collapse", "bathroom_collapse", "hospital_stay")
INCIDENT_KINDS = ("collapse", "bathroom_collapse", "hospital_stay", "trip_away", "bulb_failure", "gateway_power_loss", "area_power_cut")

#: Default chance per household (per area for ``area_power_cut``) over a run, for random plans.
DEFAULT_RATES: Mapping[str, float] = {
    "collapse": 0.12,
    "bathroom_collapse": 0.06,
    "hospital_stay": 0.06,
    "trip_away": 0.08,
    "bulb_failure": 0.05,
    "gateway_power_loss": 0.08,
    "area_power_cut": 0.3,
}


@dataclass(frozen=True)
class Incident:
    """Ground truth of one incident in one household."""

    household_id: str
    kind: str
    start: float  # epoch s
    end: float | None  # None: lasts to the end of the simulation
    devices: tuple[str, ...]  # affected device ids
    welfare: bool  # should alert a watcher; False: technical (coordinator) or planned
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def technical(self) -> bool:
        return self.kind in ("bulb_failure", "gateway_power_loss", "area_power_cut")

    def to_dict(self) -> dict[str, Any]:
        return {
            "household_id": self.household_id,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "devices": list(self.devices),
            "welfare": self.welfare,
            "technical": self.technical,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class IncidentSpec:
    """One incident to inject. ``household``: 0-based household index (area index for area_power_cut)."""

    kind: str
    household: int
    at: float  # epoch s
    duration_s: float | None = None  # None: kind's default (collapse, bulb_failure: to the end)
    room: str | None = None  # bulb_failure: the failing bulb's room (default: the first bulb)
    away_mode: bool | None = None  # hospital_stay: did a watcher set away mode? (default: drawn)

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident kind {self.kind!r}; one of {INCIDENT_KINDS}")


def _daytime_return(t: float, days: float, hour: float, utc_offset_s: float = 9 * H) -> float:
    """Duration of a stay from ``t`` that ends about ``days`` later at local ``hour`` (people come
    back from hospital or a trip in the daytime; households are in Asia/Tokyo)."""
    local_midnight = (t + days * DAY + utc_offset_s) // DAY * DAY - utc_offset_s
    return max(DAY, local_midnight + hour * H - t)


@dataclass(frozen=True)
class IncidentPlan:
    """Fixed incidents plus random ones (``rates``: chance per household, or per area, per run)."""

    specs: tuple[IncidentSpec, ...] = ()
    rates: Mapping[str, float] = field(default_factory=dict)
    learning_days: float = 21.0
    seed: int = 0
    snap: bool = True  # random welfare incidents: move T to a moment the resident is at home

    @classmethod
    def random(cls, *, seed: int = 0, learning_days: float = 21.0, rates: Mapping[str, float] | None = None) -> IncidentPlan:
        rates = dict(DEFAULT_RATES if rates is None else rates)
        unknown = set(rates) - set(INCIDENT_KINDS)
        if unknown:
            raise ValueError(f"unknown incident kinds {sorted(unknown)}")
        return cls(rates=rates, learning_days=learning_days, seed=seed)

    @classmethod
    def at(cls, *specs: IncidentSpec) -> IncidentPlan:
        return cls(specs=tuple(specs), snap=False)

    def _random_time(self, rng: np.random.Generator, start: float, end: float, tail: float) -> float | None:
        lo = start + self.learning_days * DAY
        hi = end - tail
        if hi <= lo:
            return None
        return float(rng.uniform(lo, hi))

    def for_household(self, k: int, start: float, end: float) -> list[IncidentSpec]:
        specs = [s for s in self.specs if s.household == k and s.kind != "area_power_cut"]
        if not self.rates:
            return specs
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(k,))))
        draws = rng.random(8)
        # At most one welfare incident per household: the first one ends the story.
        welfare_rates = [self.rates.get(kind, 0.0) for kind in WELFARE_KINDS]
        edges = np.cumsum(welfare_rates)
        pick = int(np.searchsorted(edges, draws[0], side="right"))
        if pick < len(WELFARE_KINDS):
            kind = WELFARE_KINDS[pick]
            t = self._random_time(rng, start, end, 1.0 * DAY)
            if t is not None:
                dur = _daytime_return(t, float(rng.uniform(3, 14)), float(rng.uniform(10, 16))) if kind == "hospital_stay" else None
                away = bool(rng.random() < 0.5) if kind == "hospital_stay" else None
                specs.append(IncidentSpec(kind, k, t, dur, away_mode=away))
        for j, kind in enumerate(("trip_away", "bulb_failure", "gateway_power_loss"), start=1):
            if draws[j] < self.rates.get(kind, 0.0):
                t = self._random_time(rng, start, end, 0.5 * DAY)
                if t is None:
                    continue
                dur = {
                    "trip_away": _daytime_return(t, float(rng.uniform(2, 7)), float(rng.uniform(10, 16))),
                    "bulb_failure": None,
                    "gateway_power_loss": float(rng.uniform(2, 12)) * H,
                }[kind]
                specs.append(IncidentSpec(kind, k, t, dur))
        return specs

    def for_area(self, area: int, start: float, end: float) -> list[IncidentSpec]:
        specs = [s for s in self.specs if s.kind == "area_power_cut" and s.household == area]
        rate = self.rates.get("area_power_cut", 0.0)
        if rate > 0:
            # Areas draw from their own streams, apart from the households'.
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(1_000_000 + area,))))
            if rng.random() < rate:
                t = self._random_time(rng, start, end, 0.5 * DAY)
                if t is not None:
                    specs.append(IncidentSpec("area_power_cut", area, t, float(rng.uniform(2, 8)) * H))
        return specs


# ---------------------------------------------------------------------------------------------
# Applying incidents to a household
# ---------------------------------------------------------------------------------------------


def _at_home_awake_from(actions: ResidentActions, t: float) -> float:
    """The first moment at or after ``t`` at which the resident is at home and awake."""
    enters = np.flatnonzero(actions.action == ENTER)
    times = actions.time[enters]
    ok = (actions.room[enters] != OUT) & (actions.level[enters] != ASLEEP) & (actions.level[enters] != STILL)
    i = int(np.searchsorted(times, t, side="right")) - 1
    if i >= 0 and ok[i]:
        return t
    later = np.flatnonzero(ok & (times > t))
    return float(times[later[0]]) + 30.0 if len(later) else t


@dataclass
class AppliedIncidents:
    actions: ResidentActions
    incidents: list[Incident]
    dead: dict[int, list[tuple[float, float]]]  # device index -> broken intervals
    gateway_down: list[tuple[float, float]]
    power_cuts: list[tuple[float, float]]


def _leave(actions: ResidentActions, t: float, lights_off: bool) -> list[tuple[float, int, int, int]]:
    rows: list[tuple[float, int, int, int]] = [(t - 60, ENTER, ENTRANCE, ACTIVE), (t - 20, DOOR_OPEN, -1, 0), (t - 10, DOOR_CLOSE, -1, 0), (t, ENTER, OUT, ACTIVE)]
    if lights_off:
        for room, on in enumerate(actions.lights_at(t - 120)):
            if on:
                rows.append((t - 90, LIGHT_OFF, room, 0))
    return rows


def _return(actions_before: ResidentActions, t: float) -> list[tuple[float, int, int, int]]:
    """Coming home at ``t``: door, then whatever the ordinary day had them do, lights as planned."""
    room, level = actions_before.location_at(t + 120)
    rows: list[tuple[float, int, int, int]] = [(t, DOOR_OPEN, -1, 0), (t + 8, DOOR_CLOSE, -1, 0), (t + 10, ENTER, ENTRANCE, ACTIVE)]
    rows.append((t + 120, ENTER, room if room != OUT else ROOMS.index("living"), level if room != OUT else ACTIVE))
    planned = actions_before.lights_at(t + 120)
    for r in range(N_ROOMS):
        rows.append((t + 125, LIGHT_ON if planned[r] else LIGHT_OFF, r, 0))  # noqa: PERF401
    return rows


def apply_incidents(
    household_id: str,
    device_ids: Sequence[str],
    device_kinds: Sequence[str],
    device_rooms: Sequence[str],
    actions: ResidentActions,
    specs: Sequence[IncidentSpec],
    start: float,
    end: float,
    rng: np.random.Generator,
    *,
    snap: bool = True,
    area: str | None = None,
) -> AppliedIncidents:
    """Edit the resident's actions and the devices' fates; return the ground truth."""
    incidents: list[Incident] = []
    dead: dict[int, list[tuple[float, float]]] = {}
    gateway_down: list[tuple[float, float]] = []
    power_cuts: list[tuple[float, float]] = []
    stopped_at = math.inf  # a collapse ends the resident's story
    all_devices = tuple(device_ids)
    for spec in sorted(specs, key=lambda s: s.at):
        t = round(float(spec.at), 3)
        kind = spec.kind
        dur = None if spec.duration_s is None else round(float(spec.duration_s), 3)
        if kind in WELFARE_KINDS or kind == "trip_away":
            if t >= stopped_at or t >= end:
                continue
            if snap:
                t = _at_home_awake_from(actions, t)
                if t >= end - 3600:
                    continue
            t = round(t, 3)
        if kind == "collapse":
            actions = actions.select(actions.time <= t).merged([(t, ENTER, actions.location_at(t)[0], STILL)])
            stopped_at = t
            room = ROOMS[actions.location_at(t)[0]] if actions.location_at(t)[0] < len(ROOMS) else "out"
            incidents.append(Incident(household_id, kind, t, None, all_devices, True, {"room": room}))
        elif kind == "bathroom_collapse":
            keep = actions.select(actions.time < t)
            actions = keep.merged([(t, ENTER, BATHROOM, ACTIVE), (t + 3, LIGHT_ON, BATHROOM, 0), (t + 40, ENTER, BATHROOM, STILL)])
            stopped_at = t
            bulbs = tuple(d for d, k, r in zip(device_ids, device_kinds, device_rooms, strict=False) if k == "bulb" and r == "bathroom")
            incidents.append(Incident(household_id, kind, t, None, bulbs or all_devices, True, {"room": "bathroom", "bathroom_bulb": bool(bulbs)}))
        elif kind in ("hospital_stay", "trip_away"):
            if dur is None:
                dur = (7 if kind == "hospital_stay" else 3) * DAY
            back = round(max(float(spec.at) + dur, t + H), 3)  # snapping T keeps the planned return
            planned = kind == "trip_away"
            inside = (actions.time >= t - 120) & (actions.time < back + 130)
            rows = _leave(actions, t, lights_off=planned)
            if back < end:
                rows += _return(actions, back)
            actions = actions.select(~inside).merged(rows)
            if planned:
                details = {"away_mode_set": True, "away_set_at": t - float(rng.uniform(0.5, 3.0)) * DAY, "away_until": back}
                welfare = False
            else:
                away = spec.away_mode if spec.away_mode is not None else bool(rng.random() < 0.5)
                details = {"away_mode_set": away}
                if away:
                    details |= {"away_set_at": t + float(rng.uniform(2, 24)) * H, "away_until": back}
                welfare = not away
            incidents.append(Incident(household_id, kind, t, back if back < end else None, all_devices, welfare, details))
        elif kind == "bulb_failure":
            bulbs = [i for i, k in enumerate(device_kinds) if k == "bulb"]
            if spec.room is not None:
                bulbs = [i for i in bulbs if device_rooms[i] == spec.room]
            if not bulbs:
                continue
            i = bulbs[0]
            stop = math.inf if dur is None else t + dur
            dead.setdefault(i, []).append((t, stop))
            incidents.append(Incident(household_id, kind, t, None if dur is None else stop, (device_ids[i],), False, {"room": device_rooms[i]}))
        elif kind in ("gateway_power_loss", "area_power_cut"):
            if dur is None:
                dur = 4 * H
            gateway_down.append((t, t + dur))
            details: dict[str, Any] = {}
            affected = all_devices
            if kind == "area_power_cut":
                power_cuts.append((t, t + dur))
                affected = all_devices
                details = {"area": area, "mains_devices_unpowered": [d for d, k in zip(device_ids, device_kinds, strict=False) if k in ("bulb", "plug")]}
            incidents.append(Incident(household_id, kind, t, t + dur, affected, False, details))
    return AppliedIncidents(actions, incidents, dead, gateway_down, power_cuts)
