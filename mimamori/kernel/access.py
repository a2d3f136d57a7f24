"""Who may see and act on what: the service's privacy boundary, written once.

Every page, JSON API, live stream and stage (alerts, safety) asks here. Each rule exists as a SQL
predicate fragment for lists (``Predicate``: a WHERE fragment over named aliases and its parameters,
never interpolated values), and the answer for one object is that same fragment asked about one row,
so a list and a page can never disagree.

The rule (DESIGN.md, "People"):

- **operator**: everything (they run the service).
- **coordinator**: the households of their area, and the devices, alerts, safety checks and area
  outages there; plus, like a watcher, the households whose team they are on (a 町会長 may be on a
  friend's team in another area). *Managing* (devices, team, chain, deletion, export, starting a safety
  check) is for the coordinator of the household's **area** only, never for a team member.
- **watcher**: only the households whose team they are on, and of those only the alerts a team acts
  on (welfare alerts and a safety check's follow-up), not technical ones (a device offline is the
  coordinator's, DESIGN.md "Detector"); an area outage only as a banner over their households' areas.
- **resident**: their own household (its page, who viewed it, its safety checks, their own answer
  links), never the team's alerts about them (the team's coordination; their export holds their data).
- anyone else (no role, a coordinator without area and team): nothing.

Contact details (address, phone numbers) are narrower: the household's team and its own resident
only; an area coordinator or operator not on the team learns only that they are registered.
Names on a team timeline: the household's team and residents, the area's coordinators, the reader.

What was written four times before and differed (issue 15):

1. app (``app/scope.py``): a coordinator saw only their area, not a household of another area whose
   team they are on, while alerts and safety let them (area or team). Now: area or team, as above; but
   alerts let such a team member *edit the chain* of that other area's household (role checked, area
   not): managing now needs the area.
2. alerts: a watcher saw and could act on every incident of their households, technical ones
   (``device_offline``) included, which the app hid and the technical chain never sends them. Now: team
   kinds only (``TEAM_INCIDENT_KINDS``).
3. residents: the app and safety let residents see their own household, alerts and the app's incident
   pages did not; the live stream decided on its own. Now written once: household and checks yes,
   incidents no.
4. a coordinator without area: app nothing; alerts and safety their teams. Now: their teams.

Out-of-scope objects are reported as "not found" by the ``require_*`` functions (existence does not
leak); in-scope but not allowed is "forbidden".
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import psycopg

from mimamori.kernel.errors import Forbidden, NotFound

__all__ = [
    "TEAM_INCIDENT_KINDS",
    "Predicate",
    "Viewer",
    "area_notice_sql",
    "check_sql",
    "household_sql",
    "incident_sql",
    "managed_household_sql",
    "manages",
    "may_act_for_household",
    "may_manage_area",
    "may_manage_household",
    "may_see_check",
    "may_see_contact",
    "may_see_device",
    "may_see_household",
    "may_see_incident",
    "require_area",
    "require_household",
    "require_incident",
    "require_manage_household",
    "require_manager",
    "require_resident_or_manager",
    "unpaired_device_sql",
    "visible_people_sql",
]

#: Incidents a household's team acts on; the others (device_offline, area_outage) are the coordinator's.
TEAM_INCIDENT_KINDS: Final = ("inactivity", "long_on", "safety_check")

#: A WHERE fragment and its parameters (parameter names start with ``acc_``; merge with your own).
Predicate = tuple[str, dict[str, Any]]


class Viewer(Protocol):
    """Whoever looks or acts: the app's ``Person`` and the stages' ``Actor`` fit (``household_id``,
    a resident's home, is read with ``getattr`` where a stage's actor has none).
    """

    @property
    def person_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def area(self) -> str | None: ...


def _home(viewer: Viewer) -> str | None:
    return getattr(viewer, "household_id", None)


def _on_team(household: str) -> str:
    return f"EXISTS (SELECT 1 FROM household_watchers acc_w WHERE acc_w.household_id = {household} AND acc_w.person_id = %(acc_me)s)"


def manages(viewer: Viewer) -> bool:
    """Operators and coordinators manage (each within the rules below); watchers and residents do not."""
    return viewer.role in ("operator", "coordinator")


def household_sql(viewer: Viewer, alias: str = "h") -> Predicate:
    """``households AS <alias>`` the viewer may see."""
    me = {"acc_me": viewer.person_id}
    if viewer.role == "operator":
        return "TRUE", {}
    if viewer.role == "coordinator":
        return f"({alias}.area = %(acc_area)s OR {_on_team(alias + '.household_id')})", {**me, "acc_area": viewer.area}
    if viewer.role == "watcher":
        return _on_team(f"{alias}.household_id"), me
    if viewer.role == "resident" and _home(viewer) is not None:
        return f"{alias}.household_id = %(acc_home)s", {"acc_home": _home(viewer)}
    return "FALSE", {}


def managed_household_sql(viewer: Viewer, alias: str = "h") -> Predicate:
    """``households AS <alias>`` the viewer manages (device problems, area overview): the operator all,
    a coordinator their area's.
    """
    if viewer.role == "operator":
        return "TRUE", {}
    if viewer.role == "coordinator" and viewer.area is not None:
        return f"{alias}.area = %(acc_area)s", {"acc_area": viewer.area}
    return "FALSE", {}


def incident_sql(viewer: Viewer, alias: str = "i") -> Predicate:
    """``incidents AS <alias>`` the viewer may see and act on (no join needed: the household's area is
    looked up; an area outage has no household and its own area).
    """
    me = {"acc_me": viewer.person_id, "acc_team_kinds": list(TEAM_INCIDENT_KINDS)}
    as_team = f"({alias}.kind = ANY(%(acc_team_kinds)s) AND {_on_team(alias + '.household_id')})"
    if viewer.role == "operator":
        return "TRUE", {}
    if viewer.role == "coordinator":
        area = f"COALESCE((SELECT acc_h.area FROM households acc_h WHERE acc_h.household_id = {alias}.household_id), {alias}.area)"
        return f"({area} = %(acc_area)s OR {as_team})", {**me, "acc_area": viewer.area}
    if viewer.role == "watcher":
        return as_team, me
    return "FALSE", {}


def area_notice_sql(viewer: Viewer, alias: str = "i") -> Predicate:
    """Area-wide incidents (``incidents AS <alias>`` with an area: outages) shown as a banner: over the
    viewer's own area (coordinator) or the areas of the households they may see.
    """
    if viewer.role == "operator":
        return "TRUE", {}
    where, params = household_sql(viewer, "acc_nh")
    own = f"{alias}.area = %(acc_area)s OR " if viewer.role == "coordinator" else ""
    return (f"({own}{alias}.area IN (SELECT acc_nh.area FROM households acc_nh WHERE {where}))",
            {**params, "acc_area": viewer.area})


def check_sql(viewer: Viewer, alias: str = "c") -> Predicate:
    """``safety_checks AS <alias>`` holding at least one household the viewer may see."""
    where, params = household_sql(viewer, "acc_ch")
    if where == "TRUE":
        return "TRUE", {}
    exists = (f"EXISTS (SELECT 1 FROM safety_answers acc_ca JOIN households acc_ch ON acc_ch.household_id = acc_ca.household_id"
              f" WHERE acc_ca.check_id = {alias}.check_id AND {where})")
    return exists, params


def unpaired_device_sql(viewer: Viewer, gateway: str = "g") -> Predicate:
    """Gateways (``gateways AS <gateway>``) a manager may bind devices to, and so the unpaired devices
    that came through them (LEFT JOIN the gateway): a gateway of their area, or one placed nowhere yet
    (a new home gateway). A home gateway's area is its household's (issue 17).
    """
    if viewer.role == "operator":
        return "TRUE", {}
    if viewer.role != "coordinator" or viewer.area is None:
        return "FALSE", {}
    area = (f"COALESCE({gateway}.area, (SELECT acc_gh.area FROM households acc_gh"
            f" WHERE acc_gh.household_id = {gateway}.household_id))")
    return f"({area} IS NULL OR {area} = %(acc_area)s)", {"acc_area": viewer.area}


def visible_people_sql(viewer: Viewer, household_id: str | None, area: str | None, alias: str = "p") -> Predicate:
    """``people AS <alias>`` whose names the viewer may read on a household's team timeline: its team,
    its residents, the area's coordinators, and the viewer. Others (an operator standing in, a resident
    of another home) stay unnamed.
    """
    where = (f"({alias}.person_id = %(acc_me)s"
             f" OR EXISTS (SELECT 1 FROM household_watchers acc_w WHERE acc_w.person_id = {alias}.person_id"
             f"            AND acc_w.household_id = %(acc_vh)s)"
             f" OR ({alias}.role = 'coordinator' AND {alias}.area = %(acc_va)s)"
             f" OR ({alias}.role = 'resident' AND {alias}.household_id = %(acc_vh)s))")
    return where, {"acc_me": viewer.person_id, "acc_vh": household_id, "acc_va": area}


# --- one object -----------------------------------------------------------------------------------


def _exists(conn: psycopg.Connection, sql: str, params: dict[str, Any]) -> bool:
    row = conn.execute(f"SELECT EXISTS ({sql})", params).fetchone()
    return bool(row and row[0])


def may_see_household(conn: psycopg.Connection, viewer: Viewer, household_id: str) -> bool:
    where, params = household_sql(viewer)
    return _exists(conn, f"SELECT 1 FROM households h WHERE h.household_id = %(acc_id)s AND {where}",
                   {**params, "acc_id": household_id})


def may_see_incident(conn: psycopg.Connection, viewer: Viewer, incident_id: int) -> bool:
    """See it, and act on it (claim, comment, resolve): the same people."""
    where, params = incident_sql(viewer)
    return _exists(conn, f"SELECT 1 FROM incidents i WHERE i.incident_id = %(acc_id)s AND {where}",
                   {**params, "acc_id": incident_id})


def may_see_check(conn: psycopg.Connection, viewer: Viewer, check_id: int) -> bool:
    where, params = check_sql(viewer)
    return _exists(conn, f"SELECT 1 FROM safety_checks c WHERE c.check_id = %(acc_id)s AND {where}",
                   {**params, "acc_id": check_id})


def may_see_device(conn: psycopg.Connection, viewer: Viewer, device_id: str) -> bool:
    """A paired device: whoever may see its household; an unpaired one: the managers who may pair it."""
    hwhere, hparams = household_sql(viewer)
    dwhere, dparams = unpaired_device_sql(viewer)
    return _exists(
        conn,
        "SELECT 1 FROM devices d LEFT JOIN gateways g ON g.gateway_id = d.gateway_id"
        " LEFT JOIN households h ON h.household_id = d.household_id"
        f" WHERE d.device_id = %(acc_id)s AND CASE WHEN d.household_id IS NULL THEN {dwhere} ELSE {hwhere} END",
        {**hparams, **dparams, "acc_id": device_id},
    )


def may_act_for_household(conn: psycopg.Connection, viewer: Viewer, household_id: str) -> bool:
    """The team's business about a household (its escalation chain, who is alerted in which order):
    whoever may see the household, except its resident.
    """
    return viewer.role != "resident" and may_see_household(conn, viewer, household_id)


def may_manage_area(viewer: Viewer, area: str | None) -> bool:
    """Acting for a whole area (registering a household there, starting its safety check)."""
    if viewer.role == "operator":
        return True
    return viewer.role == "coordinator" and viewer.area is not None and area == viewer.area


def may_manage_household(conn: psycopg.Connection, viewer: Viewer, household_id: str) -> bool:
    """Devices, team, chain, deletion, export for the resident: the operator and the area's coordinator
    (being on the team is not enough).
    """
    if viewer.role == "operator":
        return True
    if viewer.role != "coordinator" or viewer.area is None:
        return False
    return _exists(conn, "SELECT 1 FROM households h WHERE h.household_id = %(acc_id)s AND h.area = %(acc_area)s",
                   {"acc_id": household_id, "acc_area": viewer.area})


def may_see_contact(conn: psycopg.Connection, viewer: Viewer, household_id: str) -> bool:
    """Address and phone numbers: the household's team and its own resident (not the role: the team)."""
    if viewer.role == "resident":
        return _home(viewer) == household_id
    return _exists(conn, "SELECT 1 FROM household_watchers WHERE household_id = %(acc_id)s AND person_id = %(acc_me)s",
                   {"acc_id": household_id, "acc_me": viewer.person_id})


