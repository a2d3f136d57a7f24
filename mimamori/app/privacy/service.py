"""Privacy: who viewed a household's data, export of everything stored about a household (JSON
and CSV), and deletion on request (events and personal data), confirmed by typing the name.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import psycopg
from psycopg import sql

from mimamori.app.households.service import log_view
from mimamori.app.people import Person
from mimamori.kernel.access import require_household, require_manage_household, require_resident_or_manager
from mimamori.kernel.clock import Clock, as_datetime
from mimamori.kernel.errors import Forbidden, InvalidInput


def view_log(conn: psycopg.Connection, person: Person, household_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """Who looked at the household's data, newest first. For its resident and its managers."""
    require_resident_or_manager(conn, person, household_id)
    rows = conn.execute(
        "SELECT viewer_name, viewer_role, what, viewed_at, purpose FROM household_views WHERE household_id = %s"
        " ORDER BY viewed_at DESC, id DESC LIMIT %s", (household_id, limit)).fetchall()
    return [dict(zip(("viewer_name", "viewer_role", "what", "viewed_at", "purpose"), r, strict=True)) for r in rows]


def _may_export(person: Person) -> None:
    if person.role not in ("operator", "coordinator", "resident"):
        raise Forbidden("export is for the resident and coordinators")


def _rows(conn: psycopg.Connection, sql: str, params: tuple) -> list[dict[str, Any]]:
    cur = conn.execute(sql, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


#: The request an export answers, in a few words (who asked, when, how).
REQUEST_NOTE_MIN, REQUEST_NOTE_MAX = 3, 200


def export_household(conn: psycopg.Connection, clock: Clock, person: Person, household_id: str,
                     *, fmt: str = "json", request_note: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every stored record about the household, table by table — complete, contact values included.

    An export is the resident's copy of their data (their right), not a view for the exporter's own
    use. The resident may take it themselves; anyone else (the area's coordinator or an operator,
    acting on the resident's behalf) must say which request it answers, and the export is logged as
    a view with that note, so the resident sees who exported their data, when and why.
    """
    require_household(conn, person, household_id)
    _may_export(person)
    require_resident_or_manager(conn, person, household_id)
    own = person.role == "resident" and person.household_id == household_id
    note = (request_note or "").strip()
    if not own and not REQUEST_NOTE_MIN <= len(note) <= REQUEST_NOTE_MAX:
        raise InvalidInput("say which request of the resident this export answers", field="request_note")
    h = (household_id,)
    data = {
        "household": _rows(conn, "SELECT * FROM households WHERE household_id = %s", h),
        "contact": _rows(conn, "SELECT address, phone, updated_at FROM household_contacts WHERE household_id = %s", h),
        "residents": _rows(conn, "SELECT person_id, display_name, locale, phone, created_at FROM people"
                                 " WHERE household_id = %s", h),
        "team": _rows(conn, "SELECT w.person_id, p.display_name, w.tier, w.relation, w.added_at FROM household_watchers w"
                            " JOIN people p USING (person_id) WHERE w.household_id = %s", h),
        "consents": _rows(conn, "SELECT * FROM consents WHERE household_id = %s", h),
        # how the residents are reached (an e-mail address in full; other channels by kind: an Apprise URL
        # holds the operator's or a service's token, a push subscription only the browser's keys)
        "resident_contacts": _rows(conn, "SELECT c.person_id, c.kind, CASE WHEN c.kind = 'email' THEN c.target END AS address,"
                                         " c.enabled, c.created_at FROM person_channels c JOIN people p USING (person_id)"
                                         " WHERE p.household_id = %s ORDER BY c.channel_id", h),
        # their answers to resident checks ("fine", "away" until, "help"); the links themselves are not kept
        "resident_check_answers": _rows(conn, "SELECT incident_id, person_id, created_at AS asked_at, used_at AS answered_at,"
                                              " answer, away_until FROM resident_check_links WHERE household_id = %s"
                                              " ORDER BY created_at", h),
        "away_periods": _rows(conn, "SELECT starts_at, until, source, note FROM away_periods WHERE household_id = %s", h),
        "devices": _rows(conn, "SELECT device_id, kind, room, paired_at FROM devices WHERE household_id = %s", h),
        "incidents": _rows(conn, "SELECT incident_id, kind, status, opened_at, closed_at, outcome, outcome_note"
                                 " FROM incidents WHERE household_id = %s ORDER BY opened_at", h),
        # Issue 17: what the team wrote and did about the household, and its safety-check answers
        "incident_timeline": _rows(conn, "SELECT t.incident_id, t.at, p.display_name AS actor_name, t.action, t.channel, t.body"
                                         " FROM incident_timeline t JOIN incidents i USING (incident_id)"
                                         " LEFT JOIN people p ON p.person_id = t.actor WHERE i.household_id = %s"
                                         " ORDER BY t.at, t.incident_id", h),
        "safety_answers": _rows(conn, "SELECT a.check_id, c.message, c.started_at, a.state, a.how, a.answered_at,"
                                      " p.display_name AS answered_by_name, a.note FROM safety_answers a"
                                      " JOIN safety_checks c USING (check_id) LEFT JOIN people p ON p.person_id = a.answered_by"
                                      " WHERE a.household_id = %s ORDER BY c.started_at", h),
        "safety_profile": _rows(conn, "SELECT lives_alone, updated_at FROM safety_household_profiles WHERE household_id = %s", h),
        "device_moves": _rows(conn, "SELECT at, device_id, from_gateway, to_gateway, reason FROM device_moves"
                                    " WHERE household_id = %s ORDER BY move_id", h),
        "views": _rows(conn, "SELECT viewer_name, viewer_role, what, viewed_at, purpose FROM household_views"
                             " WHERE household_id = %s ORDER BY viewed_at", h),
        "events": _rows(conn, "SELECT time, device_id, seq, kind, value FROM events WHERE household_id = %s"
                              " ORDER BY time, device_id, seq", h),
    }
    log_view(conn, clock, person, household_id, f"export_{fmt}", purpose=None if own else note)
    return data


#: A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell a spreadsheet will not run: text that starts like a formula gets a
    leading apostrophe (issue 17: a watcher's note ``=HYPERLINK(...)`` ran in the resident's export).
    """
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def export_csv(data: dict[str, list[dict[str, Any]]]) -> str:
    """One CSV: a `table` column, then that table's columns (header row per table)."""
    out = io.StringIO()
    writer = csv.writer(out)
    for table, rows in data.items():
        if not rows:
            continue
        names = list(rows[0])
        writer.writerow(["table", *names])
        for row in rows:
            writer.writerow([table, *(csv_cell(row[n]) for n in names)])
    return out.getvalue()


def delete_household(conn: psycopg.Connection, _clock: Clock, person: Person, household_id: str, *,
                     confirm_name: str) -> dict[str, int]:
    """Delete on request: its events and every personal record (people, team, consents, contacts,
    incidents, views). Devices stay in the inventory, unpaired. Confirmed by the household's name.
    """
    require_manage_household(conn, person, household_id)
    name = conn.execute("SELECT display_name FROM households WHERE household_id = %s", (household_id,)).fetchone()[0]
    if confirm_name.strip() != name:
        raise InvalidInput("type the household's name to confirm")
    with conn.transaction():
        events = conn.execute(
            "DELETE FROM events WHERE household_id = %s OR device_id IN (SELECT device_id FROM devices"
            " WHERE household_id = %s)", (household_id, household_id)).rowcount
        conn.execute("UPDATE devices SET household_id = NULL, paired_at = NULL, room = NULL WHERE household_id = %s",
                     (household_id,))
        # Issue 17: what named the household outside its own rows (no foreign key reaches these):
        # in-app notifications and safety outbox rows about it, the admin log of its chain and of its
        # residents' channels, the device moves.
        resident_ids = [r[0] for r in conn.execute(
            "SELECT person_id FROM people WHERE household_id = %s AND role = 'resident'", (household_id,))]
        conn.execute("DELETE FROM notifications WHERE data->>'household_id' = %s", (household_id,))
        conn.execute("DELETE FROM safety_deliveries WHERE payload->>'household_id' = %s", (household_id,))
        conn.execute("DELETE FROM alert_admin_log WHERE subject = %s OR subject = ANY(%s)", (household_id, resident_ids))
        conn.execute("DELETE FROM device_moves WHERE household_id = %s", (household_id,))
        _forget_activity(conn, household_id)
        residents = conn.execute("DELETE FROM people WHERE household_id = %s AND role = 'resident'",
                                 (household_id,)).rowcount
        conn.execute("DELETE FROM households WHERE household_id = %s", (household_id,))  # cascades the rest
    return {"events": events, "residents": residents}


def _forget_activity(conn: psycopg.Connection, household_id: str) -> None:
    """With TimescaleDB, ``activity_15m`` is a continuous aggregate whose materialized buckets keep a
    deleted household's counts (issue 17; a refresh of the range did not drop the newest bucket in
    tests): delete its rows from the materialization hypertable itself, in the same transaction.
    """
    if conn.execute("SELECT to_regclass('timescaledb_information.continuous_aggregates') IS NOT NULL").fetchone() != (True,):
        return
    row = conn.execute("SELECT materialization_hypertable_schema, materialization_hypertable_name"
                       " FROM timescaledb_information.continuous_aggregates WHERE view_name = 'activity_15m'").fetchone()
    if row is None:
        return
    conn.execute(sql.SQL("DELETE FROM {} WHERE household_id = %s").format(sql.Identifier(row[0], row[1])), (household_id,))


def consent_of(conn: psycopg.Connection, person: Person, household_id: str) -> list[dict[str, Any]]:
    require_household(conn, person, household_id)
    return _rows(conn, "SELECT c.notice_version, c.given_at, c.withdrawn_at, p.display_name AS given_by_name"
                       " FROM consents c LEFT JOIN people p ON p.person_id = c.given_by WHERE c.household_id = %s"
                       " ORDER BY c.given_at DESC", (household_id,))


def now_iso(clock: Clock) -> str:
    return as_datetime(clock.now()).isoformat()
