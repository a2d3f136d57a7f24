"""The escalation engine the alert worker runs (psycopg, plain functions, no HTTP): ``adopt_new``
takes on newly opened incidents (snapshots the chain, runs the first steps), ``step_due`` advances
escalations whose ``next_step_at`` has come; claim timers, area outages, cancelling, and asking the
resident first (``_ask_residents``, the answer link sealed at rest).

Every pass is one transaction per batch, each incident in a savepoint of its own; the step's new
state, its outbox rows, its in-app notifications and its timeline rows commit together or not at all.
Times are the caller's clock.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from mimamori.alerts import metrics, policy
from mimamori.alerts.models import (
    ACTIVITY_KINDS,
    WELFARE_KINDS,
)
from mimamori.alerts.records import (
    _INCIDENT_SQL,
    _away,
    _chain_for,
    _enqueue,
    _epoch,
    _one,
    _rows,
    actor_name,
    add_timeline,
    enqueue_notice,
    load_team,
    stop_escalation,
)
from mimamori.kernel import outbox
from mimamori.kernel.clock import Clock, as_datetime

log = logging.getLogger(__name__)

_ADOPT_SQL = _INCIDENT_SQL + """
WHERE i.status = 'open' AND e.incident_id IS NULL
ORDER BY i.incident_id LIMIT %s FOR NO KEY UPDATE OF i SKIP LOCKED"""

_DUE_SQL = _INCIDENT_SQL + """
WHERE e.next_step_at <= %s
ORDER BY e.next_step_at LIMIT %s FOR NO KEY UPDATE OF i SKIP LOCKED"""


def _each_isolated(conn: psycopg.Connection, rows: list[dict[str, Any]], fn: Any) -> None:
    """Run ``fn(row)`` for each row in its own savepoint: one bad incident must not block the batch
    (it is logged and retried on the next pass). A lost connection still aborts everything.
    """
    for row in rows:
        try:
            with conn.transaction():
                fn(row)
        except psycopg.OperationalError:
            raise
        except Exception:
            log.exception("alert engine: incident %s failed; will retry", row["incident_id"])


def adopt_new(conn: psycopg.Connection, clock: Clock, worker_id: str, limit: int = 20, *, app_url: str = "",
              sealer: outbox.LinkSealer | None = None) -> int:
    """Take on newly opened incidents (up to ``limit``, one transaction): snapshot each one's chain
    and run its first steps. Returns how many it took. ``app_url``: the web app's public address, for
    the links in messages to residents (empty: links relative to the app).
    """
    now = clock.now()
    links = ResidentLinks(app_url, sealer)
    with conn.transaction():
        incidents = _rows(conn, _ADOPT_SQL, (limit,))
        _each_isolated(conn, incidents, lambda inc: _adopt(conn, inc, now, worker_id, links))
    return len(incidents)


def adopt_one(conn: psycopg.Connection, clock: Clock, worker_id: str, *, app_url: str = "",
              sealer: outbox.LinkSealer | None = None) -> int | None:
    """Take on one newly opened incident; its id, or None when there is none (tests, tools)."""
    now = clock.now()
    links = ResidentLinks(app_url, sealer)
    with conn.transaction():
        incidents = _rows(conn, _ADOPT_SQL, (1,))
        if not incidents:
            return None
        _adopt(conn, incidents[0], now, worker_id, links)
    return int(incidents[0]["incident_id"])


def step_one_due(conn: psycopg.Connection, clock: Clock, worker_id: str, *, app_url: str = "",
                 sealer: outbox.LinkSealer | None = None) -> int | None:
    """Advance one due escalation; its incident id, or None when nothing is due (tests, tools)."""
    now = clock.now()
    links = ResidentLinks(app_url, sealer)
    with conn.transaction():
        incidents = _rows(conn, _DUE_SQL, (as_datetime(now), 1))
        if not incidents:
            return None
        _step(conn, incidents[0], now, worker_id, links)
    return int(incidents[0]["incident_id"])


def _adopt(conn: psycopg.Connection, inc: dict[str, Any], now: float, worker_id: str, links: ResidentLinks) -> None:
    chain, source = _chain_for(conn, inc)
    created = _one(conn, """INSERT INTO alert_escalations (incident_id, household_id, chain, chain_source, state,
                                   status, next_step_at, started_at, updated_at, worker_id)
                            VALUES (%s, %s, %s, %s, '{}', 'running', %s, %s, %s, %s)
                            ON CONFLICT (incident_id) DO NOTHING RETURNING incident_id""",
                   (inc["incident_id"], inc["household_id"], Jsonb(chain), source, as_datetime(now),
                    as_datetime(now), as_datetime(now), worker_id))
    if created is None:  # another worker got there first
        return
    add_timeline(conn, inc["incident_id"], now, None, "escalation_started", "system", None,
              {"chain": chain, "chain_source": source, "worker": worker_id})
    if inc["kind"] in WELFARE_KINDS and inc["household_id"] and _away(conn, inc["household_id"], now):
        _cancel(conn, inc, policy.State(), now, "away", "away mode was on when the incident opened")
    else:
        _run_unless_outage(conn, inc, chain, policy.State(), now, worker_id, links)


def step_due(conn: psycopg.Connection, clock: Clock, worker_id: str, limit: int = 20, *, app_url: str = "",
             sealer: outbox.LinkSealer | None = None) -> int:
    """Advance escalations whose next step is due (up to ``limit``, one transaction)."""
    now = clock.now()
    links = ResidentLinks(app_url, sealer)
    with conn.transaction():
        incidents = _rows(conn, _DUE_SQL, (as_datetime(now), limit))
        _each_isolated(conn, incidents, lambda inc: _step(conn, inc, now, worker_id, links))
    return len(incidents)


def _step(conn: psycopg.Connection, inc: dict[str, Any], now: float, worker_id: str, links: ResidentLinks) -> None:
    esc = _one(conn, "SELECT * FROM alert_escalations WHERE incident_id = %s FOR UPDATE", (inc["incident_id"],))
    if esc is None:  # a row the same transaction just wrote or locked
        raise RuntimeError("esc: expected a row, found none")
    # the due row we saw may be stale (another worker advanced it before we locked): re-check
    if esc["next_step_at"] is None or esc["next_step_at"] > as_datetime(now) or esc["status"] == "done":
        return
    state = policy.State.from_json(esc["state"])
    if inc["status"] in ("resolved", "cancelled"):
        _closed_elsewhere(conn, inc, state, now)
    elif inc["status"] == "claimed":
        _claim_timer(conn, inc, esc["chain"], state, now, worker_id, links)
    else:
        _run_unless_outage(conn, inc, esc["chain"], state, now, worker_id, links)


def _set_escalation(conn: psycopg.Connection, incident_id: int, state: policy.State, status: str, next_at: float | None,
                    now: float, worker_id: str) -> None:
    conn.execute("""UPDATE alert_escalations SET state = %s, status = %s, next_step_at = %s, updated_at = %s, worker_id = %s
                    WHERE incident_id = %s""",
                 (Jsonb(state.to_json()), status, as_datetime(next_at) if next_at is not None else None, as_datetime(now),
                  worker_id, incident_id))


def _claim_timer(conn: psycopg.Connection, inc: dict[str, Any], chain: list[dict[str, Any]], state: policy.State,
                 now: float, worker_id: str, links: ResidentLinks) -> None:
    """A claim nobody resolved: remind the claimer, later reopen the incident to the team and resume."""
    claimed_at = _epoch(inc["claimed_at"]) or now
    claimer = inc["claimed_by"]
    what, next_at = policy.claim_due(chain, claimed_at, state.claim_reminded_at, now)
    key = f"{int(claimed_at * 1000)}"  # one reminder / reopening per claim
    by = actor_name(conn, claimer) if claimer else ""
    remind_s, grace_s = policy.claim_timeout(chain)
    if what is None:
        _set_escalation(conn, inc["incident_id"], state, "paused", next_at, now, worker_id)
    elif what == "remind":
        add_timeline(conn, inc["incident_id"], now, None, "claim_reminder", "system", None,
                  {"claimed_by": claimer, "claimed_minutes_ago": round((now - claimed_at) / 60, 1),
                   "reopen_in_minutes": grace_s / 60})
        if claimer:
            enqueue_notice(conn, inc, [claimer], f"claim_reminder.{key}", "claim_reminder", urgent=True, now=now, by=by)
        _set_escalation(conn, inc["incident_id"], replace(state, claim_reminded_at=now), "paused", next_at, now, worker_id)
    else:  # reopen
        conn.execute("""UPDATE incidents SET status = 'open', claimed_at = NULL, claimed_by = NULL, updated_at = %s
                        WHERE incident_id = %s""", (as_datetime(now), inc["incident_id"]))
        add_timeline(conn, inc["incident_id"], now, None, "claim_expired", "system", None,
                  {"claimed_by": claimer, "claimed_at": claimed_at, "timeout_minutes": remind_s / 60,
                   "grace_minutes": grace_s / 60})
        team = [p for p, _tier in load_team(conn, inc["household_id"], inc["eff_area"]).members]
        told = list(dict.fromkeys([*team, *state.notified, *([claimer] if claimer else [])]))
        reopened = {**inc, "status": "open", "claimed_by": None, "claimed_at": None}
        if told:
            enqueue_notice(conn, reopened, told, f"reopened.{key}", "reopened", urgent=True, now=now, by=by)
        add_timeline(conn, inc["incident_id"], now, None, "escalation_resumed", "system", None,
                  {"reason": "claim_expired", "step": state.step_key})
        _run_unless_outage(conn, reopened, chain, replace(state, claim_reminded_at=None), now, worker_id, links)


def _area_outage(conn: psycopg.Connection, inc: dict[str, Any]) -> int | None:
    """The open area-outage incident of a welfare incident's area, if any."""
    if inc["kind"] not in WELFARE_KINDS or not inc.get("eff_area"):
        return None
    row = _one(conn, """SELECT incident_id FROM incidents WHERE kind = 'area_outage' AND area = %s
                        AND status IN ('open', 'claimed') ORDER BY incident_id LIMIT 1""", (inc["eff_area"],))
    return int(row["incident_id"]) if row else None


