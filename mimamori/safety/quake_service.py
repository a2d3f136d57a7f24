"""Earthquake bulletins → safety checks: the I/O edge of ``safety.quake`` (psycopg, plain functions).

``feed`` reads one document (JMA XML or P2PQuake 551 JSON), decides per area (``safety.quake.decide``),
records what it did (``quake_documents``, ``quake_decisions``) and, per area, either starts the area's
safety check through ``safety.service.start_check`` or records a proposal (``quake_actions``, state
``open``) and tells the area's coordinators in the app. ``quake_actions`` has one row per (quake,
area): repeated and corrected bulletins of one quake never act twice for an area, also when two of
them are read at once (the quake's advisory lock and the primary key).

The check is started by the system, not a person: ``QuakeActor`` is a coordinator of exactly that area
with no person behind it (``person_id`` None, so ``safety_checks.started_by`` and the audit's actor are
NULL, which the schema reads as "the system"). ``start_check`` lets a coordinator start checks in their
own area only, so the system can start nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from mimamori.kernel.clock import Clock, as_datetime
from mimamori.kernel.db import fetch_dict, fetch_dicts
from mimamori.safety import quake
from mimamori.safety import service as safety_service
from mimamori.safety.models import Forbidden, InvalidInput, NotFound, SafetyError

_CODE = re.compile(r"^[0-9]{7}$")
_REGION_CODE = re.compile(r"^[0-9]{3}$")
MAX_PLACES = 500


@dataclass(frozen=True)
class QuakeActor:
    """The system starting an area's check after a quake: a coordinator of that one area, nobody's account."""

    area: str
    person_id: None = None
    role: str = "coordinator"
    household_id: None = None


# =============================================================================================
# Areas
# =============================================================================================


def _clean(values: Iterable[str], pattern: re.Pattern[str] | None, what: str) -> list[str]:
    out = list(dict.fromkeys(v.strip() for v in values if v and v.strip()))
    if len(out) > MAX_PLACES:
        raise InvalidInput(f"at most {MAX_PLACES} {what}")
    for v in out:
        if (pattern is not None and not pattern.match(v)) or len(v) > 100 or "\x00" in v:
            raise InvalidInput(f"{v!r} is not a valid {what[:-1]}")
    return out


def set_area(conn: psycopg.Connection, actor: Any, *, area: str, clock: Clock,
             municipality_codes: Sequence[str] = (), municipality_names: Sequence[str] = (),
             region_codes: Sequence[str] = (), region_names: Sequence[str] = (),
             threshold: str | int = quake.DEFAULT_THRESHOLD, mode: str = "start") -> quake.AreaRule:
    """Say how bulletins name an area, from which intensity its check starts, and whether it starts by
    itself or is proposed to the coordinator. Operators: any area; coordinators: their own."""
    if actor.role not in ("operator", "coordinator") or (actor.role == "coordinator" and actor.area != area):
        raise Forbidden("an operator, or the area's coordinator, sets how earthquakes start its check")
    area = (area or "").strip()
    if not area or len(area) > 200:
        raise InvalidInput("an area is 1..200 characters")
    try:
        scale = quake.parse_threshold(threshold)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    if mode not in ("start", "propose"):
        raise InvalidInput("mode is 'start' or 'propose'")
    codes = _clean(municipality_codes, _CODE, "municipality codes")
    names = _clean(municipality_names, None, "municipality names")
    rcodes = _clean(region_codes, _REGION_CODE, "region codes")
    rnames = _clean(region_names, None, "region names")
    if not (codes or names or rcodes or rnames):
        raise InvalidInput("give at least one municipality code or name (or region) of the area")
    conn.execute("""INSERT INTO quake_areas (area, municipality_codes, municipality_names, region_codes, region_names,
                                             threshold, mode, updated_at)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (area) DO UPDATE SET municipality_codes = EXCLUDED.municipality_codes,
                      municipality_names = EXCLUDED.municipality_names, region_codes = EXCLUDED.region_codes,
                      region_names = EXCLUDED.region_names, threshold = EXCLUDED.threshold, mode = EXCLUDED.mode,
                      updated_at = EXCLUDED.updated_at""",
                 (area, codes, names, rcodes, rnames, scale, mode, as_datetime(clock.now())))
    return quake.AreaRule(area, frozenset(codes), frozenset(names), frozenset(rcodes), frozenset(rnames), scale,
                          "propose" if mode == "propose" else "start")


def area_rules(conn: psycopg.Connection) -> list[quake.AreaRule]:
    return [quake.AreaRule(r["area"], frozenset(r["municipality_codes"]), frozenset(r["municipality_names"]),
                           frozenset(r["region_codes"]), frozenset(r["region_names"]), int(r["threshold"]),
                           "propose" if r["mode"] == "propose" else "start")
            for r in fetch_dicts(conn, "SELECT * FROM quake_areas ORDER BY area")]


# =============================================================================================
# Reading a document
# =============================================================================================


def _acted(conn: psycopg.Connection, quake_id: str) -> dict[str, str]:
    return {r["area"]: r["action"] for r in fetch_dicts(conn, "SELECT area, action FROM quake_actions WHERE quake_id = %s",
                                                        (quake_id,))}


def _previous(conn: psycopg.Connection, document_id: str) -> list[dict[str, Any]]:
    return [{"area": r["area"], "decision": r["decision"], "why": r["why"], "intensity": quake.scale_name(r["scale"]),
             "matched": list(r["matched"]), "check_id": r["check_id"]}
            for r in fetch_dicts(conn, "SELECT * FROM quake_decisions WHERE document_id = %s ORDER BY decision_id",
                                 (document_id,))]


def feed(conn: psycopg.Connection, data: bytes, *, clock: Clock, links: safety_service.Links,
         dry_run: bool = False, replay: bool = False) -> dict[str, Any]:
    """Read one bulletin and act on it (or, with ``dry_run``, only say what it would do). A bulletin read
    hours after it was issued pages nobody, unless ``replay`` (an operator replays an archive on purpose:
    a drill of the service, the demo). Raises ``quake.QuakeDocumentError`` for a document it cannot read
    (nothing is recorded then)."""
    report = quake.parse(data)
    result: dict[str, Any] = {"document": report.as_json(), "dry_run": dry_run, "duplicate": False}
    with conn.transaction():
        # one quake's bulletins are read one at a time, so two of them cannot both start an area's check
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('mimamori.quake'), hashtext(%s))", (report.quake_id,))
        if fetch_dict(conn, "SELECT 1 AS x FROM quake_documents WHERE document_id = %s", (report.document_id,)):
            result["duplicate"] = True
            result["decisions"] = _previous(conn, report.document_id)
            return result
        decisions = quake.decide(report, area_rules(conn), _acted(conn, report.quake_id),
                                 now=None if replay else clock.now())
        if dry_run:
            result["decisions"] = [{**d.as_json(), "check_id": None} for d in decisions]
            return result
        now = clock.now()
        conn.execute("""INSERT INTO quake_documents (document_id, quake_id, source, kind, status, info_type, issued_at,
                                                     max_scale, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                     (report.document_id, report.quake_id, report.source, report.kind, report.status, report.info_type,
                      report.issued_at, report.max_scale, as_datetime(now)))
        out = []
        for d in decisions:
            decision, why, check_id = _act(conn, report, d, clock=clock, links=links)
            conn.execute("""INSERT INTO quake_decisions (document_id, quake_id, area, decision, why, scale, matched,
                                                         check_id, decided_at)
                            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                         (report.document_id, report.quake_id, d.area, decision, why, d.scale, list(d.matched), check_id,
                          as_datetime(now)))
            out.append({**d.as_json(), "decision": decision, "why": why, "check_id": check_id})
        result["decisions"] = out
    return result


def _act(conn: psycopg.Connection, report: quake.QuakeReport, d: quake.AreaDecision, *, clock: Clock,
         links: safety_service.Links) -> tuple[str, str, int | None]:
    """Carry out one decision; returns what was done (a check that could not start is 'failed', with why)."""
    now = clock.now()
    if d.decision == "cancelled":
        withdrawn = conn.execute("""UPDATE quake_actions SET state = 'withdrawn', decided_at = %s
                                    WHERE quake_id = %s AND state = 'open'""", (as_datetime(now), report.quake_id)).rowcount
        return d.decision, f"{d.why} ({withdrawn} proposal(s) withdrawn)", None
    if not d.acts or d.area is None:
        return d.decision, d.why, None
    message = quake.check_message(d)
    if d.decision == "propose":
        conn.execute("""INSERT INTO quake_actions (quake_id, area, action, document_id, scale, message, state, created_at)
                        VALUES (%s, %s, 'propose', %s, %s, %s, 'open', %s)""",
                     (report.quake_id, d.area, report.document_id, d.scale, message, as_datetime(now)))
        _tell_coordinators(conn, d, report, now, notice="quake_proposal",
                           title=f"地震: {d.area}で震度{quake.scale_name(d.scale)} — 安否確認を始めますか？",
                           body=f"{d.why}。提案された安否確認のメッセージ: {message}")
        return d.decision, f"{d.why}; proposed to the area's coordinator", None
    try:
        with conn.transaction():  # a savepoint: a check that cannot start leaves the record intact
            check_id = safety_service.start_check(conn, QuakeActor(d.area), message=message, clock=clock, links=links,
                                                  area=d.area)
            conn.execute("""INSERT INTO quake_actions (quake_id, area, action, document_id, scale, message, check_id,
                                                       state, created_at)
                            VALUES (%s, %s, 'start', %s, %s, %s, %s, 'started', %s)""",
                         (report.quake_id, d.area, report.document_id, d.scale, message, check_id, as_datetime(now)))
    except SafetyError as exc:
        return "failed", f"{d.why}; the check could not start: {exc.message}", None
    # the coordinators learn that the system started their area's check (its board is theirs to follow)
    _tell_coordinators(conn, d, report, now, notice="quake_check_started", check_id=check_id,
                       title=f"地震: {d.area}で震度{quake.scale_name(d.scale)} — 安否確認を自動で始めました",
                       body=f"{d.why}。メッセージ: {message}")
    return d.decision, d.why, check_id


def _tell_coordinators(conn: psycopg.Connection, d: quake.AreaDecision, report: quake.QuakeReport, now: float, *,
                       notice: str, title: str, body: str, check_id: int | None = None) -> None:
    conn.execute("""INSERT INTO notifications (person_id, notice, urgent, title, body, data, created_at)
                    SELECT person_id, %s, true, %s, %s, %s, %s FROM people
                    WHERE role = 'coordinator' AND area = %s""",
                 (notice, title, body, Jsonb({"quake_id": report.quake_id, "area": d.area, "check_id": check_id}),
                  as_datetime(now), d.area))


# =============================================================================================
# Proposals (mode 'propose')
# =============================================================================================


def list_proposals(conn: psycopg.Connection, actor: Any, *, state: str = "open") -> list[dict[str, Any]]:
    """Open proposals the actor may act on: an operator all, a coordinator their area's."""
    if actor.role not in ("operator", "coordinator"):
        raise Forbidden("only a coordinator or an operator sees earthquake proposals")
    where, params = ("TRUE", {}) if actor.role == "operator" else ("area = %(area)s", {"area": actor.area})
    return fetch_dicts(conn, f"""SELECT quake_id, area, scale, message, state, created_at, check_id FROM quake_actions
                                 WHERE action = 'propose' AND state = %(state)s AND {where}
                                 ORDER BY created_at, area""", {**params, "state": state})


def _proposal(conn: psycopg.Connection, actor: Any, quake_id: str, area: str) -> dict[str, Any]:
    if actor.role not in ("operator", "coordinator") or (actor.role == "coordinator" and actor.area != area):
        raise Forbidden("an operator, or the area's coordinator, decides on its earthquake proposal")
    row = fetch_dict(conn, """SELECT * FROM quake_actions WHERE quake_id = %s AND area = %s AND action = 'propose'
                              FOR UPDATE""", (quake_id, area))
    if row is None:
        raise NotFound("no such earthquake proposal")
    if row["state"] != "open":
        raise InvalidInput(f"the proposal is already {row['state']}")
    return row


def accept_proposal(conn: psycopg.Connection, actor: Any, quake_id: str, area: str, *, clock: Clock,
                    links: safety_service.Links, message: str | None = None) -> int:
    """The coordinator (or an operator) starts the proposed check, with their own rights."""
    with conn.transaction():
        row = _proposal(conn, actor, quake_id, area)
        check_id = safety_service.start_check(conn, actor, message=message or row["message"], clock=clock, links=links,
                                              area=area)
        conn.execute("""UPDATE quake_actions SET state = 'accepted', check_id = %s, decided_at = %s, decided_by = %s
                        WHERE quake_id = %s AND area = %s""",
                     (check_id, as_datetime(clock.now()), actor.person_id, quake_id, area))
    return check_id


def dismiss_proposal(conn: psycopg.Connection, actor: Any, quake_id: str, area: str, *, clock: Clock) -> None:
    with conn.transaction():
        _proposal(conn, actor, quake_id, area)
        conn.execute("""UPDATE quake_actions SET state = 'dismissed', decided_at = %s, decided_by = %s
                        WHERE quake_id = %s AND area = %s""",
                     (as_datetime(clock.now()), actor.person_id, quake_id, area))
