"""The team timeline in words: every action the alert engine and the safety check write to
``incident_timeline`` becomes a sentence in the reader's language (texts in ``app.i18n``), with the
display names of the people it concerns — only names the reader may see (``visible_names``).
Pure functions apart from ``visible_names``; an action without a text reads as a generic entry,
never as a raw code.

The engines' own bodies are English technical notes ("no channel besides the app"); only the
bodies people wrote (comments, resolve notes) are shown, the rest is said from ``data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg

from mimamori.app.formatting import fmt_until
from mimamori.app.i18n import MESSAGES, translate
from mimamori.kernel.access import Viewer, visible_people_sql

#: Actions whose body is what a person wrote (shown after the sentence).
PERSON_BODIES = frozenset({"comment", "resolved"})
#: Channels with a name of their own (``channel_<name>``); others read as "another channel".
CHANNELS = ("email", "line", "slack", "telegram", "ntfy", "webhook", "discord", "teams", "webpush", "mqtt", "app",
            "api", "inapp", "link")


def _ids_in(data: Mapping[str, Any]) -> list[str]:
    ids: list[str] = [data[key] for key in ("person_id", "claimed_by", "recipient") if isinstance(data.get(key), str)]
    if isinstance(data.get("people"), list):
        ids.extend(p for p in data["people"] if isinstance(p, str))
    return ids


def visible_names(conn: psycopg.Connection, viewer: Viewer, household_id: str | None, area: str | None,
                  entries: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Display names of the people the entries mention whom the reader may see (``mimamori.kernel.access``)."""
    wanted = sorted({pid for e in entries for pid in _ids_in(e.get("data") or {})})
    if not wanted:
        return {}
    where, params = visible_people_sql(viewer, household_id, area)
    rows = conn.execute(f"SELECT p.person_id, p.display_name FROM people p WHERE p.person_id = ANY(%(ids)s) AND {where}",
                        {**params, "ids": wanted}).fetchall()
    return {r[0]: r[1] for r in rows}


def _name(locale: str, names: Mapping[str, str], person_id: Any) -> str:
    if isinstance(person_id, str) and person_id in names:
        return _honorific(locale, names[person_id])
    return translate(locale, "tl_someone")


def _honorific(locale: str, name: str) -> str:
    return f"{name}さん" if locale == "ja" else name


def _people(locale: str, names: Mapping[str, str], ids: Any) -> str:
    ids = [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
    shown = [_honorific(locale, names[i]) for i in ids if i in names]
    hidden = len(ids) - len(shown)
    if not shown:
        return translate(locale, "tl_someone") if hidden <= 1 else translate(locale, "tl_n_people", n=hidden)
    if hidden:
        shown.append(translate(locale, "tl_others", n=hidden))
    sep = "、" if locale == "ja" else ", "
    return sep.join(shown)


def _channel(locale: str, channel: Any) -> str:
    key = f"channel_{channel}"
    return translate(locale, key) if channel in CHANNELS else translate(locale, "channel_other")


def _outcome(locale: str, outcome: Any) -> str:
    key = f"outcome_{outcome}"
    return translate(locale, key) if key in MESSAGES else translate(locale, "outcome_other")


def _until(locale: str, until: Any) -> str:
    if not isinstance(until, (int, float)):
        return ""
    return fmt_until(datetime.fromtimestamp(until, UTC), None, locale)


def action_key(entry: Mapping[str, Any]) -> str:
    """The message key of an entry (reason-specific where the engine records a reason)."""
    action = str(entry.get("action") or "")
    data = entry.get("data") or {}
    if action in ("escalation_resumed", "escalation_paused"):
        specific = f"tl_{action}_{data.get('reason')}"
        return specific if specific in MESSAGES else f"tl_{action}"
    if action == "resident_answered":
        specific = f"tl_resident_answered_{data.get('answer')}"
        return specific if specific in MESSAGES else "tl_unknown"
    if action == "unreachable":
        # The engine records a reason code; entries written before it had only the English note.
        reason = data.get("reason") or {"no channel besides the app": "no_channel", "every channel failed": "all_failed"}.get(
            str(entry.get("body") or ""))
        specific = f"tl_unreachable_{reason}"
        return specific if specific in MESSAGES else "tl_unreachable"
    key = f"tl_{action}"
    return key if key in MESSAGES else "tl_unknown"


def describe(locale: str, entry: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """One timeline entry as a sentence (without the actor, who is shown before it)."""
    data = entry.get("data") or {}
    values = {
        "person": _name(locale, names, data.get("person_id") or data.get("claimed_by") or data.get("recipient")),
        "people": _people(locale, names, data.get("people")),
        "channel": _channel(locale, entry.get("channel")),
        "outcome": _outcome(locale, data.get("outcome")),
        "round": data.get("round", ""),
        "until": _until(locale, data.get("until")),
    }
    key = action_key(entry)
    text = MESSAGES[key][1 if locale == "en" else 0]
    return text.format(**{k: v for k, v in values.items() if "{" + k + "}" in text})


def person_body(entry: Mapping[str, Any]) -> str | None:
    """The body to show after the sentence: only what a person wrote."""
    return entry.get("body") if entry.get("action") in PERSON_BODIES else None


def chain_step_text(locale: str, step: Mapping[str, Any]) -> str:
    """One step of an escalation chain in words (the chain editor shows the chain this way too)."""
    kind = str(step.get("type") or "")
    who: list[str] = []
    if step.get("tiers"):
        who.append(translate(locale, "step_who_tiers", tiers="・".join(str(t) for t in step["tiers"])))
    if step.get("people"):
        who.append(translate(locale, "step_who_people", n=len(step["people"])))
    if step.get("coordinator"):
        who.append(translate(locale, "step_who_coordinator"))
    values = {"who": ("、" if locale == "ja" else ", ").join(who) or translate(locale, "step_who_team"),
              "minutes": _num(step.get("minutes", 90 if kind == "claim_timeout" else "")),
              "grace": _num(step.get("grace_minutes", 30)), "blinks": _num(step.get("blinks", 3)),
              "times": _num(step.get("times", ""))}
    key = f"step_{kind}" + ("_blink_only" if kind == "resident_check" and step.get("ask") is False else "")
    if key not in MESSAGES:
        return translate(locale, "step_unknown", type=kind or "?")
    text = MESSAGES[key][1 if locale == "en" else 0]
    return text.format(**{k: v for k, v in values.items() if "{" + k + "}" in text})


def _num(value: Any) -> Any:
    """45.0 reads as 45."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
