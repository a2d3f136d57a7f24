"""Incidents as watchers and coordinators see them, and their actions.

Reading joins ``incidents`` with names for the pages (who may see which: ``mimamori.kernel.access``). Actions
(claim, resolve, comment) and escalation chains go through ``alerts.service``, the escalation engine's
API, which asks the same rule; its errors are kinds of ``mimamori.kernel.errors``, answered by the app's one
handler.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import psycopg

from mimamori.alerts import service as alerts_service
from mimamori.app.households.service import log_view
from mimamori.app.incidents.timeline import visible_names
from mimamori.app.people import Person
from mimamori.kernel.access import incident_sql
from mimamori.kernel.clock import Clock
from mimamori.kernel.errors import InvalidInput, NotFound

OUTCOMES = ("fine", "needed_help", "emergency_services", "away", "device_problem", "false_alarm")
_COLUMNS = ("incident_id", "household_id", "household_name", "area", "kind", "status", "opened_at", "updated_at",
            "claimed_at", "claimed_by", "claimed_by_name", "closed_at", "closed_by", "outcome", "outcome_note",
            "rule", "score", "evidence")
_SELECT = """
SELECT i.incident_id, i.household_id, h.display_name, COALESCE(i.area, h.area), i.kind, i.status, i.opened_at,
       i.updated_at, i.claimed_at, i.claimed_by, cp.display_name, i.closed_at, i.closed_by, i.outcome,
       i.outcome_note, i.rule, i.score, i.evidence
FROM incidents i
LEFT JOIN households h ON h.household_id = i.household_id
LEFT JOIN people cp ON cp.person_id = i.claimed_by
"""


def list_incidents(conn: psycopg.Connection, person: Person, *, active_only: bool = True,
                   limit: int = 100) -> list[dict[str, Any]]:
    where, params = incident_sql(person)
    status = "AND i.status IN ('open', 'claimed')" if active_only else ""
    rows = conn.execute(
        f"{_SELECT} WHERE {where} {status} ORDER BY i.opened_at DESC LIMIT %(limit)s", {**params, "limit": limit}
    ).fetchall()
    return [_with_href(dict(zip(_COLUMNS, r, strict=True))) for r in rows]


def _with_href(incident: dict[str, Any]) -> dict[str, Any]:
    """Where the incident is acted on: a safety check's follow-up on the check's household page."""
    incident["href"] = f"/alerts/{incident['incident_id']}"
    check_id = (incident.get("evidence") or {}).get("safety_check_id") if incident["kind"] == "safety_check" else None
    incident["safety_href"] = (f"/safety/{int(check_id)}/h/{incident['household_id']}"
                               if isinstance(check_id, int) and incident["household_id"] else None)
    if incident["safety_href"]:
        incident["href"] = incident["safety_href"]
    return incident


def get_incident(conn: psycopg.Connection, clock: Clock, person: Person, incident_id: int) -> dict[str, Any]:
    where, params = incident_sql(person)
    row = conn.execute(f"{_SELECT} WHERE i.incident_id = %(iid)s AND {where}", {**params, "iid": incident_id}).fetchone()
    if row is None:
        raise NotFound("incident not found")
    incident = _with_href(dict(zip(_COLUMNS, row, strict=True)))
    incident["timeline"] = timeline(conn, incident_id)
    incident["names"] = visible_names(conn, person, incident["household_id"], incident["area"],
                                      incident["timeline"])
    incident["devices"] = _evidence_devices(conn, incident)
    if incident["household_id"]:
        log_view(conn, clock, person, incident["household_id"], "incident")
    return incident


def _evidence_devices(conn: psycopg.Connection, incident: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Room and kind of the devices the detector's evidence names (of this incident's household only)."""
    ev = incident.get("evidence") or {}
    ids = [str(d) for d in ([ev["device"]] if ev.get("device") else []) + list(ev.get("devices") or [])]
    if not ids or not incident.get("household_id"):
        return {}
    rows = conn.execute("SELECT device_id, room, kind FROM devices WHERE household_id = %s AND device_id = ANY(%s)",
                        (incident["household_id"], ids)).fetchall()
    return {d: {"room": room, "kind": kind} for d, room, kind in rows}


def timeline(conn: psycopg.Connection, incident_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT t.at, t.actor, p.display_name, t.action, t.channel, t.body, t.data FROM incident_timeline t"
        " LEFT JOIN people p ON p.person_id = t.actor WHERE t.incident_id = %s ORDER BY t.at, t.entry_id",
        (incident_id,),
    ).fetchall()
    return [dict(zip(("at", "actor", "actor_name", "action", "channel", "body", "data"), r, strict=True)) for r in rows]


def claim(conn: psycopg.Connection, clock: Clock, person: Person, incident_id: int, *, channel: str = "app") -> None:
    """"I'll go"."""
    alerts_service.claim(conn, person, incident_id, clock=clock, channel=channel)


def resolve(conn: psycopg.Connection, clock: Clock, person: Person, incident_id: int, *, outcome: str,
            note: str | None = None, channel: str = "app") -> None:
    """"All fine" / "Needs help" (and the other outcomes)."""
    if outcome not in OUTCOMES or outcome == "away":  # 'away' needs a date: the household page sets away periods
        raise InvalidInput("unknown outcome")
    alerts_service.resolve(conn, person, incident_id, outcome, note or "", clock=clock, channel=channel)


def comment(conn: psycopg.Connection, clock: Clock, person: Person, incident_id: int, body: str, *,
            channel: str = "app") -> None:
    alerts_service.comment(conn, person, incident_id, body, clock=clock, channel=channel)


def get_chain(conn: psycopg.Connection, person: Person, household_id: str) -> tuple[list[dict[str, Any]], str]:
    return alerts_service.get_chain(conn, person, household_id)


def set_chain(conn: psycopg.Connection, clock: Clock, person: Person, household_id: str, steps: Any) -> list[dict[str, Any]]:
    return alerts_service.set_chain(conn, person, household_id, steps, clock=clock)


def unread_notifications(conn: psycopg.Connection, person: Person, *, limit: int = 5) -> list[dict[str, Any]]:
    """The person's newest unread in-app notifications (written by the alerts engine), newest first."""
    items = alerts_service.list_notifications(conn, person, unread_only=True, limit=500)
    return [asdict(n) for n in reversed(items[-limit:])]


def mark_notifications_read(conn: psycopg.Connection, clock: Clock, person: Person,
                            ids: list[int] | None = None) -> int:
    if ids is None:
        ids = [n.notification_id for n in alerts_service.list_notifications(conn, person, unread_only=True, limit=1000)]
    return alerts_service.mark_read(conn, person, ids, clock=clock)
