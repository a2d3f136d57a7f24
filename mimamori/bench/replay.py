"""The streams one evaluation replays (``Replay``), in the detector's codes, made from a simulated fleet.

Real logs become a ``Replay`` in ``bench.casas``; ``bench.eval`` runs the systems on either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mimamori.detector import model as m

H = 3600.0


DAY = 86400.0


# Broker keepalive: the last will is published this long after the gateway goes silent.
LAST_WILL_DELAY_S = 90.0


_DEV_CODES = {"bulb": m.DEV_BULB, "motion": m.DEV_MOTION, "door": m.DEV_DOOR, "plug": m.DEV_PLUG}


@dataclass
class Replay:
    """Everything one evaluation replays, in the detector's codes."""

    start: float
    end: float
    device_kinds: np.ndarray  # int8[H, D]
    area: np.ndarray  # int32[H]
    tz_offset_s: np.ndarray  # int32[H]
    # events, sorted by arrival
    arrival: np.ndarray
    hh: np.ndarray
    dev: np.ndarray
    t: np.ndarray
    kind: np.ndarray
    # gateway status changes, sorted by time: (t, hh, online)
    gw_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gw_hh: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    gw_online: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # away periods: (hh, set_at, until)
    away: list[tuple[int, float, float]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)  # ground truth
    learning_end: float = 0.0
    #: per household, the end of the stretch in which its alerts can be false (default: the end)
    observed_until: np.ndarray | None = None
    #: unannounced nights away of the simulated residents (hh, left, back): not incidents (an alert
    #: then is false), reported apart because a bulbs-only home cannot tell one from a collapse
    nights_away: list[tuple[int, float, float]] = field(default_factory=list)
    #: where each simulated resident was, as changes (times, PRESENT_AWAKE / PRESENT_ASLEEP / AWAY);
    #: None for real logs (then "awake" is guessed from the hour)
    presence: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def n(self) -> int:
        return len(self.area)


def map_kinds(kind_codes: tuple[str, ...]) -> np.ndarray:
    """Lookup table: simulator kind code -> detector EV_* code."""
    return np.array([m.EVENT_KINDS.index(k) for k in kind_codes], np.int8)


def replay_from_fleet(fleet: Any, learning_days: float) -> Replay:
    n = len(fleet.households)
    kinds = np.full((n, m.MAX_DEVICES), m.DEV_NONE, np.int8)
    for i, hh in enumerate(fleet.households):
        codes = [_DEV_CODES[k] for k in hh.device_kinds][: m.MAX_DEVICES]
        kinds[i, : len(codes)] = codes
    arr = fleet.concatenated(sort=False)
    lut = map_kinds(tuple(fleet.kind_codes))
    order = np.lexsort((arr.time, arr.arrival))
    keep = arr.device[order] < m.MAX_DEVICES
    order = order[keep]
    area = np.array([hh.info.area_index for hh in fleet.households], np.int32)
    incidents: list[dict[str, Any]] = []
    away: list[tuple[int, float, float]] = []
    gw: list[tuple[float, int, bool]] = []
    for i, hh in enumerate(fleet.households):
        for inc in hh.incidents:
            d = inc.to_dict()
            d["hh"] = i
            d["area"] = int(area[i])
            incidents.append(d)
            det = inc.details
            if det.get("away_mode_set") and "away_set_at" in det:
                away.append((i, float(det["away_set_at"]), float(det.get("away_until") or fleet.end)))
            if inc.kind in ("gateway_power_loss", "area_power_cut"):
                gw.append((inc.start + LAST_WILL_DELAY_S, i, False))
                gw.append(((inc.end or fleet.end) + 30.0, i, True))
    gw.sort()
    return Replay(
        start=fleet.start,
        end=fleet.end,
        device_kinds=kinds,
        area=area,
        tz_offset_s=np.full(n, 9 * 3600, np.int32),
        arrival=arr.arrival[order],
        hh=arr.household[order].astype(np.int64),
        dev=arr.device[order].astype(np.int64),
        t=arr.time[order],
        kind=lut[arr.kind[order]],
        gw_t=np.array([g[0] for g in gw]),
        gw_hh=np.array([g[1] for g in gw], np.int64),
        gw_online=np.array([g[2] for g in gw], bool),
        away=away,
        incidents=incidents,
        learning_end=fleet.start + learning_days * DAY,
        nights_away=[(i, float(a), float(b)) for i, hh in enumerate(fleet.households) for a, b in hh.nights_away],
        presence=[hh.presence for hh in fleet.households] if all(hh.presence is not None for hh in fleet.households) else None,
    )