# --- the same, raising ----------------------------------------------------------------------------


def require_household(conn: psycopg.Connection, viewer: Viewer, household_id: str) -> None:
    if not may_see_household(conn, viewer, household_id):
        raise NotFound("household not found")


def require_incident(conn: psycopg.Connection, viewer: Viewer, incident_id: int) -> None:
    if not may_see_incident(conn, viewer, incident_id):
        raise NotFound(f"incident {incident_id} not found")


def require_manager(viewer: Viewer) -> None:
    if not manages(viewer):
        raise Forbidden("only a coordinator or operator may do this")


def require_manage_household(conn: psycopg.Connection, viewer: Viewer, household_id: str) -> None:
    """Not found when out of sight, forbidden when seen but not managed."""
    require_household(conn, viewer, household_id)
    require_manager(viewer)
    if not may_manage_household(conn, viewer, household_id):
        raise Forbidden("only the area's coordinator or an operator may do this")


def require_resident_or_manager(conn: psycopg.Connection, viewer: Viewer, household_id: str) -> None:
    """The view log and exports are the resident's, and their managers' acting for them."""
    require_household(conn, viewer, household_id)
    if viewer.role == "resident" or may_manage_household(conn, viewer, household_id):
        return
    raise Forbidden("for the resident and the area's coordinator")


def require_area(viewer: Viewer, area: str | None) -> None:
    """A coordinator acts only in their own area."""
    require_manager(viewer)
    if not may_manage_area(viewer, area):
        raise Forbidden("outside your area")
