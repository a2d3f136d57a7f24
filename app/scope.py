"""Who may see and do what. Enforced here, in the service layer, for pages and API alike.

- operator: everything;
- coordinator: households of their area (and the devices, teams and incidents there);
- watcher: only households whose team they are on;
- resident: their own household.
Households outside a person's scope are reported as "not found", so their existence does not leak.
"""

from __future__ import annotations

from typing import Any

import psycopg

from app.errors import Forbidden, NotFound
from app.people import Person


def household_scope_sql(person: Person, alias: str = "h") -> tuple[str, dict[str, Any]]:
    """A WHERE fragment limiting ``households AS <alias>`` to what ``person`` may see."""
    if person.role == "operator":
        return "TRUE", {}
    if person.role == "coordinator":
        return f"{alias}.area IS NOT DISTINCT FROM %(scope_area)s AND %(scope_area)s IS NOT NULL", {"scope_area": person.area}
    if person.role == "watcher":
        return (
            f"EXISTS (SELECT 1 FROM household_watchers sw WHERE sw.household_id = {alias}.household_id"
            " AND sw.person_id = %(scope_person)s)",
            {"scope_person": person.person_id},
        )
    if person.role == "resident":
        return f"{alias}.household_id = %(scope_household)s", {"scope_household": person.household_id}
    return "FALSE", {}


def can_view_household(conn: psycopg.Connection, person: Person, household_id: str) -> bool:
    where, params = household_scope_sql(person)
    row = conn.execute(
        f"SELECT 1 FROM households h WHERE h.household_id = %(hid)s AND {where}", {**params, "hid": household_id}
    ).fetchone()
    return row is not None


def require_view(conn: psycopg.Connection, person: Person, household_id: str) -> None:
    if not can_view_household(conn, person, household_id):
        raise NotFound("household not found")


def require_manage(conn: psycopg.Connection, person: Person, household_id: str) -> None:
    """Managing a household (devices, team, deletion) is for the operator and the area's coordinator."""
    require_view(conn, person, household_id)
    if not person.manages:
        raise Forbidden("only a coordinator or operator may do this")


def require_manager(person: Person) -> None:
    if not person.manages:
        raise Forbidden("only a coordinator or operator may do this")


def require_area(person: Person, area: str | None) -> None:
    """A coordinator acts only in their own area."""
    require_manager(person)
    if person.role == "coordinator" and (person.area is None or area != person.area):
        raise Forbidden("outside your area")
