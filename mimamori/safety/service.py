"""Database functions of the safety check (psycopg, plain functions, no HTTP).

- people act through ``start_check``, ``list_checks``, ``get_check``, ``board``, ``answer_in_app``,
  ``claim``, ``household_detail``, ``issue_link``, ``close_check``, ``export_csv`` (scope enforced
  here: operator everything; coordinator their area; watcher their teams' households; resident
  their own household);
- a no-login link answers through ``link_info`` / ``answer_by_link`` (signed, single use);
- the worker runs ``recognise_new_events`` (``safety.engine``); links live in ``safety.links``, and
  what the parts share (scope, audit, what a check sends) in ``safety.records``; their names used by
  callers are re-exported here.

Every function that writes runs in one transaction; times are the caller's clock.
Team claims and timelines reuse the alert engine: a per-household incident of kind
``safety_check`` (created with a paused, empty escalation so no alert worker runs a chain for it),
claimed and resolved through ``alerts.service``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from mimamori.alerts import models as alert_models
from mimamori.alerts import service as alerts_service
from mimamori.kernel import access
from mimamori.kernel.clock import Clock, as_datetime
from mimamori.safety import recognise
from mimamori.safety.links import answer_by_link, link_info  # noqa: F401 - re-exported: mimamori/app/safety/views.py
from mimamori.safety.models import (
    ANSWERS,
    BOARD_STATES,
    ON_BEHALF_ANSWERS,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
)
from mimamori.safety.records import (
    MAX_HOUSEHOLDS,
    MAX_NOTE,
    NOTIFY_CHANNEL,
    SOURCE,
    Links,
    _answer_for,
    _check_for,
    _enqueue_blinks,
    _ensure_incident,
    _epoch,
    _manager,
    _one,
    _rows,
    _scope,
    _send_messages,
    _set_answer,
    _tell_team_needs_help,
    audit,
)


def start_check(conn: psycopg.Connection, actor: Any, *, message: str, clock: Clock, links: Links,
                area: str | None = None, household_ids: Sequence[str] | None = None, blinks: int = 3) -> int:
    """Start a safety check of an area (or a list of households) with a message. In the same
    transaction: one answer row per household, a blink for each of its bulbs (and plugs a coordinator allowed), an in-app
    message to every household member and watcher, an outbox row for each of their other channels
    (residents' messages carry their personal single-use link). Returns the check id.
    """
    _manager(actor)
    message = (message or "").strip()
    if not message or len(message) > 1000 or "\x00" in message:
        raise InvalidInput("a message is 1..1000 characters")
    if (area is None) == (not household_ids):
        raise InvalidInput("give either an area or a list of households")
    if actor.role == "coordinator" and area is not None and area != actor.area:
        raise Forbidden("a coordinator starts safety checks in their own area")
    now = clock.now()
    with conn.transaction():
        where, params = _scope(actor)
        if area is not None:
            homes = _rows(conn, f"SELECT h.household_id, h.display_name FROM households h WHERE h.area = %(area)s AND {where}"
                                " ORDER BY h.household_id", {**params, "area": area})
        else:
            ids = list(dict.fromkeys(household_ids or []))
            if len(ids) > MAX_HOUSEHOLDS:
                raise InvalidInput("too many households")
            homes = _rows(conn, f"SELECT h.household_id, h.display_name FROM households h WHERE h.household_id = ANY(%(ids)s)"
                                f" AND {where} ORDER BY h.household_id", {**params, "ids": ids})
            if len(homes) != len(ids):
                raise NotFound("some households were not found")
        if not homes:
            raise InvalidInput("no households to check")
        row = _one(conn, """INSERT INTO safety_checks (area, message, started_by, started_at) VALUES (%s, %s, %s, %s)
                            RETURNING check_id""", (area, message, actor.person_id, as_datetime(now)))
        if row is None:  # a row the same transaction just wrote or locked
            raise RuntimeError("row: expected a row, found none")
        check_id = int(row["check_id"])
        hids = [h["household_id"] for h in homes]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO safety_answers (check_id, household_id, updated_at) VALUES (%s, %s, %s)",
                            [(check_id, hid, as_datetime(now)) for hid in hids])
        audit(conn, check_id, None, now, actor.person_id, "started", "app",
               {"area": area, "households": len(hids), "message": message})
        # People's messages first in the outbox: they are throttled per channel kind, and while their
        # kind waits for a token the worker sends blinks; queued after the blinks, watchers heard of a
        # check of 2,000 homes only 22 s after it started (mimamori/bench/safety_bench.py).
        _send_messages(conn, check_id, homes, message, now, links)
        _enqueue_blinks(conn, check_id, hids, now, blinks)
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(check_id)))
    return check_id



_BOARD_SQL = """
SELECT a.household_id, h.display_name AS household_name, h.area, a.state, a.how, a.answered_at, a.answered_by,
       ap.display_name AS answered_by_name, a.note, a.device_id, a.last_activity_at, a.incident_id,
       i.status AS incident_status, i.claimed_by, cp.display_name AS claimed_by_name,
       coalesce(sp.lives_alone, true) AS lives_alone,
       coalesce(gw.total, 0) AS gateways_total, coalesce(gw.offline, 0) AS gateways_offline
FROM safety_answers a
JOIN households h ON h.household_id = a.household_id
LEFT JOIN people ap ON ap.person_id = a.answered_by
LEFT JOIN incidents i ON i.incident_id = a.incident_id
LEFT JOIN people cp ON cp.person_id = i.claimed_by
LEFT JOIN safety_household_profiles sp ON sp.household_id = a.household_id
-- the home's gateways: its own, and area gateways its devices report through, counted once each.
-- Aggregated once for the check's homes (a per-row OR scanned every gateway for every home: 2.6 s
-- for a board of 5,000 homes, measured by mimamori/bench/safety_bench.py).
LEFT JOIN (SELECT hg.household_id, count(*) AS total, count(*) FILTER (WHERE g.status = 'offline') AS offline
           FROM (SELECT g.household_id, g.gateway_id FROM gateways g
                 WHERE g.household_id IN (SELECT household_id FROM safety_answers WHERE check_id = %(cid)s)
                 UNION
                 SELECT d.household_id, d.gateway_id FROM devices d
                 WHERE d.gateway_id IS NOT NULL
                   AND d.household_id IN (SELECT household_id FROM safety_answers WHERE check_id = %(cid)s)) hg
           JOIN gateways g ON g.gateway_id = hg.gateway_id
           GROUP BY hg.household_id) gw ON gw.household_id = a.household_id
