"""The records every part of the alert engine writes (psycopg, plain functions, no HTTP): the incident
row with its household, the team timeline, the household's team and chain, and the notices, i.e. the
in-app notification rows and the outbox rows of the person's other channels, written in the caller's
transaction, so a step and what it tells commit together or not at all.

``alerts.service`` (the API the app calls) and ``alerts.engine`` (what the worker runs) build on these.
Times are the caller's clock (``clock.now()``), never the database's ``now()``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from mimamori.alerts import metrics, policy
from mimamori.alerts.channels import channel_kind_name
from mimamori.alerts.models import (
    WELFARE_KINDS,
    render_notice,
)
from mimamori.kernel import contract, outbox
from mimamori.kernel.clock import as_datetime
from mimamori.kernel.db import fetch_dict, fetch_dicts

log = logging.getLogger(__name__)

DELIVERIES_CHANNEL = contract.CHANNEL_ALERT_DELIVERIES
#: ``outbox.source`` of the alert engine's rows
SOURCE = "alert"
INCIDENTS_CHANNEL = contract.CHANNEL_INCIDENTS
NOTIFICATIONS_CHANNEL = contract.CHANNEL_NOTIFICATIONS


_rows = fetch_dicts
_one = fetch_dict


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None



_INCIDENT_SQL = """
SELECT i.*, h.display_name AS household_name, coalesce(h.area, i.area) AS eff_area,
       e.status AS escalation_status, e.next_step_at
