"""What a live change means for one person: parsing the NOTIFY payloads of ``mimamori_app_live``
(migrations 0031 and 0041; ids only) and deciding, with the same scope rules as every read, whether a batch
of changes touches anything the person may see. Plain functions, no threads, no HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from mimamori.app.people import Person
from mimamori.kernel import contract
from mimamori.kernel.access import household_sql, incident_sql

CHANNEL = contract.CHANNEL_APP_LIVE


@dataclass
class Changes:
    """A batch of changes, folded: which incidents, households, areas, people are concerned."""

    incident_ids: set[int] = field(default_factory=set)       # incidents and their timelines
    incident_households: set[str] = field(default_factory=set)  # status at a glance of these households
    incident_areas: set[str] = field(default_factory=set)       # area outages: banners and statuses
    away_households: set[str] = field(default_factory=set)
    notified_people: set[str] = field(default_factory=set)      # in-app notifications
    session_people: set[str] = field(default_factory=set)       # someone's session ended
    #: a household's safety-check answer or a home gateway's status (0041): whoever may see the household
    household_changes: set[str] = field(default_factory=set)
    #: the listener lost its connection: anything may have changed, every client refreshes
    resync: bool = False

    def __bool__(self) -> bool:
        return self.resync or any((self.incident_ids, self.incident_households, self.incident_areas,
                                   self.away_households, self.notified_people, self.session_people,
                                   self.household_changes))

    def add(self, payload: str) -> None:
        """Fold one NOTIFY payload in; anything malformed is ignored (it only ever costs a refresh)."""
        try:
            data = json.loads(payload)
            kind = data["t"]
        except (ValueError, TypeError, KeyError):
            return
        if kind in ("incident", "timeline") and isinstance(data.get("id"), int):
            self.incident_ids.add(data["id"])
            if isinstance(data.get("h"), str):
                self.incident_households.add(data["h"])
            if isinstance(data.get("a"), str):
                self.incident_areas.add(data["a"])
        elif kind == "away" and isinstance(data.get("h"), str):
            self.away_households.add(data["h"])
        elif kind in ("safety", "gateway") and isinstance(data.get("h"), str):
            self.household_changes.add(data["h"])
        elif kind == "notification" and isinstance(data.get("p"), str):
            self.notified_people.add(data["p"])
        elif kind == "session" and isinstance(data.get("p"), str):
            self.session_people.add(data["p"])


def fold(payloads: Iterable[str]) -> Changes:
    changes = Changes()
    for payload in payloads:
        changes.add(payload)
    return changes


def touches(conn: psycopg.Connection, person: Person, changes: Changes) -> bool:
    """Whether ``changes`` alter anything ``person`` may see (one query at most).

    Incidents and their timelines: the incident scope (watchers: their team's welfare alerts;
    residents: none). Statuses at a glance: a household's incident (device problem) or an area
    outage changes the home list of those who may see that household — not its resident, who does
    not see the team's alerts. Away periods, safety-check answers and home gateway statuses: anyone
    who may see the household (the safety board shows only households in the viewer's scope).
    Notifications: only their recipient.
    """
    if changes.resync or person.person_id in changes.notified_people:
        return True
    iwhere, iparams = incident_sql(person)
    hwhere, hparams = household_sql(person)
    households = changes.away_households | changes.household_changes
    areas: set[str] = set()
    if person.role != "resident":
        households |= changes.incident_households
        areas = changes.incident_areas
    if not (changes.incident_ids or households or areas):
        return False
    row = conn.execute(
        f"""SELECT EXISTS (SELECT 1 FROM incidents i LEFT JOIN households h ON h.household_id = i.household_id
                            WHERE i.incident_id = ANY(%(live_incidents)s) AND {iwhere})
                OR EXISTS (SELECT 1 FROM households h
                            WHERE (h.household_id = ANY(%(live_households)s) OR h.area = ANY(%(live_areas)s))
                              AND {hwhere})""",
        {**iparams, **hparams, "live_incidents": sorted(changes.incident_ids), "live_households": sorted(households),
         "live_areas": sorted(areas)},
    ).fetchone()
    return bool(row and row[0])