WHERE a.check_id = %(cid)s AND {where}
"""


def _board_rows(conn: psycopg.Connection, actor: Any, check_id: int) -> list[dict[str, Any]]:
    where, params = _scope(actor)
    rows = _rows(conn, _BOARD_SQL.format(where=where), {**params, "cid": check_id})
    for r in rows:
        r["board_state"] = recognise.effective_state(r["state"], int(r["gateways_total"]), int(r["gateways_offline"]))
    rows.sort(key=lambda r: recognise.risk_key(r["board_state"], r["lives_alone"], _epoch(r["last_activity_at"]),
                                               r["household_name"]))
    return rows


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(BOARD_STATES, 0)
    for r in rows:
        counts[r["board_state"]] += 1
    counts["total"] = len(rows)
    return counts


def _check_json(c: dict[str, Any]) -> dict[str, Any]:
    return {"check_id": c["check_id"], "area": c["area"], "message": c["message"], "started_by": c["started_by"],
            "started_by_name": c.get("started_by_name"), "started_at": c["started_at"], "closed_at": c["closed_at"],
            "closed_by": c["closed_by"], "open": c["closed_at"] is None}


def list_checks(conn: psycopg.Connection, actor: Any, *, limit: int = 50) -> list[dict[str, Any]]:
    """Checks holding households the actor may see, newest first, with counts of their households."""
    where, params = _scope(actor)
    checks = _rows(conn, f"""SELECT c.*, p.display_name AS started_by_name FROM safety_checks c
                            LEFT JOIN people p ON p.person_id = c.started_by
                            WHERE EXISTS (SELECT 1 FROM safety_answers a JOIN households h ON h.household_id = a.household_id
                                          WHERE a.check_id = c.check_id AND {where})
                            ORDER BY c.started_at DESC, c.check_id DESC LIMIT %(lim)s""", {**params, "lim": limit})
    return [{**_check_json(c), "counts": _counts(_board_rows(conn, actor, c["check_id"]))} for c in checks]


def get_check(conn: psycopg.Connection, actor: Any, check_id: int) -> dict[str, Any]:
    c = _check_for(conn, actor, check_id)
    return {**_check_json(c), "counts": _counts(_board_rows(conn, actor, check_id))}


def board(conn: psycopg.Connection, actor: Any, check_id: int, *, state: str | None = None,
          lives_alone: bool | None = None, q: str | None = None, now: float | None = None) -> dict[str, Any]:
    """The live board: the check, counts per state (over the actor's households) and the households
    ordered by risk, filtered by board state / living alone / a name fragment. With ``now`` (the
    caller's clock), every household shown is logged as viewed (the database's ``log_household_views``).
    """
    c = _check_for(conn, actor, check_id)
    rows = _board_rows(conn, actor, check_id)
    counts = _counts(rows)
    if state:
        if state not in BOARD_STATES:
            raise InvalidInput(f"state is one of {BOARD_STATES}")
        rows = [r for r in rows if r["board_state"] == state]
    if lives_alone is not None:
        rows = [r for r in rows if r["lives_alone"] == lives_alone]
    if q:
        rows = [r for r in rows if q.lower() in r["household_name"].lower() or q.lower() in r["household_id"].lower()]
    if now is not None and rows:
        conn.execute("SELECT log_household_views(%s, %s, %s, %s)",
                     (actor.person_id, [r["household_id"] for r in rows], f"safety board {check_id}", as_datetime(now)))
    return {"check": _check_json(c), "counts": counts, "households": [_household_json(r) for r in rows]}


def _household_json(r: dict[str, Any]) -> dict[str, Any]:
    return {"household_id": r["household_id"], "household_name": r["household_name"], "area": r["area"],
            "state": r["board_state"], "answered": r["state"], "how": r["how"], "answered_at": r["answered_at"],
            "answered_by": r["answered_by"], "answered_by_name": r["answered_by_name"], "note": r["note"],
            "device_id": r["device_id"], "last_activity_at": r["last_activity_at"], "lives_alone": r["lives_alone"],
            "incident_id": r["incident_id"], "incident_status": r["incident_status"], "claimed_by": r["claimed_by"],
            "claimed_by_name": r["claimed_by_name"],
            "gateways_offline": int(r["gateways_offline"]), "gateways_total": int(r["gateways_total"])}


def household_detail(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str) -> dict[str, Any]:
    """One household of a check: its answer, the audit of the check for it, and the team timeline."""
    _answer_for(conn, actor, check_id, household_id)
    row = next(r for r in _board_rows(conn, actor, check_id) if r["household_id"] == household_id)
    audit = _rows(conn, """SELECT s.at, s.actor, p.display_name AS actor_name, s.action, s.channel, s.data
                           FROM safety_audit s LEFT JOIN people p ON p.person_id = s.actor
                           WHERE s.check_id = %s AND (s.household_id = %s OR s.household_id IS NULL)
                           ORDER BY s.entry_id""", (check_id, household_id))
    timeline: list[dict[str, Any]] = []
    if row["incident_id"] is not None:
        timeline = [{"at": e.at, "actor": e.actor, "actor_name": e.actor_name, "action": e.action, "channel": e.channel,
                     "body": e.body} for e in _incident_timeline(conn, actor, row["incident_id"])]
    return {**_household_json(row), "audit": audit, "timeline": timeline}


def _incident_timeline(conn: psycopg.Connection, actor: Any, incident_id: int) -> list[Any]:
    try:
        return alerts_service.timeline(conn, actor, incident_id)
    except alert_models.NotFound:
        return []


def escalate(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, *, clock: Clock,
             channel: str = "app") -> dict[str, Any]:
    """The coordinator asks the household's team to go and see (a home that has not answered): they
    are told at once on all their channels, and the household's incident is open to claim.
    """
    access.require_manage_household(conn, actor, household_id)  # the area's coordinator, not a team member elsewhere
    now = clock.now()
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id, lock=True)
        if a["check_closed_at"] is not None:
            raise Gone("the safety check is closed")
        incident_id = _tell_team_needs_help(conn, check_id, household_id, now, channel, reason="no_answer",
                                            actor=actor.person_id)
    return {"check_id": check_id, "household_id": household_id, "incident_id": incident_id}


def answer_in_app(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, answer: str, *,
                  clock: Clock, note: str | None = None, channel: str = "app") -> dict[str, Any]:
    """A resident answers for their own household ('app'), or a team member / coordinator answers
    on its behalf after a visit or call ('on_behalf', with a note). Resolves the household's
    safety-check incident, if one was opened, with the matching outcome.
    """
    note = (note or "").strip() or None
    if note is not None and (len(note) > MAX_NOTE or "\x00" in note):
        raise InvalidInput("note too long")
    own = actor.role == "resident"
    if answer not in (ANSWERS if own else ON_BEHALF_ANSWERS):
        raise InvalidInput("not a valid answer")
    now = clock.now()
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id, lock=True)
        if a["check_closed_at"] is not None:
            raise Gone("the safety check is closed")
        how = "app" if own else "on_behalf"
        _set_answer(conn, check_id, household_id, answer, how, now, by=actor.person_id, note=note)
        audit(conn, check_id, household_id, now, actor.person_id, f"answered_{answer}", channel,
               {"how": how, "note": note} if note else {"how": how})
        if own and answer == "needs_help":
            _tell_team_needs_help(conn, check_id, household_id, now, "app")
        if a["incident_id"] is not None and not own and answer in ("safe", "needs_help"):
            inc = _one(conn, "SELECT status FROM incidents WHERE incident_id = %s", (a["incident_id"],))
            if inc and inc["status"] in ("open", "claimed"):
                alerts_service.resolve(conn, actor, a["incident_id"], "fine" if answer == "safe" else "needed_help",
                                       note or "", clock=clock, channel=channel)
    return {"check_id": check_id, "household_id": household_id, "state": answer, "how": how}


def claim(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, *, clock: Clock,
          channel: str = "app") -> dict[str, Any]:
    """"I'll go" for a household of a check: the team sees who is going (alert engine's claim)."""
    if actor.role not in ("operator", "coordinator", "watcher"):
        raise Forbidden("only the team, a coordinator or an operator claims")
    now = clock.now()
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id, lock=True)
        if a["check_closed_at"] is not None:
            raise Gone("the safety check is closed")
        incident_id = _ensure_incident(conn, actor, a, now)
        try:
            alerts_service.claim(conn, actor, incident_id, clock=clock, channel=channel)
        except alert_models.Conflict as exc:
            raise Conflict(str(exc)) from None
        except alert_models.NotFound:
            raise NotFound("household not in this safety check") from None
        audit(conn, check_id, household_id, now, actor.person_id, "claimed", channel, {"incident_id": incident_id})
    return {"check_id": check_id, "household_id": household_id, "incident_id": incident_id, "claimed_by": actor.person_id}


def comment(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, text: str, *, clock: Clock,
            channel: str = "app") -> None:
    """A note on the household's team timeline (opens the incident if needed)."""
    if actor.role not in ("operator", "coordinator", "watcher"):
        raise Forbidden("only the team, a coordinator or an operator comments")
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id, lock=True)
        incident_id = _ensure_incident(conn, actor, a, clock.now())
        try:
            alerts_service.comment(conn, actor, incident_id, text, clock=clock, channel=channel)
        except alert_models.InvalidInput as exc:
            raise InvalidInput(str(exc)) from None




