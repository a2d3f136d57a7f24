"""How an older person living alone moves through a day, as a time-ordered array of actions.

Each household has its own ``ResidentParams`` (chronotype, habits, outings, visitors ...), drawn
once from its seed. ``simulate_resident`` walks the local days (households live in Asia/Tokyo)
and produces ``ResidentActions``: entering a room (with how active the resident is there),
switching a room's light, opening/closing the front door, switching an appliance (the kettle).

Device firmware (``devices.py``) turns these actions into device events: a bulb reports the
switches of its room, a motion sensor the presence in its room, the door sensor the door.

Pure functions over a ``Draws`` source; no I/O and no wall clock.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from mimamori.firmware_sim.daylight import DEFAULT_TIMEZONE, LocalDay, local_days
from mimamori.firmware_sim.draws import Draws

ROOMS = ("bedroom", "kitchen", "living", "bathroom", "entrance")
BEDROOM, KITCHEN, LIVING, BATHROOM, ENTRANCE = range(5)
OUT = 5  # not at home (a "room" for presence only)
N_ROOMS = 5

# How active the resident is in a room: drives motion sensors. STILL: present but not moving
# at all (collapsed); only incidents produce it.
ASLEEP, CALM, ACTIVE, STILL = 0, 1, 2, 3

# Action codes of ResidentActions.action
ENTER, LIGHT_ON, LIGHT_OFF, DOOR_OPEN, DOOR_CLOSE, APPLIANCE_ON, APPLIANCE_OFF = range(7)
ACTION_NAMES = ("enter", "light_on", "light_off", "door_open", "door_close", "appliance_on", "appliance_off")

H = 3600.0
MIN = 60.0


@dataclass(frozen=True, slots=True)
class ResidentParams:
    """One household's habits. Hours are local time of day."""

    wake_h: float  # usual wake-up time (chronotype)
    wake_sd_h: float  # day-to-day variation
    bed_h: float  # usual bedtime
    bed_sd_h: float
    saturday_late_h: float  # how much later they get up on Saturday / Sunday
    sunday_late_h: float
    night_visits: float  # mean night bathroom visits (nocturia)
    night_bedroom_light_p: float  # switches the bedroom light on for a night visit
    toilet_every_h: float  # mean time between daytime toilet visits
    tea_every_h: float  # mean time between short kitchen trips
    shopping_p: float  # chance of a shopping trip on a weekday
    clinic_weekday: int  # 0=Mon; -1: no regular clinic visit
    clinic_every_weeks: int
    daycare_weekdays: tuple[int, ...]  # day service (デイサービス): out most of the day
    nap_p: float  # a short doze on the sofa after lunch
    long_nap_p: float  # an occasional long nap in bed
    bath_p: float  # evening bath (お風呂)
    visitor_p: float  # a visitor comes for an hour or more
    night_away_p: float  # stays a night with family
    bathroom_windowless: bool  # needs the light at any hour
    dusk_offset_h: float  # lights go on this long before sunset (darker rooms: larger)
    off_habit: float  # chance of switching the light off when leaving a room
    forget_out_p: float  # leaves a light on when going out / to bed


