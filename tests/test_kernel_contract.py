"""``mimamori.kernel.contract`` held against the migrations as applied to a real database.

A migration that adds, renames or drops a kind, a channel or a trigger without the contract module
(or the reverse) fails here, with the constraint, view, trigger or function named.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from mimamori.kernel import contract

ROOT = Path(__file__).resolve().parents[1]

#: (table, check constraint) → the contract's set of the values it accepts.
CHECKED_VOCABULARY: dict[tuple[str, str], frozenset[str]] = {
    ("events", "events_kind_check"): contract.STORED_EVENT_KINDS,
    ("devices", "devices_kind_check"): contract.DEVICE_KINDS,
    ("device_state", "device_state_power_check"): contract.POWER_KINDS,
    ("gateways", "gateways_status_check"): contract.GATEWAY_STATUSES,
    ("incidents", "incidents_kind_check"): contract.INCIDENT_KINDS,
    ("incidents", "incidents_status_check"): contract.INCIDENT_STATUSES,
    ("incidents", "incidents_outcome_check"): contract.OUTCOMES,
    ("away_periods", "away_periods_source_check"): contract.AWAY_SOURCES,
    ("people", "people_role_check"): contract.ROLES,
    ("invitations", "invitations_role_check"): contract.ROLES,
    ("resident_check_links", "resident_check_links_answer_check"): frozenset(contract.RESIDENT_ANSWERS),
    ("safety_answers", "safety_answers_state_check"): contract.SAFETY_ANSWER_STATES,
    ("outbox", "outbox_source_check"): contract.OUTBOX_SOURCES,
    ("outbox", "outbox_status_check"): contract.DELIVERY_STATUSES,
    ("person_channels", "person_channels_kind_check"): contract.CHANNEL_KINDS,
}
#: Partial unique indexes that make an incident unique while open: their predicate names the open statuses.
OPEN_INCIDENT_INDEXES = ("incidents_one_open_per_household_kind", "incidents_one_open_area_outage")

_TEXT_LITERAL = re.compile(r"'([^']*)'::text")
_NOTIFY = re.compile(r"pg_notify\(\s*'([^']+)'", re.IGNORECASE)
_CODE_CHANNEL = re.compile(r"""(?:LISTEN\s+|pg_notify\(\s*['"]?)(mimamori_\w+)""", re.IGNORECASE)


def _literals(sql: str) -> set[str]:
    return set(_TEXT_LITERAL.findall(sql))


def _activity_view_definition(conn: psycopg.Connection) -> str:
    """The query behind ``activity_15m``: a continuous aggregate's own query under TimescaleDB (its user
    view is a union with the materialised part), else the plain view's.
    """
    has_timescale = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if has_timescale and has_timescale[0]:
        row = conn.execute("SELECT view_definition FROM timescaledb_information.continuous_aggregates "
                           "WHERE view_name = 'activity_15m'").fetchone()
        if row:
            return str(row[0])
    row = conn.execute("SELECT pg_get_viewdef('activity_15m'::regclass)").fetchone()
    assert row, "activity_15m is missing"
    return str(row[0])


def contract_mismatches(conn: psycopg.Connection) -> list[str]:
    """Every way the database and ``mimamori.kernel.contract`` disagree, one line each (empty: they agree)."""
    problems: list[str] = []
    for (table, name), expected in CHECKED_VOCABULARY.items():
        row = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s AND conrelid = %s::regclass",
                           (name, table)).fetchone()
        if row is None:
            problems.append(f"{table}: check constraint {name} is missing")
        elif _literals(row[0]) != set(expected):
            problems.append(f"{table}.{name}: database {sorted(_literals(row[0]))} != contract {sorted(expected)}")

    for index in OPEN_INCIDENT_INDEXES:
        row = conn.execute("SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = %s::regclass", (index,)).fetchone()
        found = _literals(row[0]) - contract.INCIDENT_KINDS if row else set()
        if found != set(contract.OPEN_STATUSES):
            problems.append(f"index {index}: open statuses {sorted(found)} != contract {sorted(contract.OPEN_STATUSES)}")

    view_kinds = _literals(_activity_view_definition(conn))
    if view_kinds != set(contract.ACTIVITY_KINDS):
        problems.append(f"activity_15m counts kinds {sorted(view_kinds)} != contract ACTIVITY_KINDS {sorted(contract.ACTIVITY_KINDS)}")

    triggers = {(t, g, f) for t, g, f in conn.execute(
        """SELECT c.relname, t.tgname, p.proname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT t.tgisinternal AND n.nspname = 'public'""").fetchall()}
    declared = {(h.table, h.trigger, h.function) for h in contract.HANDOFFS}
    problems += [f"trigger {g} on {t} (function {f}) is not in contract.HANDOFFS" for t, g, f in sorted(triggers - declared)]
    problems += [f"contract.HANDOFFS names trigger {g} on {t} (function {f}); the database lacks it"
                 for t, g, f in sorted(declared - triggers)]

    sources = dict(conn.execute(
        "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "JOIN pg_language l ON l.oid = p.prolang WHERE n.nspname = 'public' AND l.lanname IN ('plpgsql', 'sql')").fetchall())
    for handoff in contract.HANDOFFS:
        source = sources.get(handoff.function, "")
        if handoff.channel and handoff.channel not in _NOTIFY.findall(source):
            problems.append(f"function {handoff.function} does not NOTIFY {handoff.channel} (contract.HANDOFFS says it does)")
        if handoff.writes and not re.search(rf"\bUPDATE\s+{handoff.writes}\b", source, re.IGNORECASE):
            problems.append(f"function {handoff.function} does not update {handoff.writes} (contract.HANDOFFS says it does)")
    notified = {channel for source in sources.values() for channel in _NOTIFY.findall(source)}
    problems += [f"a database function notifies {c}, which is not in contract.CHANNELS" for c in sorted(notified - contract.CHANNELS)]
    by_triggers = contract.CHANNELS - contract.CHANNELS_NOTIFIED_BY_CODE
    problems += [f"contract channel {c} is notified by no database function" for c in sorted(by_triggers - notified)]
    return problems


@pytest.mark.integration
def test_the_database_keeps_the_contract(conn: psycopg.Connection) -> None:
    assert contract_mismatches(conn) == []


@pytest.mark.integration
def test_a_migration_that_changes_a_kind_alone_is_caught(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE incidents DROP CONSTRAINT incidents_kind_check")
    conn.execute("ALTER TABLE incidents ADD CONSTRAINT incidents_kind_check CHECK (kind IN ('inactivity', 'long_on', 'fall'))")
    conn.execute("CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('mimamori_elsewhere', ''); "
                 "RETURN NULL; END $$")
    conn.execute("CREATE TRIGGER events_shout AFTER INSERT ON device_state FOR EACH ROW EXECUTE FUNCTION shout()")
    conn.execute("DROP TRIGGER incidents_opened_notify ON incidents")
    problems = "\n".join(contract_mismatches(conn))
    assert "incidents.incidents_kind_check" in problems
    assert "'fall'" in problems
    assert "trigger events_shout on device_state" in problems
    assert "mimamori_elsewhere" in problems
    assert "incidents_opened_notify" in problems


@pytest.mark.unit
def test_the_contract_is_consistent_with_itself() -> None:
    assert contract.WELFARE_KINDS.isdisjoint(contract.TECHNICAL_KINDS)
    assert contract.DETECTOR_KINDS < contract.INCIDENT_KINDS
    assert contract.OPEN_STATUSES < contract.INCIDENT_STATUSES
    assert set(contract.TEAM_OUTCOMES).isdisjoint(contract.SYSTEM_OUTCOMES)
    assert contract.POWER_KINDS <= contract.ACTIVITY_KINDS
    assert contract.CHANNELS_NOTIFIED_BY_CODE <= contract.CHANNELS
    assert {h.channel for h in contract.HANDOFFS if h.channel} <= contract.CHANNELS
    assert len({(h.table, h.trigger) for h in contract.HANDOFFS}) == len(contract.HANDOFFS)


@pytest.mark.unit
@pytest.mark.parametrize("package", ["mimamori"])
def test_code_listens_and_notifies_only_on_contract_channels(package: str) -> None:
    """A LISTEN or pg_notify in Python names a channel of the contract (the SQL side is checked above)."""
    stray = []
    for path in sorted((ROOT / package).rglob("*.py")):
        stray += [(path.relative_to(ROOT).as_posix(), c) for c in _CODE_CHANNEL.findall(path.read_text(encoding="utf-8"))
                  if c not in contract.CHANNELS]
    assert stray == []
