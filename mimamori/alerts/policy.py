"""The escalation policy: a pure core, no I/O.

A chain is a list of steps (JSON objects, stored per household and snapshotted onto each incident).
Each step type is a small function ``(state, step, ctx, now) -> StepResult`` in ``STEP_FUNCTIONS``
(the Grafana OnCall shape). ``advance`` runs steps from the current position until one has to wait
(or the chain ends) and returns the actions the caller must carry out, the new state, and when to
come back (``next_step_at``). The caller stores the state and the actions' outbox rows in one
transaction, so a crash replays a step at most as a no-op (deliveries are unique per step key).

Step types:
- ``{"type": "notify", "tiers": [1]}`` / ``{"people": ["p1"]}`` / ``{"coordinator": true}``: alert them.
- ``{"type": "wait", "minutes": 15}``.
- ``{"type": "notify_next", "tiers": [1, 2]}``: alert the next one of them in turn (round-robin).
- ``{"type": "resident_check", "minutes": 5, "blinks": 3, "ask": true}``: ask the resident first. The
  home's bulbs blink, and (``ask``, the default) the resident gets a message on their own channels
  with a one-tap link: "I'm fine" / "I'm out until ..." / "Please help". A switch toggled, or "fine"
  or "out" answered, within ``minutes`` cancels the incident before the team hears of it; "help"
  ends the check at once and the chain goes on to the team. It runs in the first round only: a
  ``repeat`` goes back to the team, not to the resident.
- ``{"type": "repeat", "times": 2}``: go back to the first step, at most ``times`` times.

One option, written as a step that does nothing when reached (so it lives in the snapshotted chain):
- ``{"type": "claim_timeout", "minutes": 90, "grace_minutes": 30}``: a claim that is not resolved
  ``minutes`` after it was made reminds the claimer; ``grace_minutes`` later, still unresolved, the
  incident is reopened to the team and the escalation resumes where it paused. Without the step the
  defaults below apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo

from mimamori.kernel import errors

#: Notify tier 1, wait, tier 2, wait, the area coordinator, wait, and start again (twice at most).
DEFAULT_CHAIN: tuple[dict[str, Any], ...] = (
    {"type": "notify", "tiers": [1]},
    {"type": "wait", "minutes": 15},
    {"type": "notify", "tiers": [2]},
    {"type": "wait", "minutes": 15},
    {"type": "notify", "coordinator": True},
    {"type": "wait", "minutes": 30},
    {"type": "repeat", "times": 2},
)

#: The default for a household whose resident has a channel of their own (mail, LINE, push ...): ask
#: them first for 10 minutes (bulbs blink, a message with an answer link), then the default chain. A
#: resident who is fine or out says so and the team is never bothered; one who cannot answer costs
#: the team 10 minutes.
RESIDENT_FIRST_CHAIN: tuple[dict[str, Any], ...] = ({"type": "resident_check", "minutes": 10, "blinks": 3}, *DEFAULT_CHAIN)

#: Technical incidents (device offline, area outage) go to the coordinator only, never the team.
#: Not urgent: the coordinator's quiet hours apply.
TECHNICAL_CHAIN: tuple[dict[str, Any], ...] = ({"type": "notify", "coordinator": True, "urgent": False},)

#: A claim unresolved this long reminds the claimer; this much later again it is reopened to the team.
DEFAULT_CLAIM_TIMEOUT_MINUTES = 90.0
DEFAULT_CLAIM_GRACE_MINUTES = 30.0
#: While an area outage pauses a welfare escalation, how often to look again (a trigger also wakes it).
OUTAGE_RECHECK_S = 300.0

#: How often a resident check looks for the resident's response while it waits.
RESIDENT_CHECK_POLL_S = 30.0
MAX_WAIT_MINUTES = 7 * 24 * 60
MAX_STEPS = 50


class ChainError(errors.InvalidInput, ValueError):
    """A chain a coordinator submitted is not valid."""


@dataclass(frozen=True)
class Team:
    """Who an incident's chain can reach: the household's watchers by tier, the area coordinators
    (or operators when the area has none), and for a resident check the bulbs it blinks and the
    residents it asks.
    """

    members: tuple[tuple[str, int], ...] = ()  # (person_id, tier), ordered by tier then id
    coordinators: tuple[str, ...] = ()
    bulbs: tuple[tuple[str, str], ...] = ()  # (gateway_id, device_id)
    residents: tuple[str, ...] = ()

    def in_tiers(self, tiers: Sequence[int]) -> tuple[str, ...]:
        wanted = set(tiers)
        return tuple(p for p, tier in self.members if tier in wanted)


@dataclass(frozen=True)
class Context:
    team: Team
    #: Time of the household's newest resident activity (device time), for resident checks.
    last_activity_at: float | None = None
    #: When a resident last answered a resident check's message with "please help".
    help_asked_at: float | None = None


@dataclass(frozen=True)
class State:
    step: int = 0
    round: int = 0  # how many times `repeat` has gone back
    rr: int = 0  # round-robin position of notify_next
    notified: tuple[str, ...] = ()  # everyone alerted so far, in order
    wait_until: float | None = None  # a wait or resident check in progress
    check_since: float | None = None  # when the current resident check blinked
    done: bool = False
    claim_reminded_at: float | None = None  # the current claim's claimer was reminded then
    paused_for: str | None = None  # e.g. "area_outage:<incident id>" while an outage pauses it

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step, "round": self.round, "rr": self.rr, "notified": list(self.notified),
            "wait_until": self.wait_until, "check_since": self.check_since, "done": self.done,
            "claim_reminded_at": self.claim_reminded_at, "paused_for": self.paused_for,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> State:
        if not obj:
            return cls()
        return cls(
            step=int(obj.get("step", 0)), round=int(obj.get("round", 0)), rr=int(obj.get("rr", 0)),
            notified=tuple(obj.get("notified", ())), wait_until=obj.get("wait_until"),
            check_since=obj.get("check_since"), done=bool(obj.get("done", False)),
            claim_reminded_at=obj.get("claim_reminded_at"), paused_for=obj.get("paused_for"),
        )

    @property
    def step_key(self) -> str:
        return f"r{self.round}.s{self.step}"


# --- actions the caller carries out -----------------------------------------------------------


@dataclass(frozen=True)
class Notify:
    people: tuple[str, ...]
    step_key: str
    notice: str = "alert"
    urgent: bool = True


@dataclass(frozen=True)
class Blink:
    bulbs: tuple[tuple[str, str], ...]
    step_key: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AskResident:
    """Send the residents a message with their own answer link (fine / out until / help)."""

    people: tuple[str, ...]
    step_key: str
    minutes: float


@dataclass(frozen=True)
class Cancel:
    outcome: str  # resident_responded
    note: str


@dataclass(frozen=True)
class Log:
    """A timeline entry for something the engine did or noticed (the audit trail)."""

    action: str
    data: dict[str, Any] = field(default_factory=dict)


Action = Notify | Blink | AskResident | Cancel | Log


@dataclass(frozen=True)
class StepResult:
    actions: tuple[Action, ...]
    state: State
    wait_until: float | None = None  # set: stop here and come back then


@dataclass(frozen=True)
class Advance:
    actions: tuple[Action, ...]
    state: State
    next_step_at: float | None  # None: nothing more to do (done)


# --- the step functions -----------------------------------------------------------------------


def _targets(step: Mapping[str, Any], team: Team) -> tuple[str, ...]:
    people: list[str] = []
    if step.get("tiers"):
        people += team.in_tiers(step["tiers"])
    people += list(step.get("people", ()))
    if step.get("coordinator"):
        people += team.coordinators
    return tuple(dict.fromkeys(people))  # de-duplicated, order kept


def _next(state: State, **changes: Any) -> State:
    return replace(state, step=state.step + 1, wait_until=None, check_since=None, **changes)


def _notify(state: State, step: Mapping[str, Any], ctx: Context, now: float) -> StepResult:
    people = _targets(step, ctx.team)
    if not people:
        return StepResult((Log("nobody_to_notify", {"step": state.step, "spec": dict(step)}),), _next(state))
    urgent = bool(step.get("urgent", True))
    notified = tuple(dict.fromkeys((*state.notified, *people)))
    return StepResult((Notify(people, state.step_key, "alert", urgent),), _next(state, notified=notified))


def _notify_next(state: State, step: Mapping[str, Any], ctx: Context, now: float) -> StepResult:
    people = _targets(step, ctx.team)
    if not people:
        return StepResult((Log("nobody_to_notify", {"step": state.step, "spec": dict(step)}),), _next(state))
    person = people[state.rr % len(people)]
    notified = tuple(dict.fromkeys((*state.notified, person)))
    return StepResult((Notify((person,), state.step_key, "alert", True),), _next(state, rr=state.rr + 1, notified=notified))


def _wait(state: State, step: Mapping[str, Any], ctx: Context, now: float) -> StepResult:
    if state.wait_until is None:
        until = now + float(step["minutes"]) * 60.0
        return StepResult((), replace(state, wait_until=until), until)
    if now < state.wait_until:  # woken early: keep waiting
        return StepResult((), state, state.wait_until)
    return StepResult((), _next(state))


def _resident_check(state: State, step: Mapping[str, Any], ctx: Context, now: float) -> StepResult:
    if state.round > 0 and state.check_since is None:
        return StepResult((), _next(state))  # the team knows by now: a repeat does not wait for the resident again
    if state.check_since is None:
        minutes = float(step["minutes"])
        until = now + minutes * 60.0
        actions: list[Action] = []
        if ctx.team.bulbs:
            args = {"times": int(step.get("blinks", 3)), "reason": "resident_check"}
            actions.append(Blink(ctx.team.bulbs, state.step_key, args))
        if step.get("ask", True) and ctx.team.residents:
            actions.append(AskResident(ctx.team.residents, state.step_key, minutes))
        if not actions:
            reason = "no bulb" if not step.get("ask", True) else "no bulb and no resident to ask"
            return StepResult((Log("resident_check_skipped", {"reason": reason}),), _next(state))
        new = replace(state, check_since=now, wait_until=until)
        return StepResult(tuple(actions), new, min(until, now + RESIDENT_CHECK_POLL_S))
    if ctx.help_asked_at is not None and ctx.help_asked_at >= state.check_since:
        # the resident asked for help: the team hears of it now, not when the check would have ended
        # (before the switch: someone who fell may reach a switch and still need help)
        return StepResult((Log("resident_asked_for_help", {"since": state.check_since}),), _next(state))
    if ctx.last_activity_at is not None and ctx.last_activity_at > state.check_since:
        note = "resident responded to the blink"
        return StepResult((Cancel("resident_responded", note),), replace(_next(state), done=True))
    if state.wait_until is None:  # set by the step that began the check
        raise ValueError("a resident check in progress without its deadline")
    if now >= state.wait_until:
        return StepResult((Log("resident_did_not_respond", {"since": state.check_since}),), _next(state))
    return StepResult((), state, min(state.wait_until, now + RESIDENT_CHECK_POLL_S))


def _repeat(state: State, step: Mapping[str, Any], ctx: Context, now: float) -> StepResult:
    if state.round < int(step["times"]):
        return StepResult((Log("repeat", {"round": state.round + 1}),), replace(state, step=0, round=state.round + 1))
    return StepResult((), _next(state))


def _option(state: State, step: Mapping[str, Any], ctx: Context, now: float) -> StepResult:
    return StepResult((), _next(state))  # an option read elsewhere (claim_timeout): nothing to do here


StepFunction = Callable[[State, Mapping[str, Any], Context, float], StepResult]

STEP_FUNCTIONS: dict[str, StepFunction] = {
    "notify": _notify,
    "notify_next": _notify_next,
    "wait": _wait,
    "resident_check": _resident_check,
    "repeat": _repeat,
    "claim_timeout": _option,
}


def claim_timeout(chain: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """(seconds after a claim to remind the claimer, seconds after the reminder to reopen)."""
    for step in chain:
        if step.get("type") == "claim_timeout":
            return float(step["minutes"]) * 60.0, float(step.get("grace_minutes", DEFAULT_CLAIM_GRACE_MINUTES)) * 60.0
    return DEFAULT_CLAIM_TIMEOUT_MINUTES * 60.0, DEFAULT_CLAIM_GRACE_MINUTES * 60.0


def claim_due(chain: Sequence[Mapping[str, Any]], claimed_at: float, reminded_at: float | None,
              now: float) -> tuple[str | None, float]:
    """What an unresolved claim needs now: ("remind" | "reopen" | None, when to look next)."""
    remind_s, grace_s = claim_timeout(chain)
    if reminded_at is None:
        at = claimed_at + remind_s
        return ("remind", now + grace_s) if now >= at else (None, at)
    at = reminded_at + grace_s
    return ("reopen", now) if now >= at else (None, at)


def advance(chain: Sequence[Mapping[str, Any]], state: State, ctx: Context, now: float) -> Advance:
    """Run the chain from ``state`` until a step waits or the chain ends."""
    actions: list[Action] = []
    for _ in range(MAX_STEPS * 10):  # repeat is bounded by `times`; this only guards against bugs
        if state.done:
            return Advance(tuple(actions), state, None)
        if state.step >= len(chain):
            actions.append(Log("escalation_finished", {"round": state.round}))
            return Advance(tuple(actions), replace(state, done=True, wait_until=None), None)
        step = chain[state.step]
        result = STEP_FUNCTIONS[step["type"]](state, step, ctx, now)
        actions += result.actions
        state = result.state
        if result.wait_until is not None:
            return Advance(tuple(actions), state, result.wait_until)
    raise RuntimeError("escalation chain did not settle")  # pragma: no cover


# --- validation -------------------------------------------------------------------------------


def _int_list(value: Any, what: str, lo: int, hi: int) -> list[int]:
    if not isinstance(value, list) or not value or not all(type(v) is int and lo <= v <= hi for v in value):
        raise ChainError(f"{what} must be a non-empty list of integers {lo}..{hi}")
    return value


def _number(step: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    value = step.get(key)
    # bool is an int subclass: type() (not isinstance) keeps true/false out
    if not (type(value) in (int, float) and isinstance(value, (int, float)) and lo <= value <= hi):
        raise ChainError(f"{step.get('type')}: {key} must be a number {lo}..{hi}")
    return float(value)


def validate_chain(steps: Any) -> list[dict[str, Any]]:
    """Check a chain a coordinator submitted; return it normalised (unknown keys dropped)."""
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
        raise ChainError(f"a chain is a list of 1..{MAX_STEPS} steps")
    out: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or step.get("type") not in STEP_FUNCTIONS:
            raise ChainError(f"step {i}: type must be one of {sorted(STEP_FUNCTIONS)}")
        kind = step["type"]
        clean: dict[str, Any] = {"type": kind}
        if kind in ("notify", "notify_next"):
            if "tiers" in step:
                clean["tiers"] = _int_list(step["tiers"], f"step {i}: tiers", 1, 9)
            if "people" in step:
                people = step["people"]
                if not isinstance(people, list) or not all(isinstance(p, str) and p for p in people):
                    raise ChainError(f"step {i}: people must be a list of person ids")
                clean["people"] = people
            if step.get("coordinator"):
                clean["coordinator"] = True
            if not any(k in clean for k in ("tiers", "people", "coordinator")):
                raise ChainError(f"step {i}: {kind} needs tiers, people or coordinator")
            if kind == "notify" and "urgent" in step:
                clean["urgent"] = bool(step["urgent"])
        elif kind == "wait":
            clean["minutes"] = _number(step, "minutes", 0, MAX_WAIT_MINUTES)
        elif kind == "resident_check":
            clean["minutes"] = _number(step, "minutes", 0.5, 24 * 60)
            clean["blinks"] = int(_number({"type": kind, "blinks": step.get("blinks", 3)}, "blinks", 1, 20))
            if "ask" in step:
                if not isinstance(step["ask"], bool):
                    raise ChainError(f"step {i}: resident_check ask must be true or false")
                clean["ask"] = step["ask"]
        elif kind == "claim_timeout":
            if any(o.get("type") == "claim_timeout" for o in out):
                raise ChainError(f"step {i}: only one claim_timeout")
            clean["minutes"] = _number(step, "minutes", 1, MAX_WAIT_MINUTES)
            clean["grace_minutes"] = _number({"type": kind, "grace_minutes": step.get("grace_minutes", DEFAULT_CLAIM_GRACE_MINUTES)},
                                             "grace_minutes", 0, 24 * 60)
        elif kind == "repeat":
            times = step.get("times")
            if type(times) is not int or not 1 <= times <= 10:
                raise ChainError(f"step {i}: repeat times must be 1..10")
            if not any(s.get("type") in ("wait", "resident_check") for s in out):
                raise ChainError(f"step {i}: repeat needs a wait before it (or it would alert in a burst)")
            clean["times"] = times
        out.append(clean)
    return out


# --- quiet hours ------------------------------------------------------------------------------


def quiet_hours_end(now: float, start: dt_time | None, end: dt_time | None, tz: str) -> float | None:
    """If ``now`` falls in a person's quiet hours, when they end (epoch s); else None.

    Quiet hours hold back non-urgent notices only; the caller never applies them to welfare alerts.
    """
    if start is None or end is None or start == end:
        return None
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now, zone)
    t = local.time().replace(tzinfo=None)
    if start < end:
        if not start <= t < end:
            return None
        ends = datetime.combine(local.date(), end, zone)
    elif start <= t:  # spans midnight, e.g. 22:00-07:00: in its evening part
        ends = datetime.combine(local.date() + timedelta(days=1), end, zone)
    elif t < end:  # ... or in its morning part
        ends = datetime.combine(local.date(), end, zone)
    else:
        return None
    return ends.timestamp()


# --- retries ----------------------------------------------------------------------------------

#: Delays before the 2nd, 3rd ... attempt of a failed send; after the last one the send has failed.
RETRY_DELAYS_S: tuple[float, ...] = (10.0, 30.0, 60.0, 300.0, 900.0)


def retry_delay(attempts: int) -> float | None:
    """Seconds to wait after ``attempts`` failed attempts, or None: give up."""
    if attempts < 1 or attempts > len(RETRY_DELAYS_S):
        return None
    return RETRY_DELAYS_S[attempts - 1]


def valid_timezone(name: Any) -> bool:
    if not isinstance(name, str) or not name or len(name) > 64:
        return False
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True