def draw_params(d: Draws) -> ResidentParams:
    wake = d.clipped_normal(6.2, 0.55, 4.8, 8.3)
    clinic = int(d.random() * 5) if d.chance(0.6) else -1
    daycare: tuple[int, ...] = ()
    if d.chance(0.2):
        first = int(d.random() * 5)
        daycare = tuple(sorted({first, (first + 2 + int(d.random() * 2)) % 5}))
    return ResidentParams(
        wake_h=wake,
        wake_sd_h=d.uniform(0.15, 0.45),
        bed_h=d.clipped_normal(wake + 15.6, 0.6, 20.3, 23.8),
        bed_sd_h=d.uniform(0.2, 0.5),
        saturday_late_h=d.uniform(0.0, 0.4),
        sunday_late_h=d.uniform(0.25, 1.2),
        night_visits=d.uniform(0.4, 2.4),
        night_bedroom_light_p=d.uniform(0.1, 0.8),
        toilet_every_h=d.uniform(1.8, 3.2),
        tea_every_h=d.uniform(2.0, 5.0),
        shopping_p=d.uniform(0.25, 0.9),  # real homes go out 0.7-1.6 times a day (bench.realism); was 0.2-0.55
        clinic_weekday=clinic,
        clinic_every_weeks=1 + int(d.random() * 4),
        daycare_weekdays=daycare,
        nap_p=d.uniform(0.2, 0.9),  # real homes: 1.1-1.2 naps of 1-3 h a day (bench.realism); was 0.1-0.6
        long_nap_p=d.uniform(0.02, 0.1),
        bath_p=d.uniform(0.5, 0.95),
        visitor_p=d.uniform(0.03, 0.2),
        night_away_p=d.uniform(0.0, 0.025),
        bathroom_windowless=d.chance(0.6),
        dusk_offset_h=d.uniform(0.2, 1.0),
        off_habit=d.uniform(0.75, 0.97),
        forget_out_p=d.uniform(0.005, 0.04),
    )


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidentActions:
    """Time-ordered resident actions. ``room`` is -1 for door actions; ``level`` only for ENTER."""

    time: np.ndarray  # float64 epoch s
    action: np.ndarray  # int8, see ACTION_NAMES
    room: np.ndarray  # int8, ROOMS index or OUT
    level: np.ndarray  # int8, ASLEEP / CALM / ACTIVE
    nights_away: tuple[tuple[float, float], ...] = ()  # (left, returned) of overnight stays

    def __len__(self) -> int:
        return len(self.time)

    def select(self, mask: np.ndarray) -> ResidentActions:
        return ResidentActions(self.time[mask], self.action[mask], self.room[mask], self.level[mask], self.nights_away)

    @staticmethod
    def from_rows(rows: list[tuple[float, int, int, int]], nights_away: tuple[tuple[float, float], ...] = ()) -> ResidentActions:
        if not rows:
            return ResidentActions(np.zeros(0), np.zeros(0, np.int8), np.zeros(0, np.int8), np.zeros(0, np.int8), nights_away)
        arr = np.asarray(rows, dtype=np.float64)
        order = np.argsort(arr[:, 0], kind="stable")
        arr = arr[order]
        return ResidentActions(
            np.round(arr[:, 0] * 1000.0) / 1000.0,  # device clocks tick in milliseconds
            arr[:, 1].astype(np.int8),
            arr[:, 2].astype(np.int8),
            arr[:, 3].astype(np.int8),
            nights_away,
        )

    def merged(self, rows: list[tuple[float, int, int, int]]) -> ResidentActions:
        extra = ResidentActions.from_rows(rows)
        return ResidentActions(
            *(np.concatenate([a, b]) for a, b in zip(
                (self.time, self.action, self.room, self.level), (extra.time, extra.action, extra.room, extra.level), strict=True)),
            self.nights_away,
        ).sorted()

    def sorted(self) -> ResidentActions:
        order = np.argsort(self.time, kind="stable")
        return ResidentActions(self.time[order], self.action[order], self.room[order], self.level[order], self.nights_away)

    def location_at(self, t: float) -> tuple[int, int]:
        """(room, level) of the resident at ``t``: the latest ENTER at or before ``t``."""
        enters = np.flatnonzero(self.action == ENTER)
        i = np.searchsorted(self.time[enters], t, side="right") - 1
        if i < 0:
            return BEDROOM, ASLEEP
        j = enters[i]
        return int(self.room[j]), int(self.level[j])

    def lights_at(self, t: float) -> np.ndarray:
        """Intended light state (bool per room) at ``t`` from the light actions before it."""
        state = np.zeros(N_ROOMS, dtype=bool)
        before = self.time <= t
        for room in range(N_ROOMS):
            sel = before & (self.room == room) & ((self.action == LIGHT_ON) | (self.action == LIGHT_OFF))
            idx = np.flatnonzero(sel)
            if len(idx):
                state[room] = self.action[idx[-1]] == LIGHT_ON
        return state


# ---------------------------------------------------------------------------------------------
# The day plan
# ---------------------------------------------------------------------------------------------


