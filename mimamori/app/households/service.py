"""Households: the list a person may see with a status at a glance, one household's picture
(14-day heatmap, today's timeline, device health), teams, away periods. Every function takes the
acting person and checks scope; every read of a household's data is logged for its resident.
"""

from __future__ import annotations

import contextvars
import secrets
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from mimamori.app.formatting import zone
from mimamori.app.people import Person
from mimamori.kernel.access import (
    household_sql,
    may_see_contact,
    require_area,
    require_household,
    require_manage_household,
    require_manager,
)
from mimamori.kernel.clock import Clock, as_datetime
from mimamori.kernel.errors import Conflict, InvalidInput, NotFound

ACTIVITY_KINDS = ("on", "off", "motion", "open", "close")
WELFARE_KINDS = ("inactivity", "long_on")
#: A device not heard from (heartbeat or event) for this long is shown as a device problem.
DEVICE_SILENT_AFTER = timedelta(hours=3)
HEATMAP_DAYS = 14


#: Households whose view this request already logged (set per request by the app's view-log
#: middleware; a mutable set, so a service running in a worker thread adds to the same one).
LOGGED_VIEWS: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("mimamori_logged_views", default=None)


def log_view(conn: psycopg.Connection, clock: Clock, person: Person, household_id: str, what: str, *,
             purpose: str | None = None) -> None:
    """Record who looked at a household's data, and why when known (its residents looking at their
    own are not "viewers"). Issue 17: the app's middleware (``app.main``) calls this for every
    successful read of a route naming a household or an incident, unless the service logged it first
    (with a better ``what`` or a purpose).
    """
    logged = LOGGED_VIEWS.get()
    if logged is not None:
        logged.add(household_id)
    if person.role == "resident" and person.household_id == household_id:
        return
    conn.execute(
        "INSERT INTO household_views (household_id, person_id, viewer_name, viewer_role, what, viewed_at, purpose)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (household_id, person.person_id, person.display_name, person.role, what, as_datetime(clock.now()), purpose),
    )


_STATUS_SQL = """
SELECT h.household_id, h.display_name, h.area, h.timezone,
       EXISTS (SELECT 1 FROM away_periods a WHERE a.household_id = h.household_id
               AND a.starts_at <= %(now)s AND a.until > %(now)s) AS away,
       (SELECT max(a.until) FROM away_periods a WHERE a.household_id = h.household_id
               AND a.starts_at <= %(now)s AND a.until > %(now)s) AS away_until,
       (SELECT i.incident_id FROM incidents i WHERE i.household_id = h.household_id
               AND i.status IN ('open', 'claimed') AND i.kind IN ('inactivity', 'long_on')
               ORDER BY i.opened_at LIMIT 1) AS welfare_incident,
       EXISTS (SELECT 1 FROM incidents i WHERE i.status IN ('open', 'claimed')
               AND ((i.household_id = h.household_id AND i.kind = 'device_offline')
                    OR (i.kind = 'area_outage' AND i.area = h.area))) AS device_problem,
       (SELECT max(ds.last_activity_at) FROM devices d JOIN device_state ds USING (device_id)
               WHERE d.household_id = h.household_id) AS last_activity_at
FROM households h
WHERE {where}
ORDER BY h.display_name, h.household_id
"""


def status_of(away: bool, welfare_incident: int | None, device_problem: bool) -> str:
    """One word at a glance: check_needed beats away beats device_problem beats calm."""
    if welfare_incident is not None:
        return "check_needed"
    if away:
        return "away"
    if device_problem:
        return "device_problem"
    return "calm"


def log_list_view(conn: psycopg.Connection, clock: Clock, person: Person, household_ids: list[str], what: str) -> None:
    """A list shows every household on it: each is in its view log (migration 0049's function, which
    writes a (viewer, what) once in ten minutes).
    """
    if household_ids:
        conn.execute("SELECT log_household_views(%s, %s, %s, %s)",
                     (person.person_id, household_ids, what, as_datetime(clock.now())))


