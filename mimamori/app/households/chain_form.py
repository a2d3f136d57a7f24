"""The escalation-chain editor's form, as pure functions (no I/O): posted fields <-> rows <-> steps.

A *row* is one step as the form shows it: the kind and the raw text of its fields, so an invalid
post re-renders exactly as typed. ``parse_chain_form`` turns the posted fields into the engine's
step dicts plus per-step errors; the engine's own validation (``alerts.policy.validate_chain``, the
same one ``incidents.set_chain`` runs) is applied step by step, so an error always names its step.
Field names: ``step-<i>-type``, ``step-<i>-tiers`` / ``-people`` (repeated), ``-coordinator``, ``-urgent``, ``-ask``,
and numbers per kind, ``step-<i>-<kind>-<field>`` (``step-2-wait-minutes``); the edit
buttons post ``op`` = ``add`` | ``up-<i>`` | ``down-<i>`` | ``remove-<i>`` | ``save``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mimamori.alerts import policy

#: The engine's step kinds, in the order the form offers them.
STEP_KINDS: tuple[str, ...] = ("notify", "wait", "notify_next", "resident_check", "repeat", "claim_timeout")
if set(STEP_KINDS) != set(policy.STEP_FUNCTIONS):  # checked at import: the editor must offer every kind the engine runs
    raise ImportError("a new step kind needs a place in the chain editor (mimamori/app/households/chain_form.py)")

#: (min, max, step) of each number field, per kind: the engine's bounds (alerts.policy.validate_chain).
NUMBER_FIELDS: dict[str, dict[str, tuple[float, float, float]]] = {
    "wait": {"minutes": (0, policy.MAX_WAIT_MINUTES, 1)},
    "resident_check": {"minutes": (0.5, 24 * 60, 0.5), "blinks": (1, 20, 1)},
    "repeat": {"times": (1, 10, 1)},
    "claim_timeout": {"minutes": (1, policy.MAX_WAIT_MINUTES, 1), "grace_minutes": (0, 24 * 60, 1)},
}
#: Fields the engine requires to be whole numbers.
INTEGER_FIELDS = {("resident_check", "blinks"), ("repeat", "times")}
#: What a newly added step starts with (the engine's defaults where it has them).
NEW_STEP_DEFAULTS: dict[str, dict[str, Any]] = {
    "notify": {"tiers": ["1"]},
    "notify_next": {"tiers": ["1"]},
    "wait": {"minutes": "15"},
    "resident_check": {"minutes": "5", "blinks": "3"},
    "repeat": {"times": "2"},
    "claim_timeout": {"minutes": str(int(policy.DEFAULT_CLAIM_TIMEOUT_MINUTES)),
                      "grace_minutes": str(int(policy.DEFAULT_CLAIM_GRACE_MINUTES))},
}
TIERS = range(1, 10)
_STEP_FIELD = re.compile(r"^step-(\d{1,3})-type$")


@dataclass
class StepError:
    """One problem with one step (``index`` from 0; the page says 手順 index+1)."""

    index: int | None
    key: str  # an app.i18n message key
    values: dict[str, Any] = field(default_factory=dict)


def blank_row(kind: str) -> dict[str, Any]:
    row: dict[str, Any] = {"type": kind, "tiers": [], "people": [], "coordinator": False, "urgent": True, "ask": True,
                           "minutes": "", "blinks": "", "grace_minutes": "", "times": ""}
    row.update({k: (list(v) if isinstance(v, list) else v) for k, v in NEW_STEP_DEFAULTS.get(kind, {}).items()})
    return row


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def rows_from_steps(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A stored chain as form rows."""
    rows = []
    for step in steps:
        row = blank_row(str(step.get("type", "")))
        row.update({"tiers": [str(t) for t in step.get("tiers") or []], "people": [str(p) for p in step.get("people") or []],
                    "coordinator": bool(step.get("coordinator")), "urgent": bool(step.get("urgent", True)),
                    "ask": bool(step.get("ask", True))})
        for key in ("minutes", "blinks", "grace_minutes", "times"):
            row[key] = _text(step.get(key, row[key]))
        rows.append(row)
    return rows