def _run_unless_outage(conn: psycopg.Connection, inc: dict[str, Any], chain: list[dict[str, Any]], state: policy.State,
                       now: float, worker_id: str, links: ResidentLinks) -> None:
    """While the area's gateways are down the silence says nothing about the resident: a welfare
    escalation in flight pauses (timeline entry) and resumes where it was when the outage closes.
    """
    outage = _area_outage(conn, inc)
    if outage is not None:
        if state.paused_for is None:
            state = replace(state, paused_for=f"area_outage:{outage}")
            add_timeline(conn, inc["incident_id"], now, None, "escalation_paused", "system",
                      "area outage: the gateways of the area are offline", {"reason": "area_outage", "outage_incident": outage,
                                                                            "step": state.step_key})
        _set_escalation(conn, inc["incident_id"], state, "paused", now + policy.OUTAGE_RECHECK_S, now, worker_id)
        return
    if state.paused_for is not None:
        add_timeline(conn, inc["incident_id"], now, None, "escalation_resumed", "system", None,
                  {"reason": "area_outage_closed", "paused_for": state.paused_for, "step": state.step_key})
        state = replace(state, paused_for=None)
    _run(conn, inc, chain, state, now, worker_id, links)


def _closed_elsewhere(conn: psycopg.Connection, inc: dict[str, Any], state: policy.State, now: float) -> None:
    """The detector (or anyone outside this engine) closed the incident: stop, and tell who was alerted."""
    stop_escalation(conn, inc["incident_id"], "done", now)
    add_timeline(conn, inc["incident_id"], now, None, "escalation_stopped", "system", None,
              {"status": inc["status"], "outcome": inc["outcome"]})
    if state.notified and inc["closed_by"] is None:
        note = inc["outcome_note"] or inc["outcome"] or ""
        enqueue_notice(conn, inc, state.notified, "closed", "cancelled", urgent=True, now=now, note=note)