def list_households(conn: psycopg.Connection, clock: Clock, person: Person, *, what: str = "list") -> list[dict[str, Any]]:
    """The households in the person's scope with their state; each shown is logged as viewed."""
    where, params = household_sql(person)
    rows = conn.execute(_STATUS_SQL.format(where=where), {**params, "now": as_datetime(clock.now())}).fetchall()
    log_list_view(conn, clock, person, [r[0] for r in rows], what)
    out = []
    for hid, name, area, tz, away, away_until, welfare, device_problem, last_activity in rows:
        out.append({
            "household_id": hid, "display_name": name, "area": area, "timezone": tz,
            "status": status_of(away, welfare, device_problem), "away_until": away_until,
            "incident_id": welfare, "last_activity_at": last_activity,
        })
    return out


def _one(conn: psycopg.Connection, clock: Clock, person: Person, household_id: str) -> dict[str, Any]:
    where, params = household_sql(person)
    rows = conn.execute(
        _STATUS_SQL.format(where=f"h.household_id = %(hid)s AND {where}"),
        {**params, "hid": household_id, "now": as_datetime(clock.now())},
    ).fetchall()
    if not rows:
        raise NotFound("household not found")
    hid, name, area, tz, away, away_until, welfare, device_problem, last_activity = rows[0]
    return {"household_id": hid, "display_name": name, "area": area, "timezone": tz,
            "status": status_of(away, welfare, device_problem), "away_until": away_until,
            "incident_id": welfare, "last_activity_at": last_activity}


def get_household(conn: psycopg.Connection, clock: Clock, person: Person, household_id: str, *,
                  what: str = "page") -> dict[str, Any]:
    """Everything about one household the person may see; logs the view."""
    info = _one(conn, clock, person, household_id)
    tz = zone(info["timezone"])
    info["contact"] = contact(conn, person, household_id)
    info["team"] = team(conn, person, household_id)
    info["devices"] = device_health(conn, clock, household_id)
    info["heatmap"] = activity_heatmap(conn, clock, household_id, tz)
    info["today"] = today_timeline(conn, clock, household_id, tz)
    info["incidents"] = [dict(zip(("incident_id", "kind", "status", "opened_at", "outcome"), r, strict=True)) for r in conn.execute(
        "SELECT incident_id, kind, status, opened_at, outcome FROM incidents WHERE household_id = %s"
        " ORDER BY opened_at DESC LIMIT 20", (household_id,)).fetchall()]
    consent = conn.execute(
        "SELECT notice_version, given_at, given_by, withdrawn_at FROM consents WHERE household_id = %s"
        " ORDER BY given_at DESC LIMIT 1", (household_id,)).fetchone()
    info["consent"] = dict(zip(("notice_version", "given_at", "given_by", "withdrawn_at"), consent, strict=True)) if consent else None
    log_view(conn, clock, person, household_id, what)
    return info


def contact(conn: psycopg.Connection, person: Person, household_id: str) -> dict[str, Any] | None:
    """The household's contact details as ``person`` may see them, or None when none are registered.
    Hidden values come back as None with ``visible`` False; ``has_address``/``has_phone`` say they exist.
    """
    require_household(conn, person, household_id)
    row = conn.execute("SELECT address, phone FROM household_contacts WHERE household_id = %s", (household_id,)).fetchone()
    if row is None or (not row[0] and not row[1]):
        return None
    visible = may_see_contact(conn, person, household_id)
    return {"registered": True, "visible": visible, "has_address": bool(row[0]), "has_phone": bool(row[1]),
            "address": row[0] if visible else None, "phone": row[1] if visible else None}


def team(conn: psycopg.Connection, person: Person, household_id: str) -> list[dict[str, Any]]:
    """The team; members' phone numbers only for the team itself and the resident (else ``phone_registered``)."""
    require_household(conn, person, household_id)
    visible = may_see_contact(conn, person, household_id)
    rows = conn.execute(
        "SELECT p.person_id, p.display_name, w.tier, w.relation, p.phone FROM household_watchers w"
        " JOIN people p USING (person_id) WHERE w.household_id = %s ORDER BY w.tier, p.display_name",
        (household_id,),
    ).fetchall()
    return [{"person_id": pid, "display_name": name, "tier": tier, "relation": relation,
             "phone": phone if visible else None, "phone_registered": bool(phone)}
            for pid, name, tier, relation, phone in rows]


