"""Pure core of the safety check: what a household's events since the check started mean.

A **double toggle** — the agreed "I am safe" gesture — is at least two state changes of the *same*
switchable device (bulb or plug: ``on``/``off``), alternating (on→off→on or off→on→off, i.e. two
consecutive opposite switches), the first and the last within ``window_s`` of each other, all at
or after the moment the home was asked. One toggle, motion, doors, or toggles spread out are
ordinary life: a *sign of life*, shown as such, never as "safe".

No I/O: events in, a verdict out (``recognise``); the worker feeds it from the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Final

#: Longest time from the first to the second switch of a double toggle (seconds).
DOUBLE_TOGGLE_WINDOW_S: Final = 10.0
SWITCH_KINDS: Final = frozenset({"on", "off"})
ACTIVITY_KINDS: Final = frozenset({"on", "off", "motion", "open", "close"})
SWITCHABLE: Final = frozenset({"bulb", "plug"})
#: Answer states, from the most to the least urgent (the board's order).
STATES: Final = ("needs_help", "no_answer", "unreachable", "sign_of_life", "safe")
#: What an answer state may become automatically (recognised answers never override a person's).
_RANK: Final = {"no_answer": 0, "sign_of_life": 1, "safe": 2}


@dataclass(frozen=True, slots=True)
class Ev:
    """One stored event: device time (epoch s), the device, its kind."""

    time: float
    device_id: str
    kind: str
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    state: str                    # 'no_answer' | 'sign_of_life' | 'safe'
    at: float | None = None       # when it became so (the second switch, or the first activity)
    device_id: str | None = None  # the bulb that was double-toggled
    last_activity: float | None = None


def find_double_toggle(events: Iterable[Ev], *, since: float, switchable: frozenset[str] | set[str] | None = None,
                       window_s: float = DOUBLE_TOGGLE_WINDOW_S) -> tuple[float, str] | None:
    """(time of the completing switch, device) of the earliest double toggle at or after ``since``.

    ``switchable``: ids of the household's bulbs/plugs (None: any device that sent on/off).
    Events of one device are taken in (time, seq) order; a repeated same-kind switch (on, on) is
    not a change and restarts nothing.
    """
    per_device: dict[str, list[Ev]] = {}
    for e in events:
        if e.kind in SWITCH_KINDS and e.time >= since and (switchable is None or e.device_id in switchable):
            per_device.setdefault(e.device_id, []).append(e)
    best: tuple[float, str] | None = None
    for device, evs in per_device.items():
        evs.sort(key=lambda e: (e.time, e.seq))
        for a, b in pairwise(evs):
            if a.kind != b.kind and b.time - a.time <= window_s:
                if best is None or b.time < best[0]:
                    best = (b.time, device)
                break
    return best


def recognise(events: Iterable[Ev], *, since: float, switchable: frozenset[str] | set[str] | None = None,
              window_s: float = DOUBLE_TOGGLE_WINDOW_S) -> Verdict:
    """What the household's events since ``since`` say: safe (double toggle), sign of life, or nothing."""
    evs = [e for e in events if e.kind in ACTIVITY_KINDS and e.time >= since]
    if not evs:
        return Verdict("no_answer")
    last = max(e.time for e in evs)
    toggle = find_double_toggle(evs, since=since, switchable=switchable, window_s=window_s)
    if toggle is not None:
        return Verdict("safe", toggle[0], toggle[1], last)
    return Verdict("sign_of_life", min(e.time for e in evs), None, last)


def upgrades(current_state: str, current_how: str | None, new_state: str) -> bool:
    """Whether a recognised state replaces the stored one: only upwards (no_answer → sign of life →
    safe), and never over an answer a person gave (link, app, on behalf), e.g. "needs help".
    """
    if current_how in ("link", "app", "on_behalf"):
        return False
    return _RANK.get(new_state, -1) > _RANK.get(current_state, 99)


def effective_state(state: str, gateways_total: int, gateways_offline: int) -> str:
    """The board's state: a home that has not answered and whose every gateway is offline is
    'unreachable' (power cut, network), not 'no answer'.
    """
    if state == "no_answer" and gateways_total > 0 and gateways_offline == gateways_total:
        return "unreachable"
    return state


def risk_key(state: str, lives_alone: bool, last_activity: float | None, name: str) -> tuple[int, bool, bool, float, str]:
    """Sort key, most at risk first: needs help, no answer, unreachable, sign of life, safe; then
    living alone; then no activity since the check (oldest activity first); then by name.
    """
    return (STATES.index(state) if state in STATES else len(STATES), not lives_alone,
            last_activity is not None, last_activity or 0.0, name)