def close_check(conn: psycopg.Connection, actor: Any, check_id: int, *, clock: Clock) -> dict[str, Any]:
    """Close a check: links stop working, pending messages and blinks are dropped, and safety-check
    incidents still open are closed (their timelines stay). Returns the final counts.
    """
    _manager(actor)
    now = clock.now()
    with conn.transaction():
        c = _check_for(conn, actor, check_id)
        if c["closed_at"] is not None:
            raise Conflict("the safety check is already closed")
        if actor.role == "coordinator" and c["area"] is not None and c["area"] != actor.area:
            raise Forbidden("outside your area")
        conn.execute("UPDATE safety_checks SET closed_at = %s, closed_by = %s WHERE check_id = %s",
                     (as_datetime(now), actor.person_id, check_id))
        conn.execute("""UPDATE outbox SET status = 'skipped', last_error = 'check closed'
                        WHERE source = %s AND check_id = %s AND status = 'pending'""", (SOURCE, check_id))
        for r in _rows(conn, """SELECT a.incident_id FROM safety_answers a JOIN incidents i ON i.incident_id = a.incident_id
                                WHERE a.check_id = %s AND i.status IN ('open', 'claimed')""", (check_id,)):
            conn.execute("""UPDATE incidents SET status = 'resolved', closed_at = %s, closed_by = %s, updated_at = %s,
                            outcome = 'auto_closed', outcome_note = 'safety check closed' WHERE incident_id = %s""",
                         (as_datetime(now), actor.person_id, as_datetime(now), r["incident_id"]))
            conn.execute("""INSERT INTO incident_timeline (incident_id, at, actor, action, channel, body)
                            VALUES (%s, %s, %s, 'safety_check_closed', 'app', NULL)""",
                         (r["incident_id"], as_datetime(now), actor.person_id))
        counts = _counts(_board_rows(conn, actor, check_id))
        audit(conn, check_id, None, now, actor.person_id, "closed", "app", {"counts": counts})
    return {"check_id": check_id, "counts": counts}