def _last_activity(conn: psycopg.Connection, household_id: str | None, since: float) -> float | None:
    if household_id is None:
        return None
    row = _one(conn, "SELECT max(time) AS t FROM events WHERE household_id = %s AND kind = ANY(%s) AND time > %s",
               (household_id, list(ACTIVITY_KINDS), as_datetime(since)))
    return _epoch(row["t"]) if row else None


def _help_asked_at(conn: psycopg.Connection, incident_id: int) -> float | None:
    row = _one(conn, "SELECT max(used_at) AS t FROM resident_check_links WHERE incident_id = %s AND answer = 'help'",
               (incident_id,))
    return _epoch(row["t"]) if row else None


def _run(conn: psycopg.Connection, inc: dict[str, Any], chain: list[dict[str, Any]], state: policy.State,
         now: float, worker_id: str, links: ResidentLinks) -> None:
    team = load_team(conn, inc["household_id"], inc["eff_area"])
    last_activity = help_at = None
    if state.check_since is not None:
        last_activity = _last_activity(conn, inc["household_id"], state.check_since)
        help_at = _help_asked_at(conn, inc["incident_id"])
    result = policy.advance(chain, state, policy.Context(team, last_activity, help_at), now)
    cancelled = False
    for action in result.actions:
        if isinstance(action, policy.Notify):
            notice = "alert" if inc["kind"] in WELFARE_KINDS else "technical"
            enqueue_notice(conn, inc, action.people, action.step_key, notice, urgent=action.urgent, now=now)
            add_timeline(conn, inc["incident_id"], now, None, "notified", "system", None,
                      {"people": list(action.people), "step": action.step_key, "worker": worker_id})
        elif isinstance(action, policy.Blink):
            for gateway_id, device_id in action.bulbs:
                _enqueue(conn, inc["incident_id"], action.step_key, f"device:{device_id}", None, "mqtt", None, "blink",
                         True, {"gateway_id": gateway_id, "device_id": device_id,
                                "args": {**action.args, "switch_ok": True}}, now, now)  # chosen under blink_allowed
            add_timeline(conn, inc["incident_id"], now, None, "blink_requested", "mqtt", None,
                      {"bulbs": [list(b) for b in action.bulbs], "step": action.step_key})
        elif isinstance(action, policy.AskResident):
            _ask_residents(conn, inc, action, now, links)
        elif isinstance(action, policy.Cancel):
            _cancel(conn, inc, result.state, now, action.outcome, action.note)
            cancelled = True
        elif isinstance(action, policy.Log):
            add_timeline(conn, inc["incident_id"], now, None, action.action, "system", None, action.data)
    if cancelled:
        conn.execute("UPDATE alert_escalations SET state = %s, updated_at = %s, worker_id = %s WHERE incident_id = %s",
                     (Jsonb(result.state.to_json()), as_datetime(now), worker_id, inc["incident_id"]))
        return
    status = "done" if result.next_step_at is None else "running"
    next_at = as_datetime(result.next_step_at) if result.next_step_at is not None else None
    conn.execute("""UPDATE alert_escalations SET state = %s, status = %s, next_step_at = %s, updated_at = %s, worker_id = %s
                    WHERE incident_id = %s""",
                 (Jsonb(result.state.to_json()), status, next_at, as_datetime(now), worker_id, inc["incident_id"]))