class _DayPlan:
    """Accumulates moves (t, room, level) and door/appliance actions for one household."""

    def __init__(self) -> None:
        self.moves: list[tuple[float, int, int]] = []
        self.other: list[tuple[float, int, int, int]] = []  # (t, action, room, 0)

    @property
    def here(self) -> tuple[float, int, int]:
        return self.moves[-1]

    def move(self, t: float, room: int, level: int) -> None:
        self.moves.append((t, room, level))

    def go_out(self, d: Draws, t: float) -> None:
        self.move(t - d.uniform(60, 240), ENTRANCE, ACTIVE)
        self.door(d, t - 20)
        self.move(t, OUT, ACTIVE)

    def come_home(self, d: Draws, t: float, then: int = LIVING) -> float:
        self.door(d, t)
        self.move(t + 5, ENTRANCE, ACTIVE)
        t2 = t + d.uniform(60, 180)
        self.move(t2, then, CALM if then == LIVING else ACTIVE)
        return t2

    def door(self, d: Draws, t: float) -> None:
        self.other.append((t, DOOR_OPEN, -1, 0))
        self.other.append((t + d.uniform(4, 15), DOOR_CLOSE, -1, 0))

    def appliance(self, t: float, seconds: float) -> None:
        self.other.append((t, APPLIANCE_ON, KITCHEN, 0))
        self.other.append((t + seconds, APPLIANCE_OFF, KITCHEN, 0))


def _fill(plan: _DayPlan, d: Draws, p: ResidentParams, t0: float, t1: float, room: int = LIVING) -> None:
    """Ordinary time at home between fixed blocks: sitting, with toilet visits and kitchen trips."""
    t = t0
    while True:
        toilet = t + d.exponential(p.toilet_every_h * H)
        tea = t + d.exponential(p.tea_every_h * H)
        nxt, kind = (toilet, BATHROOM) if toilet < tea else (tea, KITCHEN)
        if nxt > t1 - 10 * MIN:
            return
        plan.move(nxt, kind, ACTIVE)
        back = nxt + (d.uniform(3, 8) if kind == BATHROOM else d.uniform(4, 15)) * MIN
        plan.move(back, room, CALM)
        t = back


def _block_time(d: Draws, mu_h: float, sd_h: float) -> float:
    return d.normal(mu_h, sd_h) * H


