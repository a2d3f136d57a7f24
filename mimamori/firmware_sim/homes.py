"""Households of the simulated town: ids, areas, device mixes and per-household seeds.

Household ``k`` (0-based) is ``hh-{k+1:04d}`` with gateway ``gw-{k+1:04d}``; its seed is
``SeedSequence(seed).spawn(n)[k]`` (built directly as ``SeedSequence(seed, spawn_key=(k,))``, which
is the same thing), so household k does not depend on how many households are simulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimamori.firmware_sim.resident import DEFAULT_TIMEZONE, ROOMS, Draws, ResidentParams, draw_params

#: Households per area (a neighbourhood association, 町内会); area outages hit one area.
AREA_SIZE = 25

_SURNAMES = ("佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤", "吉田", "山田", "松本", "井上", "木村")

# Which rooms get a bulb / sensor, and how likely (the living room bulb is the classic one).
_BULB_ROOMS = {"living": 0.85, "bathroom": 0.55, "kitchen": 0.45, "bedroom": 0.25, "entrance": 0.15}
_MOTION_ROOMS = {"living": 1.0, "kitchen": 0.6, "bedroom": 0.45, "bathroom": 0.3, "entrance": 0.2}
SENSOR_HOME_P = 0.35  # the rest have bulbs only


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    device_id: str
    kind: str  # protocol.DEVICE_KINDS
    room: str  # resident.ROOMS
    mains: bool  # mains powered (bulbs, plugs): a power cut stops it; battery sensors keep going

    @property
    def room_index(self) -> int:
        return ROOMS.index(self.room)


@dataclass(frozen=True)
class HouseholdInfo:
    index: int
    household_id: str
    gateway_id: str
    area: str
    area_index: int
    timezone: str
    display_name: str
    devices: tuple[DeviceSpec, ...]
    params: ResidentParams

    @property
    def device_ids(self) -> list[str]:
        return [dev.device_id for dev in self.devices]

    @property
    def has_sensors(self) -> bool:
        return any(dev.kind != "bulb" for dev in self.devices)

    def to_manifest(self) -> dict:
        return {
            "household_id": self.household_id,
            "display_name": self.display_name,
            "area": self.area,
            "timezone": self.timezone,
            "gateway_id": self.gateway_id,
            "devices": [{"device_id": d.device_id, "kind": d.kind, "room": d.room} for d in self.devices],
        }


def household_ids(k: int) -> tuple[str, str]:
    return f"hh-{k + 1:04d}", f"gw-{k + 1:04d}"


def area_of(k: int) -> int:
    return k // AREA_SIZE


def area_name(area_index: int) -> str:
    return f"area-{area_index + 1:02d}"


def household_seed(seed: int, k: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(k,))


@dataclass(frozen=True)
class HouseholdSeeds:
    """Independent streams of one household: habits/devices, days, firmware, incidents."""

    setup: np.random.SeedSequence
    days: np.random.SeedSequence
    firmware: np.random.SeedSequence
    incidents: np.random.SeedSequence

    @classmethod
    def of(cls, seed: int, k: int) -> HouseholdSeeds:
        return cls(*household_seed(seed, k).spawn(4))


def _devices(hh: str, d: Draws, bulbs_only: bool) -> tuple[DeviceSpec, ...]:
    # Draw everything whatever `bulbs_only` says, so a home's bulbs are the same either way.
    bulb_rooms = [room for room, p in _BULB_ROOMS.items() if d.chance(p)]
    if "living" not in bulb_rooms and "bathroom" not in bulb_rooms:
        bulb_rooms.append("living")  # installers put one where it is used every day
    sensor_home = d.chance(SENSOR_HOME_P)
    motion_rooms = [room for room, p in _MOTION_ROOMS.items() if d.chance(p)]
    door = d.chance(0.85)
    plug = d.chance(0.35)
    devices = [DeviceSpec(f"{hh}-{room}-bulb", "bulb", room, True) for room in ROOMS if room in bulb_rooms]
    if sensor_home and not bulbs_only:
        devices += [DeviceSpec(f"{hh}-{room}-motion", "motion", room, False) for room in ROOMS if room in motion_rooms]
        if door:
            devices.append(DeviceSpec(f"{hh}-entrance-door", "door", "entrance", False))
        if plug:
            devices.append(DeviceSpec(f"{hh}-kitchen-plug", "plug", "kitchen", True))
    return tuple(devices)


def make_household(k: int, seed: int, *, bulbs_only: bool = False, timezone: str = DEFAULT_TIMEZONE) -> HouseholdInfo:
    hh, gw = household_ids(k)
    d = Draws(np.random.Generator(np.random.PCG64(HouseholdSeeds.of(seed, k).setup)), block=128)
    params = draw_params(d)
    devices = _devices(hh, d, bulbs_only)
    surname = d.choice(_SURNAMES)
    area = area_of(k)
    return HouseholdInfo(k, hh, gw, area_name(area), area, timezone, f"{surname} ({hh})", devices, params)
