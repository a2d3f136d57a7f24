"""Devices: unpaired devices that have sent events, pairing a device to a household (its past
events follow it), device problems and area outages for coordinators.
"""

from __future__ import annotations

from typing import Any

import psycopg

from mimamori.app.households.service import DEVICE_SILENT_AFTER
from mimamori.app.people import Person
from mimamori.kernel.access import area_notice_sql, managed_household_sql, require_manage_household, require_manager, unpaired_device_sql
from mimamori.kernel.clock import Clock, as_datetime
from mimamori.kernel.errors import Conflict, InvalidInput, NotFound

DEVICE_KINDS = ("bulb", "motion", "door", "plug")


def list_unpaired(conn: psycopg.Connection, person: Person) -> list[dict[str, Any]]:
    require_manager(person)
    where, params = unpaired_device_sql(person)
    rows = conn.execute(
        "SELECT d.device_id, d.gateway_id, d.first_seen_at, ds.last_seen_at,"
        " (SELECT count(*) FROM events e WHERE e.device_id = d.device_id) AS events"
        " FROM devices d LEFT JOIN gateways g USING (gateway_id) LEFT JOIN device_state ds USING (device_id)"
        f" WHERE d.household_id IS NULL AND {where} ORDER BY d.first_seen_at DESC NULLS LAST, d.device_id LIMIT 200",
        params,
    ).fetchall()
    return [dict(zip(("device_id", "gateway_id", "first_seen_at", "last_seen_at", "events"), r, strict=True)) for r in rows]


def _check_gateway(conn: psycopg.Connection, person: Person, gateway_id: str, household_id: str) -> None:
    """A gateway a device of ``household_id`` may be bound to, by ``person``: of the same household,
    or of no household and of the person's area (or none yet). Another area's: not found.
    """
    where, params = unpaired_device_sql(person)
    gw = conn.execute(f"SELECT g.household_id FROM gateways g WHERE g.gateway_id = %(gw)s AND {where}",
                      {**params, "gw": gateway_id}).fetchone()
    if gw is None:
        raise NotFound("gateway not found")  # another area's gateway: its existence does not leak
    if gw[0] is not None and gw[0] != household_id:
        raise Conflict("gateway belongs to another household")


def pair_device(conn: psycopg.Connection, clock: Clock, person: Person, *, device_id: str, household_id: str,
                kind: str | None = None, room: str | None = None, gateway_id: str | None = None) -> dict[str, Any]:
    """Attach a device to a household; its events stored while unpaired now count for the household.

    ``gateway_id`` binds a device entered before it ever reported to the gateway it will report
    through (issue 17: otherwise the first gateway that reports its id is taken).
    """
    require_manage_household(conn, person, household_id)
    if kind is not None and kind not in DEVICE_KINDS:
        raise InvalidInput("unknown device kind")
    device_id = device_id.strip()
    now = as_datetime(clock.now())
    if gateway_id is not None:
        _check_gateway(conn, person, gateway_id, household_id)
    with conn.transaction():
        row = conn.execute("SELECT household_id, gateway_id FROM devices WHERE device_id = %s FOR UPDATE",
                           (device_id,)).fetchone()
        if row is not None and gateway_id is not None and row[1] is not None and row[1] != gateway_id:
            raise Conflict("the device reports through another gateway: move it instead")
        if row is not None and row[0] is None and not person.is_operator:
            # Issue 17: only a device reaching the service through a gateway of one's area (or not placed yet).
            where, params = unpaired_device_sql(person)
            seen = conn.execute(f"SELECT 1 FROM devices d LEFT JOIN gateways g USING (gateway_id)"
                                f" WHERE d.device_id = %(d)s AND {where}", {**params, "d": device_id}).fetchone()
            if seen is None:
                raise NotFound("device not found")
        if row is None:
            # Entered or scanned before it ever reported: register it now.
            conn.execute(
                "INSERT INTO devices (device_id, gateway_id, household_id, kind, room, paired_at, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (device_id, gateway_id, household_id, kind, room, now, now),
            )
        elif row[0] is not None and row[0] != household_id:
            raise Conflict("device is paired to another household")
        else:
            conn.execute(
                "UPDATE devices SET household_id = %s, kind = COALESCE(%s, kind), room = COALESCE(%s, room),"
                " paired_at = %s, gateway_id = COALESCE(gateway_id, %s) WHERE device_id = %s",
                (household_id, kind, room, now, gateway_id, device_id),
            )
        moved = conn.execute(
            "UPDATE events SET household_id = %s WHERE device_id = %s AND household_id IS DISTINCT FROM %s",
            (household_id, device_id, household_id),
        ).rowcount
        # A home gateway without a household belongs to the household of its first paired device.
        conn.execute(
            "UPDATE gateways g SET household_id = %s FROM devices d WHERE d.device_id = %s"
            " AND g.gateway_id = d.gateway_id AND g.household_id IS NULL AND g.area IS NULL",
            (household_id, device_id),
        )
    return {"device_id": device_id, "household_id": household_id, "events_moved": moved}