def plan_day(plan: _DayPlan, d: Draws, p: ResidentParams, day: LocalDay, state: dict) -> None:
    """Append one local day: the night (from the previous bedtime) through to this day's bedtime."""
    m = day.midnight
    weekday = day.weekday
    late = p.sunday_late_h if weekday == 6 else p.saturday_late_h if weekday == 5 else 0.0
    winter = 0.15 * (day.sunrise_h - 5.6)  # dark winter mornings: up a little later
    wake = m + (p.wake_h + late + d.normal(0, p.wake_sd_h) + winter) * H
    bed = m + (p.bed_h + (0.3 if weekday == 5 else 0.0) + d.normal(0, p.bed_sd_h)) * H
    prev_bed = state.get("bed", m - 1.5 * H)

    away_until = state.pop("away_until", None)
    if away_until is None:
        # The night: bathroom visits between falling asleep and waking.
        n = d.poisson(p.night_visits)
        lo, hi = prev_bed + 40 * MIN, wake - 20 * MIN
        if hi > lo:
            back = -math.inf
            for drawn in sorted(d.uniform(lo, hi) for _ in range(n)):
                t = max(drawn, back + 20 * MIN)
                if t > hi:
                    break
                plan.move(t, BATHROOM, ACTIVE)
                back = t + d.uniform(3, 8) * MIN
                plan.move(back, BEDROOM, ASLEEP)
        # Morning: get up, wash, breakfast.
        plan.move(wake, BEDROOM, ACTIVE)
        t = wake + d.uniform(3, 12) * MIN
        plan.move(t, BATHROOM, ACTIVE)
        t += d.uniform(5, 15) * MIN
        plan.move(t, KITCHEN, ACTIVE)
        plan.appliance(t + d.uniform(1, 4) * MIN, d.uniform(150, 240))
        t += d.uniform(25, 50) * MIN
        plan.move(t, LIVING, CALM)
    else:
        # Coming back from a night away with family.
        t = plan.come_home(d, max(away_until, m + 6 * H))

    # Fixed blocks of the day: (start, end, kind). Outings replace whatever they overlap.
    blocks: list[tuple[float, float, str]] = []
    out_all_day = weekday in p.daycare_weekdays
    if out_all_day:
        blocks.append((m + _block_time(d, 8.9, 0.15), m + _block_time(d, 16.2, 0.25), "out"))
    elif weekday == p.clinic_weekday and day.week % p.clinic_every_weeks == 0:
        s = m + _block_time(d, 9.2, 0.3)
        blocks.append((s, s + d.uniform(2.0, 4.0) * H, "out"))
    elif (weekday < 6 and d.chance(p.shopping_p)) or (weekday == 6 and d.chance(p.shopping_p / 2)):
        s = m + (_block_time(d, 10.3, 0.6) if d.chance(0.5) else _block_time(d, 15.0, 0.6))
        blocks.append((s, s + d.uniform(0.75, 2.5) * H, "out"))
    if not out_all_day:
        blocks.append((m + _block_time(d, 11.9, 0.25), 0.0, "lunch"))
        if d.chance(p.long_nap_p):
            s = m + _block_time(d, 13.3, 0.4)
            blocks.append((s, s + d.uniform(1.5, 3.0) * H, "long_nap"))
        elif d.chance(p.nap_p):
            s = m + _block_time(d, 13.5, 0.4)
            blocks.append((s, s + d.uniform(15, 120) * MIN, "nap"))  # up to 2 h sitting still (was 60 min)
        if d.chance(p.visitor_p * (2.0 if weekday >= 5 else 1.0)):  # family comes at weekends
            s = m + _block_time(d, 14.3, 1.2)
            blocks.append((s, s + d.uniform(1.0, 3.0) * H, "visitor"))
    night_away = d.chance(p.night_away_p) and not out_all_day
    if night_away:
        s = m + d.uniform(14.5, 17.5) * H
        blocks.append((s, 0.0, "night_away"))
    else:
        blocks.append((m + _block_time(d, 17.6, 0.4), 0.0, "dinner"))
        if d.chance(p.bath_p):
            blocks.append((m + _block_time(d, 19.8, 0.5), 0.0, "bath"))
    blocks.sort()

    for planned_start, planned_end, kind in blocks:
        start, end = max(planned_start, t + 5 * MIN), planned_end
        if start > bed - 30 * MIN:
            continue
        _fill(plan, d, p, t, start)
        if kind == "out":
            end = max(end, start + 30 * MIN)
            plan.go_out(d, start)
            t = plan.come_home(d, end)
        elif kind == "lunch":
            plan.move(start, KITCHEN, ACTIVE)
            t = start + d.uniform(25, 45) * MIN
            plan.move(t, LIVING, CALM)
        elif kind == "nap":
            plan.move(start, LIVING, ASLEEP)
            plan.move(max(end, start + 10 * MIN), LIVING, CALM)
            t = max(end, start + 10 * MIN)
        elif kind == "long_nap":
            plan.move(start, BEDROOM, ASLEEP)
            plan.move(end, BATHROOM, ACTIVE)
            t = end + d.uniform(3, 6) * MIN
            plan.move(t, LIVING, CALM)
        elif kind == "visitor":
            plan.door(d, start)
            plan.move(start + 10, LIVING, ACTIVE)
            plan.move(start + 20 * MIN, KITCHEN, ACTIVE)  # tea for the guest
            plan.move(start + d.uniform(28, 35) * MIN, LIVING, ACTIVE)
            plan.door(d, end)
            t = end + 60
            plan.move(t, LIVING, CALM)
        elif kind == "dinner":
            plan.move(start, KITCHEN, ACTIVE)
            t = start + d.uniform(45, 80) * MIN
            plan.move(t, LIVING, CALM)
        elif kind == "bath":
            plan.move(start, BATHROOM, ACTIVE)
            t = start + d.uniform(25, 45) * MIN
            plan.move(t, LIVING, CALM)
        elif kind == "night_away":
            plan.move(start - 20 * MIN, BEDROOM, ACTIVE)  # packing
            plan.go_out(d, start)
            back = m + H * 24 + d.uniform(10.5, 16.0) * H
            state["away_until"] = back
            state["nights_away"].append((start, back))
            return
    bed = max(bed, t + 20 * MIN)
    _fill(plan, d, p, t, bed - 15 * MIN)
    reading = d.uniform(2, 30) * MIN
    plan.move(bed - reading - d.uniform(5, 10) * MIN, BATHROOM, ACTIVE)
    plan.move(bed - reading, BEDROOM, ACTIVE)
    plan.move(bed, BEDROOM, ASLEEP)
    state["bed"] = bed