def activity_heatmap(conn: psycopg.Connection, clock: Clock, household_id: str, tz: ZoneInfo) -> dict[str, Any]:
    """Resident activity counts per local day × hour over the last 14 days (today last)."""
    today = as_datetime(clock.now()).astimezone(tz).date()
    first = today - timedelta(days=HEATMAP_DAYS - 1)
    start = datetime.combine(first, time(0), tz)
    end = datetime.combine(today + timedelta(days=1), time(0), tz)
    rows = conn.execute(
        "SELECT (time AT TIME ZONE %(tz)s)::date AS day, extract(hour FROM time AT TIME ZONE %(tz)s)::int AS hour,"
        " count(*) FROM events WHERE household_id = %(hid)s AND time >= %(start)s AND time < %(end)s"
        " AND kind = ANY(%(kinds)s) GROUP BY 1, 2",
        {"tz": tz.key, "hid": household_id, "start": start, "end": end, "kinds": list(ACTIVITY_KINDS)},
    ).fetchall()
    days = [first + timedelta(days=i) for i in range(HEATMAP_DAYS)]
    counts = [[0] * 24 for _ in days]
    for day, hour, n in rows:
        idx = (day - first).days
        if 0 <= idx < HEATMAP_DAYS:
            counts[idx][hour] = n
    return {"days": days, "counts": counts}


def today_timeline(conn: psycopg.Connection, clock: Clock, household_id: str, tz: ZoneInfo) -> list[dict[str, Any]]:
    now = as_datetime(clock.now())
    midnight = datetime.combine(now.astimezone(tz).date(), time(0), tz)
    rows = conn.execute(
        "SELECT e.time, e.kind, e.device_id, d.kind, d.room FROM events e LEFT JOIN devices d USING (device_id)"
        " WHERE e.household_id = %s AND e.time >= %s AND e.time <= %s ORDER BY e.time DESC LIMIT 200",
        (household_id, midnight, now),
    ).fetchall()
    return [{"time": t.astimezone(tz), "kind": k, "device_id": dev, "device_kind": dk, "room": room}
            for t, k, dev, dk, room in rows]


def device_health(conn: psycopg.Connection, clock: Clock, household_id: str) -> list[dict[str, Any]]:
    now = as_datetime(clock.now())
    rows = conn.execute(
        "SELECT d.device_id, d.kind, d.room, d.gateway_id, ds.last_seen_at, ds.last_heartbeat_at, ds.power,"
        " g.status, d.blink_allowed FROM devices d LEFT JOIN device_state ds USING (device_id) LEFT JOIN gateways g USING (gateway_id)"
        " WHERE d.household_id = %s ORDER BY d.device_id",
        (household_id,),
    ).fetchall()
    out = []
    for dev, kind, room, gw, seen, hb, power, gw_status, blink_allowed in rows:
        last = max([t for t in (seen, hb) if t is not None], default=None)
        problem = None
        if gw_status == "offline":
            problem = "gateway_offline"
        elif last is None or now - last > DEVICE_SILENT_AFTER:
            problem = "silent"
        out.append({"device_id": dev, "kind": kind, "room": room, "gateway_id": gw, "last_seen_at": last,
                    "power": power, "problem": problem, "blink_allowed": blink_allowed,
                    "blinks": blink_allowed if blink_allowed is not None else kind == "bulb"})
    return out


# --- changes ------------------------------------------------------------------------------------


def create_household(conn: psycopg.Connection, clock: Clock, actor: Person, *, display_name: str,
                     area: str | None = None, household_id: str | None = None, address: str | None = None,
                     phone: str | None = None, paper_consent: bool = False,
                     notice_version: str | None = None) -> str:
    """Register a household (only the name is required). A coordinator registers in their own area."""
    if actor.role == "coordinator":
        area = area or actor.area
    require_area(actor, area)
    household_id = household_id or f"h_{secrets.token_hex(5)}"
    now = as_datetime(clock.now())
    with conn.transaction():
        try:
            conn.execute(
                "INSERT INTO households (household_id, display_name, area, created_at) VALUES (%s, %s, %s, %s)",
                (household_id, display_name, area, now),
            )
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict("household id already exists") from exc
        if address or phone:
            conn.execute(
                "INSERT INTO household_contacts (household_id, address, phone, updated_at) VALUES (%s, %s, %s, %s)",
                (household_id, address or None, phone or None, now),
            )
        if paper_consent:
            from mimamori.app.auth.service import NOTICE_VERSION

            conn.execute(
                "INSERT INTO consents (household_id, given_by, notice_version, given_at) VALUES (%s, NULL, %s, %s)",
                (household_id, notice_version or NOTICE_VERSION, now),
            )
    return household_id