def _cancel(conn: psycopg.Connection, inc: dict[str, Any], state: policy.State, now: float, outcome: str, note: str) -> None:
    stop_escalation(conn, inc["incident_id"], "done", now)
    conn.execute("""UPDATE incidents SET status = 'cancelled', closed_at = %s, outcome = %s, outcome_note = %s,
                    updated_at = %s WHERE incident_id = %s""",
                 (as_datetime(now), outcome, note, as_datetime(now), inc["incident_id"]))
    add_timeline(conn, inc["incident_id"], now, None, "cancelled", "system", note, {"outcome": outcome})
    if state.notified:
        enqueue_notice(conn, inc, state.notified, "cancelled", "cancelled", urgent=True, now=now, note=note)


# --- asking the resident first -------------------------------------------------------------------

#: A resident's answer link stays usable this long after the check's own wait (a late "I'm fine"
#: still closes an alert nobody has claimed yet).
RESIDENT_LINK_GRACE_S = 24 * 3600.0
RESIDENT_LINK_PATH = "/r/"  # the app serves the answer page there (mimamori/app/incidents/resident_views.py)
RESIDENT_PAGE = "/me"  # a signed-in resident's own page: shows the question with its (opened) link


@dataclass(frozen=True)
class ResidentLinks:
    """What the engine needs to give a resident an answer link: the app's public address, and the
    sealer that keeps the link out of the database in clear (None: no resident can be asked).
    """

    app_url: str = ""
    sealer: outbox.LinkSealer | None = None


def resident_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _ask_residents(conn: psycopg.Connection, inc: dict[str, Any], action: policy.AskResident, now: float,
                   links: ResidentLinks) -> None:
    """Each resident gets a message with a single-use answer link of their own; only its hash is kept
    for checking an answer, and the link itself only sealed (issue 17) in the outbox row and the in-app
    notification, opened by the sender. A resident already asked at this step (a replay) is not asked again.
    """
    if links.sealer is None:
        raise ValueError("asking a resident needs a LinkSealer (the service's secret key)")
    expires = now + action.minutes * 60.0 + RESIDENT_LINK_GRACE_S
    asked = []
    for person_id in action.people:
        token = secrets.token_urlsafe(24)
        row = _one(conn, """INSERT INTO resident_check_links (token_hash, incident_id, household_id, person_id, step_key,
                                   created_at, expires_at)
                            VALUES (%s, %s, %s, %s, %s, %s, %s)
                            ON CONFLICT (incident_id, step_key, person_id) DO NOTHING RETURNING incident_id""",
                   (resident_token_hash(token), inc["incident_id"], inc["household_id"], person_id, action.step_key,
                    as_datetime(now), as_datetime(expires)))
        if row is None:
            continue
        sealed = links.sealer.seal(f"{links.app_url.rstrip('/')}{RESIDENT_LINK_PATH}{token}")
        # in the app the question points to the resident's own page, which opens the sealed link
        enqueue_notice(conn, inc, [person_id], action.step_key, "resident_check", urgent=True, now=now,
                       sealed_link=sealed, url=f"{links.app_url.rstrip('/')}{RESIDENT_PAGE}", minutes=f"{action.minutes:g}")
        asked.append(person_id)
        metrics.RESIDENTS_ASKED.inc()
    if asked:
        add_timeline(conn, inc["incident_id"], now, None, "resident_asked", "system", None,
                  {"people": asked, "step": action.step_key, "minutes": action.minutes})