def _light_rows(moves: list[tuple[float, int, int]], days: tuple[LocalDay, ...], d: Draws,
                p: ResidentParams) -> list[tuple[float, int, int, int]]:
    """Switch lights from moves and daylight: on when entering a dark room, off when leaving (mostly)."""
    rows: list[tuple[float, int, int, int]] = []
    on = [False] * N_ROOMS
    # Darkness windows per day: dark before sunrise+20min and after sunset-dusk_offset (indoor light).
    day_starts = [day.midnight for day in days]
    dark_from = [day.midnight + (day.sunset_h - p.dusk_offset_h) * H for day in days]
    dark_until = [day.midnight + (day.sunrise_h + 0.4) * H for day in days]

    def dark(t: float, room: int) -> bool:
        if room == BATHROOM and p.bathroom_windowless:
            return True
        i = bisect.bisect_right(day_starts, t) - 1
        return t < dark_until[i] or t >= dark_from[i]

    def switch(t: float, room: int, value: bool) -> None:
        if on[room] != value:
            on[room] = value
            rows.append((t, LIGHT_ON if value else LIGHT_OFF, room, 0))

    prev_room, prev_level, prev_t = BEDROOM, ASLEEP, -math.inf
    dusk_i = 0
    for t, room, level in moves:
        # Dusk falls while the resident sits in a room: they get up and switch the light on.
        while dusk_i < len(dark_from) and dark_from[dusk_i] <= t:
            td = dark_from[dusk_i]
            if td > prev_t and prev_room != OUT and prev_level != ASLEEP and not on[prev_room]:
                switch(min(td + d.uniform(0, 25) * MIN, t - 5), prev_room, True)
            dusk_i += 1
        if room == OUT or (room == BEDROOM and level == ASLEEP):
            # Leaving the house or going to sleep: everything off, unless forgotten.
            for r in range(N_ROOMS):
                if on[r] and (r == BEDROOM or not d.chance(p.forget_out_p)):
                    switch(t + d.uniform(1, 20), r, False)
        elif room != prev_room:
            if prev_room != OUT and on[prev_room]:
                keep_living = prev_room == LIVING and dark(t, LIVING) and room in (KITCHEN, BATHROOM)
                if not keep_living and d.chance(p.off_habit):
                    switch(t - d.uniform(1, 5), prev_room, False)
            if level != ASLEEP:
                if room == BATHROOM and prev_level == ASLEEP and prev_room == BEDROOM:
                    # Night visit: maybe the bedroom light first, always the bathroom light.
                    if d.chance(p.night_bedroom_light_p):
                        switch(t - d.uniform(10, 40), BEDROOM, True)
                    switch(t + d.uniform(1, 4), BATHROOM, True)
                elif dark(t, room):
                    switch(t + d.uniform(1, 6), room, True)
        # Daylight came: a light left on in the room the resident is in goes off eventually.
        if room != OUT and on[room] and level != ASLEEP and not dark(t, room) and d.chance(0.5):
            switch(t + d.uniform(5, 60), room, False)
        prev_room, prev_level, prev_t = room, level, t
    return rows


def simulate_resident(params: ResidentParams, d: Draws, start: float, end: float, tz: str = DEFAULT_TIMEZONE) -> ResidentActions:
    """All resident actions in [start, end) (the plan starts the night before ``start``)."""
    days = local_days(start, end, tz)
    plan = _DayPlan()
    state: dict = {"nights_away": []}
    first = days[0]
    plan.move(first.midnight - 2 * H, BEDROOM, ASLEEP)
    state["bed"] = first.midnight - 2 * H
    for day in days:
        if day.midnight > end:
            break
        plan_day(plan, d, params, day, state)
    moves = plan.moves
    lights = _light_rows(moves, days, d, params)
    rows = [(t, ENTER, r, lv) for t, r, lv in moves]
    rows.extend(lights)
    rows.extend(plan.other)
    actions = ResidentActions.from_rows(rows, tuple(state["nights_away"]))
    # Keep actions before `start` only as far as device state needs them (lights); devices clip.
    return actions.select(actions.time < end)