def add_to_team(conn: psycopg.Connection, clock: Clock, actor: Person, household_id: str, person_id: str, *,
                tier: int = 1, relation: str | None = None) -> None:
    require_manage_household(conn, actor, household_id)
    # The one rule of who manages whom (alerts.service.managed_people_sql): a coordinator puts only
    # their own area's people on a team, never another area's watcher (issue 17).
    from mimamori.alerts.service import may_manage_person

    row = conn.execute("SELECT role FROM people WHERE person_id = %s", (person_id,)).fetchone()
    if row is None or not may_manage_person(conn, actor, person_id):
        raise NotFound("person not found")
    if row[0] not in ("watcher", "coordinator"):
        raise InvalidInput("only watchers and coordinators join a team")
    conn.execute(
        "INSERT INTO household_watchers (household_id, person_id, tier, relation, added_at) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (household_id, person_id) DO UPDATE SET tier = EXCLUDED.tier, relation = EXCLUDED.relation",
        (household_id, person_id, tier, relation, as_datetime(clock.now())),
    )


def remove_from_team(conn: psycopg.Connection, actor: Person, household_id: str, person_id: str) -> None:
    require_manage_household(conn, actor, household_id)
    conn.execute("DELETE FROM household_watchers WHERE household_id = %s AND person_id = %s", (household_id, person_id))


def residents(conn: psycopg.Connection, actor: Person, household_id: str) -> list[dict[str, Any]]:
    """The household's residents and how many channels of their own they have (the default chain asks
    a resident with one before the team), for the coordinator's household page.
    """
    require_manage_household(conn, actor, household_id)
    rows = conn.execute(
        """SELECT p.person_id, p.display_name, count(c.channel_id) FILTER (WHERE c.enabled)
           FROM people p LEFT JOIN person_channels c ON c.person_id = p.person_id
           WHERE p.role = 'resident' AND p.household_id = %s GROUP BY p.person_id, p.display_name
           ORDER BY p.display_name""", (household_id,)).fetchall()
    return [{"person_id": r[0], "display_name": r[1], "channels": int(r[2])} for r in rows]


def area_watchers(conn: psycopg.Connection, actor: Person) -> list[dict[str, Any]]:
    """Watchers a coordinator can put on teams: those on a team in the area, or invited by them."""
    require_manager(actor)
    from mimamori.alerts.service import managed_people_sql  # the same rule add_to_team applies

    where, params = managed_people_sql(actor)
    rows = conn.execute(
        f"SELECT p.person_id, p.display_name FROM people p WHERE p.role = 'watcher' AND {where} ORDER BY p.display_name",
        params,
    ).fetchall()
    return [{"person_id": r[0], "display_name": r[1]} for r in rows]


def set_away(conn: psycopg.Connection, clock: Clock, actor: Person, household_id: str, until: date | datetime,
             note: str | None = None) -> int:
    """Pause watching until a date (end of that local day). Resident (own), team watchers, coordinators."""
    require_household(conn, actor, household_id)
    source = {"resident": "resident", "watcher": "watcher"}.get(actor.role, "coordinator")
    tzname = conn.execute("SELECT timezone FROM households WHERE household_id = %s", (household_id,)).fetchone()[0]
    now = as_datetime(clock.now())
    if isinstance(until, datetime):
        until_at = until if until.tzinfo else until.replace(tzinfo=zone(tzname))
    elif until >= date.max - timedelta(days=1):  # 9999-12-31 + 1 day overflowed (a 500; issue 17)
        raise InvalidInput("at most a year ahead")
    else:
        until_at = datetime.combine(until + timedelta(days=1), time(0), zone(tzname))
    if until_at <= now:
        raise InvalidInput("the date must be in the future")
    if until_at - now > timedelta(days=366):
        raise InvalidInput("at most a year ahead")
    return conn.execute(
        "INSERT INTO away_periods (household_id, starts_at, until, source, set_by, note, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (household_id, now, until_at, source, actor.person_id, note, now),
    ).fetchone()[0]


def end_away(conn: psycopg.Connection, clock: Clock, actor: Person, household_id: str) -> None:
    require_household(conn, actor, household_id)
    now = as_datetime(clock.now())
    conn.execute(
        "UPDATE away_periods SET until = GREATEST(starts_at + interval '1 second', %s)"
        " WHERE household_id = %s AND until > %s",
        (now, household_id, now),
    )
