"""Why the detector raised an incident, in words for the watcher who decides whether to go.

The detector stores its evidence with each incident (``mimamori/detector/service.py``: when the silence
began, when this home is usually active again, which rule fired, which light or devices). This turns
it into short sentences; a pure function of the incident row and the labels of its devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mimamori.app.formatting import fmt_dt
from mimamori.app.i18n import translate

# The detector's rules (``detector.model.RULES``) that get a sentence of their own.
RULE_TEXTS = {"model:routine": "why_rule_routine", "model:hard_cap": "why_rule_hard_cap",
              "model:population_prior": "why_rule_prior", "model:model": "why_rule_model",
              "model:not_back": "why_rule_not_back"}


def _parse(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _time(value: Any, locale: str) -> str | None:
    at = _parse(value)
    return fmt_dt(at, None, locale) if at is not None else None


def device_label(locale: str, device_id: str, devices: Mapping[str, Mapping[str, Any]]) -> str:
    """「リビングの電球」: the room and kind the coordinator paired it with, else the id."""
    info = devices.get(device_id) or {}
    kind = translate(locale, f"device_kind_{info.get('kind') or 'unknown'}")
    kind = kind if locale == "ja" else kind.lower()
    room = info.get("room")
    return translate(locale, "why_device_in_room", room=room, kind=kind) if room else f"{kind} ({device_id})"


def explain(locale: str, incident: Mapping[str, Any], devices: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Sentences saying why this incident was raised (empty when there is nothing to say)."""
    devices = devices or {}
    ev = incident.get("evidence") or {}
    kind = incident.get("kind")
    lines: list[str] = []
    since = _time(ev.get("silence_start"), locale)
    if kind == "inactivity":
        if since:
            lines.append(translate(locale, "why_silent_since", since=since))
        usual, alarm = _parse(ev.get("expected_activity_by")), _parse(ev.get("alarm_at"))
        # Only when "usually by then" came before the alarm: after nights away the learned
        # expectation can be later than the safety net that fired.
        if usual is not None and alarm is not None and usual <= alarm:
            lines.append(translate(locale, "why_usually_by", by=fmt_dt(usual, None, locale)))
        rule = RULE_TEXTS.get(str(incident.get("rule") or ""))
        if rule:
            lines.append(translate(locale, rule))
        if ev.get("asked_first"):
            lines.append(translate(locale, "why_asked_first"))
    elif kind == "long_on":
        on_since = _time(ev.get("on_since"), locale)
        if ev.get("device") and on_since:
            lines.append(translate(locale, "why_light_on_since", light=device_label(locale, str(ev["device"]), devices), since=on_since))
        if since:
            lines.append(translate(locale, "why_quiet_since", since=since))
    elif kind == "device_offline":
        if ev.get("gateway_offline"):
            lines.append(translate(locale, "why_gateway_offline"))
        names = [device_label(locale, str(d), devices) for d in ev.get("devices") or []]
        if names and not ev.get("gateway_offline"):
            lines.append(translate(locale, "why_devices_silent", devices="、".join(names) if locale == "ja" else ", ".join(names)))
    elif kind == "area_outage":
        lines.append(translate(locale, "why_area_outage"))
    return lines