def _get(fields: Mapping[str, Any], key: str) -> list[str]:
    """All values of a field: a starlette FormData / multidict, or a plain dict of str / list."""
    if hasattr(fields, "getlist"):
        return [str(v) for v in fields.getlist(key)]
    value = fields.get(key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def rows_from_form(fields: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The posted form as rows, in their order on the page; nothing is checked here."""
    indexes = sorted({int(m.group(1)) for key in fields if (m := _STEP_FIELD.match(key))})
    rows = []
    for i in indexes:
        kind = (_get(fields, f"step-{i}-type") or [""])[0].strip()
        row = blank_row(kind)
        row.update({
            "tiers": [v for v in _get(fields, f"step-{i}-tiers") if v],
            "people": [v for v in _get(fields, f"step-{i}-people") if v],
            "coordinator": bool(_get(fields, f"step-{i}-coordinator")),
            # the urgent box is a checkbox: present = urgent; the hidden marker tells "unticked" from "absent"
            "urgent": bool(_get(fields, f"step-{i}-urgent")) or not _get(fields, f"step-{i}-urgent-shown"),
            "ask": bool(_get(fields, f"step-{i}-ask")) or not _get(fields, f"step-{i}-ask-shown"),
        })
        # number fields are named per kind (step-<i>-<kind>-<field>): their bounds differ
        for key in NUMBER_FIELDS.get(kind, {}):
            row[key] = (_get(fields, f"step-{i}-{kind}-{key}") or [""])[0].strip()
        rows.append(row)
    return rows


def apply_edit(rows: list[dict[str, Any]], op: str, new_kind: str = "wait") -> list[dict[str, Any]]:
    """Add / move / remove a row (the form's edit buttons); an unknown op changes nothing."""
    rows = list(rows)
    if op == "add":
        rows.append(blank_row(new_kind if new_kind in STEP_KINDS else "wait"))
        return rows
    m = re.fullmatch(r"(up|down|remove)-(\d{1,3})", op)
    if not m or not 0 <= int(m.group(2)) < len(rows):
        return rows
    i = int(m.group(2))
    if m.group(1) == "remove":
        del rows[i]
    elif m.group(1) == "up" and i > 0:
        rows[i - 1], rows[i] = rows[i], rows[i - 1]
    elif m.group(1) == "down" and i + 1 < len(rows):
        rows[i + 1], rows[i] = rows[i], rows[i + 1]
    return rows


def _number(text: str, lo: float, hi: float, integer: bool) -> int | float | None:
    try:
        value = float(text.replace("，", ".").replace(",", "."))
    except ValueError:
        return None
    if not math.isfinite(value) or not lo <= value <= hi or (integer and not value.is_integer()):
        return None
    return int(value) if value.is_integer() else value


def step_from_row(i: int, row: Mapping[str, Any]) -> tuple[dict[str, Any] | None, StepError | None]:
    """One row as the engine's step dict, or the reason it is not one."""
    kind = row.get("type")
    if kind not in STEP_KINDS:
        return None, StepError(i, "chain_err_kind")
    step: dict[str, Any] = {"type": kind}
    if kind in ("notify", "notify_next"):
        tiers = []
        for t in row.get("tiers") or []:
            if not (t.isdigit() and int(t) in TIERS):
                return None, StepError(i, "chain_err_tier")
            tiers.append(int(t))
        if tiers:
            step["tiers"] = sorted(set(tiers))
        if row.get("people"):
            step["people"] = list(dict.fromkeys(row["people"]))
        if row.get("coordinator"):
            step["coordinator"] = True
        if len(step) == 1:
            return None, StepError(i, "chain_err_who")
        if kind == "notify" and not row.get("urgent", True):
            step["urgent"] = False
        return step, None
    for key, (lo, hi, _) in NUMBER_FIELDS[kind].items():
        value = _number(str(row.get(key) or ""), lo, hi, (kind, key) in INTEGER_FIELDS)
        if value is None:
            return None, StepError(i, f"chain_err_{key}", {"lo": _text(float(lo)), "hi": _text(float(hi))})
        step[key] = value
    if kind == "resident_check" and not row.get("ask", True):
        step["ask"] = False
    return step, None


def parse_chain_form(fields: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[StepError]]:
    """The posted editor as the engine's steps, and every problem found (empty: valid, save it)."""
    return steps_from_rows(rows_from_form(fields))


def steps_from_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[StepError]]:
    steps: list[dict[str, Any]] = []
    errors: list[StepError] = []
    if not 1 <= len(rows) <= policy.MAX_STEPS:
        errors.append(StepError(None, "chain_err_count", {"max": policy.MAX_STEPS}))
    for i, row in enumerate(rows):
        step, error = step_from_row(i, row)
        if error:
            errors.append(error)
        elif step is not None:
            steps.append(step)
    if errors:
        return steps, errors
    # The engine's rules between steps (one claim_timeout, a wait before repeat ...): the first prefix
    # it refuses ends at the offending step.
    for i in range(len(steps)):
        try:
            policy.validate_chain(steps[: i + 1])
        except policy.ChainError as exc:
            return steps, [StepError(i, _engine_key(steps[i]), {"reason": str(exc)})]
    return steps, []


def _engine_key(step: Mapping[str, Any]) -> str:
    if step.get("type") == "repeat":
        return "chain_err_repeat_needs_wait"
    if step.get("type") == "claim_timeout":
        return "chain_err_one_claim_timeout"
    return "chain_err_engine"