def move_device(conn: psycopg.Connection, clock: Clock, person: Person, *, device_id: str, gateway_id: str,
                reason: str = "") -> dict[str, Any]:
    """Bind a paired device to another gateway (the home got a new gateway, the bulb moved room).

    Issue 17: ingest never moves a paired device (another gateway's events for it are dead letters),
    so this is the only way, and it is audited in ``device_moves``. The household's manager only, and
    only to a gateway of the same household, of their area, or not yet placed (a new home gateway).
    """
    device_id = device_id.strip()
    row = conn.execute("SELECT household_id, gateway_id FROM devices WHERE device_id = %s", (device_id,)).fetchone()
    if row is None or row[0] is None:
        raise NotFound("device not found")
    household_id, from_gateway = row
    require_manage_household(conn, person, household_id)
    _check_gateway(conn, person, gateway_id, household_id)
    now = as_datetime(clock.now())
    with conn.transaction():
        conn.execute("SELECT 1 FROM devices WHERE device_id = %s FOR UPDATE", (device_id,))
        conn.execute("UPDATE devices SET gateway_id = %s WHERE device_id = %s", (gateway_id, device_id))
        conn.execute(
            "INSERT INTO device_moves (at, actor, device_id, household_id, from_gateway, to_gateway, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (now, person.person_id, device_id, household_id, from_gateway, gateway_id, reason[:500]),
        )
    return {"device_id": device_id, "household_id": household_id, "from_gateway": from_gateway, "gateway_id": gateway_id}


def device_moves(conn: psycopg.Connection, person: Person, household_id: str) -> list[dict[str, Any]]:
    """The audit of a household's device moves (for whoever manages it)."""
    require_manage_household(conn, person, household_id)
    rows = conn.execute(
        "SELECT at, actor, device_id, from_gateway, to_gateway, reason FROM device_moves WHERE household_id = %s"
        " ORDER BY move_id", (household_id,)).fetchall()
    return [dict(zip(("at", "actor", "device_id", "from_gateway", "to_gateway", "reason"), r, strict=True)) for r in rows]


def set_blink_allowed(conn: psycopg.Connection, person: Person, device_id: str, allowed: bool | None) -> dict[str, Any]:
    """May the service switch this device (blink it for a resident or safety check)? ``None``: by its
    kind (bulbs yes, plugs no: a plug may power a heater or a fridge). The household's manager only
    (issue 13: off for plugs unless a coordinator turns it on).
    """
    row = conn.execute("SELECT household_id, kind FROM devices WHERE device_id = %s", (device_id,)).fetchone()
    if row is None or row[0] is None:
        raise NotFound("device not found")
    require_manage_household(conn, person, row[0])
    conn.execute("UPDATE devices SET blink_allowed = %s WHERE device_id = %s", (allowed, device_id))
    return {"device_id": device_id, "household_id": row[0], "kind": row[1], "blink_allowed": allowed,
            "blinks": allowed if allowed is not None else row[1] == "bulb"}


def unpair_device(conn: psycopg.Connection, person: Person, device_id: str) -> None:
    row = conn.execute("SELECT household_id FROM devices WHERE device_id = %s", (device_id,)).fetchone()
    if row is None or row[0] is None:
        raise NotFound("device not found")
    require_manage_household(conn, person, row[0])
    conn.execute("UPDATE devices SET household_id = NULL, paired_at = NULL WHERE device_id = %s", (device_id,))


def device_problems(conn: psycopg.Connection, clock: Clock, person: Person) -> list[dict[str, Any]]:
    """Paired devices in the person's scope that are silent or behind an offline gateway."""
    require_manager(person)
    where, params = managed_household_sql(person)
    now = as_datetime(clock.now())
    rows = conn.execute(
        "SELECT d.device_id, d.kind, d.room, h.household_id, h.display_name, g.gateway_id, g.status,"
        " GREATEST(ds.last_seen_at, ds.last_heartbeat_at) AS last"
        " FROM devices d JOIN households h USING (household_id) LEFT JOIN device_state ds USING (device_id)"
        " LEFT JOIN gateways g ON g.gateway_id = d.gateway_id"
        f" WHERE {where} AND (g.status = 'offline' OR ds.device_id IS NULL"
        "   OR GREATEST(ds.last_seen_at, ds.last_heartbeat_at) < %(silent)s)"
        " ORDER BY last NULLS FIRST LIMIT 500",
        {**params, "silent": now - DEVICE_SILENT_AFTER},
    ).fetchall()
    return [{"device_id": r[0], "kind": r[1], "room": r[2], "household_id": r[3], "household_name": r[4],
             "gateway_id": r[5], "problem": "gateway_offline" if r[6] == "offline" else "silent", "last_seen_at": r[7]}
            for r in rows]


def area_outages(conn: psycopg.Connection, person: Person) -> list[dict[str, Any]]:
    """Open area outages the person should see as a banner (their area, or all for operators)."""
    cond, params = area_notice_sql(person)
    rows = conn.execute(
        f"SELECT i.incident_id, i.area, i.opened_at, i.evidence FROM incidents i WHERE i.kind = 'area_outage'"
        f" AND i.status IN ('open', 'claimed') AND {cond} ORDER BY i.opened_at",
        params,
    ).fetchall()
    return [{"incident_id": r[0], "area": r[1], "opened_at": r[2], "evidence": r[3]} for r in rows]