CSV_COLUMNS = ("household_id", "household_name", "area", "state", "how", "answered_at", "answered_by_name", "note",
               "lives_alone", "last_activity_at", "claimed_by_name", "gateways_offline", "gateways_total")


def export_csv(conn: psycopg.Connection, actor: Any, check_id: int, *, clock: Clock) -> str:
    """The check's result for the city: one line per household (the actor's), ordered by risk."""
    _manager(actor)
    c = _check_for(conn, actor, check_id)
    rows = [_household_json(r) for r in _board_rows(conn, actor, check_id)]
    out = io.StringIO()
    writer = csv.writer(out)
    # The check's message is a manager's text: one quoted, formula-safe cell (a newline in it used to
    # start rows of its own; issue 17).
    writer.writerow([_csv_cell(f"# safety check {c['check_id']}: {c['message']} (started {c['started_at'].isoformat()}"
                               f"{', closed ' + c['closed_at'].isoformat() if c['closed_at'] else ''})")])
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([_csv_cell(r[k]) for k in CSV_COLUMNS])
    with conn.transaction():
        audit(conn, check_id, None, clock.now(), actor.person_id, "exported_csv", "app", {"rows": len(rows)})
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):  # no formulas in a spreadsheet
        return "'" + value
    return "" if value is None else value


def set_lives_alone(conn: psycopg.Connection, actor: Any, household_id: str, lives_alone: bool, *, clock: Clock) -> None:
    """Record whether a household's resident lives alone (the board puts them first)."""
    access.require_manage_household(conn, actor, household_id)
    where, params = _scope(actor)
    with conn.transaction():
        if _one(conn, f"SELECT 1 AS ok FROM households h WHERE h.household_id = %(hid)s AND {where}",
                {**params, "hid": household_id}) is None:
            raise NotFound("household not found")
        conn.execute("""INSERT INTO safety_household_profiles (household_id, lives_alone, updated_at) VALUES (%s, %s, %s)
                        ON CONFLICT (household_id) DO UPDATE SET lives_alone = EXCLUDED.lives_alone,
                        updated_at = EXCLUDED.updated_at""", (household_id, lives_alone, as_datetime(clock.now())))