FROM incidents i
LEFT JOIN households h ON h.household_id = i.household_id
LEFT JOIN alert_escalations e ON e.incident_id = i.incident_id
"""


def add_timeline(conn: psycopg.Connection, incident_id: int, at: float, actor: str | None, action: str, channel: str,
              body: str | None = None, data: dict[str, Any] | None = None) -> int:
    row = _one(conn, """INSERT INTO incident_timeline (incident_id, at, actor, action, channel, body, data)
                        VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING entry_id""",
               (incident_id, as_datetime(at), actor, action, channel, body, Jsonb(data or {})))
    if row is None:  # a row the same transaction just wrote or locked
        raise RuntimeError("row: expected a row, found none")
    return int(row["entry_id"])


def actor_name(conn: psycopg.Connection, person_id: str) -> str:
    row = _one(conn, "SELECT display_name FROM people WHERE person_id = %s", (person_id,))
    return row["display_name"] if row else person_id


def stop_escalation(conn: psycopg.Connection, incident_id: int, status: str, now: float) -> None:
    conn.execute("UPDATE alert_escalations SET status = %s, next_step_at = NULL, updated_at = %s WHERE incident_id = %s",
                 (status, as_datetime(now), incident_id))


def escalation_state(conn: psycopg.Connection, incident_id: int) -> policy.State:
    row = _one(conn, "SELECT state FROM alert_escalations WHERE incident_id = %s", (incident_id,))
    return policy.State.from_json(row["state"] if row else {})


def default_chain(conn: psycopg.Connection, household_id: str | None) -> list[dict[str, Any]]:
    """The chain of a household without one of its own: asking the resident first when a resident
    has a channel of their own to be asked on, else straight to the team.
    """
    reachable = household_id is not None and _one(
        conn, "SELECT 1 AS ok FROM households_resident_reachable WHERE household_id = %s", (household_id,)) is not None
    return list(policy.RESIDENT_FIRST_CHAIN if reachable else policy.DEFAULT_CHAIN)




def load_team(conn: psycopg.Connection, household_id: str | None, area: str | None) -> policy.Team:
    members: tuple[tuple[str, int], ...] = ()
    bulbs: tuple[tuple[str, str], ...] = ()
    if household_id is not None:
        members = tuple((r["person_id"], int(r["tier"])) for r in _rows(
            conn, "SELECT person_id, tier FROM household_watchers WHERE household_id = %s ORDER BY tier, person_id",
            (household_id,)))
        bulbs = tuple((r["gateway_id"], r["device_id"]) for r in _rows(
            conn, """SELECT gateway_id, device_id FROM devices WHERE household_id = %s
                       AND (kind = 'bulb' AND blink_allowed IS NOT FALSE OR kind = 'plug' AND blink_allowed)
                     AND gateway_id IS NOT NULL ORDER BY device_id""", (household_id,)))
        residents = tuple(r["person_id"] for r in _rows(
            conn, "SELECT person_id FROM people WHERE role = 'resident' AND household_id = %s ORDER BY person_id",
            (household_id,)))
    coordinators = [r["person_id"] for r in _rows(
        conn, "SELECT person_id FROM people WHERE role = 'coordinator' AND area = %s ORDER BY person_id", (area,))]
    if not coordinators:  # an area without a coordinator falls to the operators
        coordinators = [r["person_id"] for r in _rows(conn, "SELECT person_id FROM people WHERE role = 'operator' ORDER BY person_id")]
    return policy.Team(members, tuple(coordinators), bulbs, residents if household_id is not None else ())


def _chain_for(conn: psycopg.Connection, inc: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    if inc["kind"] not in WELFARE_KINDS:
        return list(policy.TECHNICAL_CHAIN), "technical"
    row = _one(conn, "SELECT steps FROM escalation_chains WHERE household_id = %s", (inc["household_id"],))
    if row:
        return row["steps"], "household"
    return default_chain(conn, inc["household_id"]), "default"


def _away(conn: psycopg.Connection, household_id: str, now: float) -> bool:
    return _one(conn, "SELECT 1 AS ok FROM away_periods WHERE household_id = %s AND starts_at <= %s AND until > %s",
                (household_id, as_datetime(now), as_datetime(now))) is not None


# --- the outbox -------------------------------------------------------------------------------


def _enqueue(conn: psycopg.Connection, incident_id: int, step_key: str, recipient: str, person_id: str | None,
             channel: str, channel_id: int | None, notice: str, urgent: bool, payload: dict[str, Any], now: float,
             send_at: float, status: str = "pending", throttle_key: str | None = None) -> int | None:
    """One outbox row; None if this (incident, step, recipient, channel) was already recorded.
    ``throttle_key``: the channel kind rate limits count (default: the channel's prefix, e.g. ``mqtt``).
    """
    return outbox.enqueue(conn, outbox.Send(
        source=SOURCE, incident_id=incident_id, step_key=step_key, recipient=recipient, person_id=person_id,
        channel=channel, channel_id=channel_id, notice=notice, urgent=urgent, payload=payload, created_at=now,
        send_at=send_at, status=status, throttle_key=throttle_key or channel.split(":", 1)[0]))


def enqueue_notice(conn: psycopg.Connection, inc: dict[str, Any], people: Sequence[str], step_key: str, notice: str, *,
                   urgent: bool, now: float, inapp_only: bool = False, sealed_link: str | None = None, **fields: str) -> int:
    """Tell ``people`` about an incident, in the caller's transaction.

    The in-app notification is written right here (it *is* a database row, so it is exactly-once
    with the step). Every other channel of each person gets an outbox row, sent by a delivery worker,
    in the person's channel order; non-urgent ones wait for the end of the person's quiet hours.
    A person with no channel besides the app is reported to the coordinator. Returns the number of
    outbox rows waiting to be sent.
    """
    if not people:
        return 0
    persons = {r["person_id"]: r for r in _rows(
        conn, """SELECT p.person_id, p.display_name, p.locale, r.quiet_start, r.quiet_end, r.timezone
                 FROM people p LEFT JOIN person_alert_rules r ON r.person_id = p.person_id WHERE p.person_id = ANY(%s)""",
        (list(people),))}
    channels: dict[str, list[dict[str, Any]]] = {}
    if not inapp_only:
        for r in _rows(conn, """SELECT channel_id, person_id, kind, target FROM person_channels WHERE person_id = ANY(%s) AND enabled
                                ORDER BY person_id, position, channel_id""", (list(people),)):
            channels.setdefault(r["person_id"], []).append(r)
    name = inc.get("household_name") or inc.get("eff_area") or inc.get("area") or ""
    pending = 0
    for person_id in people:
        person = persons.get(person_id)
        if person is None:
            continue  # a chain naming someone since deleted
        title, body = render_notice(notice, person["locale"], name=name, kind=inc["kind"], **fields)
        payload = {"title": title, "body": body, "incident_id": inc["incident_id"], "notice": notice,
                   "household_id": inc["household_id"], "kind": inc["kind"]}
        if "url" in fields:  # where a push opens (else the alert page)
            payload["url"] = fields["url"]
        if sealed_link is not None:  # an answer link: the sender opens it into the text, where the slot stands
            payload["title"], payload["body"] = render_notice(notice, person["locale"], name=name, kind=inc["kind"],
                                                              **{**fields, "url": outbox.LINK_SLOT})
            payload["sealed_link"] = sealed_link
        first = _enqueue(conn, inc["incident_id"], step_key, person_id, person_id, "inapp", None, notice, urgent, payload,
                         now, now, status="sent")
        if first is None:
            continue  # this step already told this person (a replay)
        data = {"step": step_key, "household_id": inc["household_id"], "kind": inc["kind"]}
        if "url" in fields:
            data["url"] = fields["url"]
        if sealed_link is not None:
            data["sealed_link"] = sealed_link
        conn.execute("""INSERT INTO notifications (person_id, incident_id, notice, urgent, title, body, data, created_at)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                     (person_id, inc["incident_id"], notice, urgent, title, body, Jsonb(data), as_datetime(now)))
        metrics.count_notification("inapp", "sent")
        if inapp_only:
            continue
        send_at = now
        if not urgent:
            tz = person["timezone"] if policy.valid_timezone(person["timezone"]) else "Asia/Tokyo"
            send_at = policy.quiet_hours_end(now, person["quiet_start"], person["quiet_end"], tz) or now
        mine = channels.get(person_id, [])
        for order, ch in enumerate(mine):
            # the channel order is kept by staggering by a millisecond per position
            if _enqueue(conn, inc["incident_id"], step_key, person_id, person_id, f"{ch['kind']}:{ch['channel_id']}",
                        ch["channel_id"], notice, urgent, payload, now, send_at + order * 0.001,
                        throttle_key=channel_kind_name(ch["kind"], ch["target"])) is not None:
                pending += 1
        if not mine and notice in ("alert", "technical"):
            pending += report_unreachable(conn, inc, person_id, now, reason="no_channel")
    if pending:
        conn.execute("SELECT pg_notify(%s, %s)", (DELIVERIES_CHANNEL, str(inc["incident_id"])))
    return pending


UNREACHABLE_REASONS = {"no_channel": "no channel besides the app", "all_failed": "every channel failed"}


def report_unreachable(conn: psycopg.Connection, inc: dict[str, Any], person_id: str, now: float, *, reason: str) -> int:
    """Tell the area's coordinator that ``person_id`` cannot be reached (a timeline row each time; the
    coordinator is notified once per incident and person). ``reason``: a key of ``UNREACHABLE_REASONS``,
    kept as a code in the entry's data (readers translate it) beside the English note in its body.
    """
    team = load_team(conn, inc["household_id"], inc["eff_area"])
    add_timeline(conn, inc["incident_id"], now, None, "unreachable", "system", UNREACHABLE_REASONS[reason],
              {"person_id": person_id, "reason": reason})
    targets = [c for c in team.coordinators if c != person_id]
    if not targets:
        return 0
    return enqueue_notice(conn, inc, targets, f"unreachable.{person_id}", "unreachable", urgent=True, now=now,
                          person=actor_name(conn, person_id))


def incident_row(conn: psycopg.Connection, incident_id: int) -> dict[str, Any] | None:
    return _one(conn, _INCIDENT_SQL + " WHERE i.incident_id = %s", (incident_id,))
