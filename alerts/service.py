"""Database functions of the alert engine (psycopg, plain functions, no HTTP).

Two groups:
- the API the app calls with the acting person: ``list_my_alerts``, ``get_incident``, ``timeline``,
  ``claim``, ``comment``, ``resolve``, ``get_chain`` / ``set_chain`` / ``reset_chain``,
  ``add_channel`` / ``list_channels`` / ``remove_channel``, ``set_quiet_hours``,
  ``list_notifications`` / ``mark_read``. Only the household's team (household_watchers), the
  area's coordinator, or an operator may act on an incident; others get ``NotFound``.
- the engine the worker runs: ``adopt_new`` (take on newly opened incidents and run their first
  steps), ``step_due`` (advance escalations whose ``next_step_at`` has come) and the
  outbox bookkeeping used by ``alerts.flows``.

Every function that writes runs in one transaction (``conn.transaction()``), so a step's new state,
its outbox rows, its in-app notifications and its timeline rows commit together or not at all.
Times are the caller's clock (``clock.now()``), never the database's ``now()``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alerts import metrics, policy
from alerts.channels import ALLOWED_APPRISE_SCHEMES, EMAIL_ADDRESS
from alerts.models import (
    ACTIVITY_KINDS,
    OUTCOMES,
    WELFARE_KINDS,
    ActorLike,
    Conflict,
    Forbidden,
    IncidentView,
    InvalidInput,
    NotFound,
    Notification,
    TimelineEntry,
    render_notice,
)
from mimamori import access
from mimamori.clock import Clock, as_datetime
from mimamori.db import fetch_dict, fetch_dicts

log = logging.getLogger(__name__)

DELIVERIES_CHANNEL = "mimamori_alert_deliveries"
INCIDENTS_CHANNEL = "mimamori_incident_opened"
NOTIFICATIONS_CHANNEL = "mimamori_notifications"
MAX_COMMENT = 2000


_rows = fetch_dicts
_one = fetch_dict


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


# =============================================================================================
# Who may act
# =============================================================================================

_INCIDENT_SQL = """
SELECT i.*, h.display_name AS household_name, coalesce(h.area, i.area) AS eff_area,
       e.status AS escalation_status, e.next_step_at
FROM incidents i
LEFT JOIN households h ON h.household_id = i.household_id
LEFT JOIN alert_escalations e ON e.incident_id = i.incident_id
"""


def _may_act(conn: psycopg.Connection, actor: ActorLike, household_id: str | None, area: str | None) -> bool:
    """A household's team business (or, without a household, an area's) the actor may see and act on:
    the one rule in ``mimamori.access``."""
    if household_id is not None:
        return access.may_act_for_household(conn, actor, household_id)
    return access.may_manage_area(actor, area)


def _scope_sql(actor: ActorLike) -> tuple[str, dict[str, Any]]:
    """WHERE fragment: incidents (alias i) the actor may see and act on (``mimamori.access``)."""
    return access.incident_sql(actor, "i")


def _incident_for(conn: psycopg.Connection, actor: ActorLike, incident_id: int, *, lock: bool = False) -> dict[str, Any]:
    # NO KEY UPDATE: serialises claim/resolve/steps on the incident without blocking the foreign-key
    # checks of rows that merely reference it (timeline entries written by delivery threads)
    sql = _INCIDENT_SQL + " WHERE i.incident_id = %s" + (" FOR NO KEY UPDATE OF i" if lock else "")
    inc = _one(conn, sql, (incident_id,))
    if inc is None or not access.may_see_incident(conn, actor, incident_id):
        raise NotFound(f"incident {incident_id} not found")
    return inc


def _view(row: dict[str, Any]) -> IncidentView:
    return IncidentView(
        incident_id=row["incident_id"], household_id=row["household_id"], household_name=row.get("household_name"),
        area=row.get("eff_area"), kind=row["kind"], status=row["status"], opened_at=row["opened_at"],
        updated_at=row["updated_at"], claimed_at=row["claimed_at"], claimed_by=row["claimed_by"],
        closed_at=row["closed_at"], closed_by=row["closed_by"], outcome=row["outcome"],
        outcome_note=row["outcome_note"], escalation_status=row.get("escalation_status"),
        next_step_at=row.get("next_step_at"),
    )


def _timeline(conn: psycopg.Connection, incident_id: int, at: float, actor: str | None, action: str, channel: str,
              body: str | None = None, data: dict[str, Any] | None = None) -> int:
    row = _one(conn, """INSERT INTO incident_timeline (incident_id, at, actor, action, channel, body, data)
                        VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING entry_id""",
               (incident_id, as_datetime(at), actor, action, channel, body, Jsonb(data or {})))
    assert row is not None
    return int(row["entry_id"])


# =============================================================================================
# The API (the app calls these with the acting person)
# =============================================================================================


def list_my_alerts(conn: psycopg.Connection, actor: ActorLike, *, statuses: Sequence[str] = ("open", "claimed"),
                   limit: int = 100) -> list[IncidentView]:
    """Incidents the actor may act on, newest first."""
    where, params = _scope_sql(actor)
    rows = _rows(conn, _INCIDENT_SQL + f" WHERE i.status = ANY(%(st)s) AND {where} ORDER BY i.opened_at DESC LIMIT %(lim)s",
                 {**params, "st": list(statuses), "lim": limit})
    return [_view(r) for r in rows]


def get_incident(conn: psycopg.Connection, actor: ActorLike, incident_id: int) -> IncidentView:
    return _view(_incident_for(conn, actor, incident_id))


def timeline(conn: psycopg.Connection, actor: ActorLike, incident_id: int) -> list[TimelineEntry]:
    """The team's view of an incident: comments and every action, oldest first."""
    _incident_for(conn, actor, incident_id)
    rows = _rows(conn, """SELECT t.*, p.display_name AS actor_name FROM incident_timeline t
                          LEFT JOIN people p ON p.person_id = t.actor
                          WHERE t.incident_id = %s ORDER BY t.entry_id""", (incident_id,))
    return [TimelineEntry(r["entry_id"], r["incident_id"], r["at"], r["actor"], r["actor_name"], r["action"],
                          r["channel"], r["body"], r["data"]) for r in rows]


def _actor_name(conn: psycopg.Connection, person_id: str) -> str:
    row = _one(conn, "SELECT display_name FROM people WHERE person_id = %s", (person_id,))
    return row["display_name"] if row else person_id


def _stop_escalation(conn: psycopg.Connection, incident_id: int, status: str, now: float) -> None:
    conn.execute("UPDATE alert_escalations SET status = %s, next_step_at = NULL, updated_at = %s WHERE incident_id = %s",
                 (status, as_datetime(now), incident_id))


def _escalation_state(conn: psycopg.Connection, incident_id: int) -> policy.State:
    row = _one(conn, "SELECT state FROM alert_escalations WHERE incident_id = %s", (incident_id,))
    return policy.State.from_json(row["state"] if row else {})


def claim(conn: psycopg.Connection, actor: ActorLike, incident_id: int, *, clock: Clock, channel: str = "app") -> IncidentView:
    """"I'll go": the actor takes the check. Escalation pauses; everyone alerted so far is told."""
    now = clock.now()
    with conn.transaction():
        inc = _incident_for(conn, actor, incident_id, lock=True)
        if inc["status"] != "open":
            raise Conflict(f"incident is {inc['status']}" + (f" by {inc['claimed_by']}" if inc["claimed_by"] else ""))
        conn.execute("""UPDATE incidents SET status = 'claimed', claimed_at = %s, claimed_by = %s, updated_at = %s
                        WHERE incident_id = %s""", (as_datetime(now), actor.person_id, as_datetime(now), incident_id))
        _timeline(conn, incident_id, now, actor.person_id, "claimed", channel)
        _pause_for_claim(conn, inc, now)
        others = [p for p in _escalation_state(conn, incident_id).notified if p != actor.person_id]
        if others:
            by = _actor_name(conn, actor.person_id)
            enqueue_notice(conn, inc, others, "claimed", "claimed", urgent=True, now=now, by=by)
        return _view(_incident_for(conn, actor, incident_id))


def _pause_for_claim(conn: psycopg.Connection, inc: dict[str, Any], now: float) -> None:
    """Escalation pauses while someone is going; it wakes when the claim expires (policy.claim_due)."""
    esc = _one(conn, "SELECT chain, state FROM alert_escalations WHERE incident_id = %s FOR UPDATE", (inc["incident_id"],))
    if esc is None:  # claimed before any worker took the incident on: snapshot its chain now
        chain, source = _chain_for(conn, inc)
        conn.execute("""INSERT INTO alert_escalations (incident_id, household_id, chain, chain_source, state, status,
                               started_at, updated_at) VALUES (%s, %s, %s, %s, '{}', 'paused', %s, %s)""",
                     (inc["incident_id"], inc["household_id"], Jsonb(chain), source, as_datetime(now), as_datetime(now)))
        state = policy.State()
    else:
        chain, state = esc["chain"], policy.State.from_json(esc["state"])
    _, next_at = policy.claim_due(chain, now, None, now)
    state = replace(state, claim_reminded_at=None)
    conn.execute("""UPDATE alert_escalations SET status = 'paused', state = %s, next_step_at = %s, updated_at = %s
                    WHERE incident_id = %s""", (Jsonb(state.to_json()), as_datetime(next_at), as_datetime(now), inc["incident_id"]))


def comment(conn: psycopg.Connection, actor: ActorLike, incident_id: int, text: str, *, clock: Clock,
            channel: str = "app") -> TimelineEntry:
    """A message on the incident's team timeline; the rest of the team gets it in the app."""
    text = (text or "").strip()
    if not text or len(text) > MAX_COMMENT or "\x00" in text:
        raise InvalidInput(f"a comment is 1..{MAX_COMMENT} characters")
    now = clock.now()
    with conn.transaction():
        inc = _incident_for(conn, actor, incident_id)
        entry_id = _timeline(conn, incident_id, now, actor.person_id, "comment", channel, text)
        team = [r["person_id"] for r in _rows(conn, "SELECT person_id FROM household_watchers WHERE household_id = %s",
                                              (inc["household_id"],))]
        others = [p for p in dict.fromkeys([*team, *_escalation_state(conn, incident_id).notified]) if p != actor.person_id]
        if others:
            enqueue_notice(conn, inc, others, f"comment.{entry_id}", "comment", urgent=False, now=now,
                           by=_actor_name(conn, actor.person_id), note=text, inapp_only=True)
    return next(e for e in timeline(conn, actor, incident_id) if e.entry_id == entry_id)


def resolve(conn: psycopg.Connection, actor: ActorLike, incident_id: int, outcome: str, note: str = "", *,
            clock: Clock, away_until: float | None = None, channel: str = "app") -> IncidentView:
    """Close the incident with an outcome and a note; outcomes feed back:

    - ``away``: away mode until ``away_until`` (epoch s, required) in ``away_periods``;
    - ``fine`` / ``false_alarm``: labels for the detector (view ``incident_labels``);
    - ``device_problem``: a device task for the area's coordinator.
    """
    if outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {OUTCOMES}")
    note = (note or "").strip()
    if len(note) > MAX_COMMENT or "\x00" in note:
        raise InvalidInput("note too long")
    now = clock.now()
    if outcome == "away" and (away_until is None or away_until <= now):
        raise InvalidInput("outcome 'away' needs away_until in the future")
    with conn.transaction():
        inc = _incident_for(conn, actor, incident_id, lock=True)
        if inc["status"] not in ("open", "claimed"):
            raise Conflict(f"incident is already {inc['status']}")
        _stop_escalation(conn, incident_id, "done", now)
        conn.execute("""UPDATE incidents SET status = 'resolved', closed_at = %s, closed_by = %s, outcome = %s,
                               outcome_note = %s, updated_at = %s WHERE incident_id = %s""",
                     (as_datetime(now), actor.person_id, outcome, note or None, as_datetime(now), incident_id))
        _timeline(conn, incident_id, now, actor.person_id, "resolved", channel, note or None, {"outcome": outcome})
        if outcome == "away" and inc["household_id"]:
            assert away_until is not None
            conn.execute("""INSERT INTO away_periods (household_id, starts_at, until, source, set_by, note)
                            VALUES (%s, %s, %s, 'alert_outcome', %s, %s)""",
                         (inc["household_id"], as_datetime(now), as_datetime(away_until), actor.person_id, note or None))
            _timeline(conn, incident_id, now, actor.person_id, "away_set", channel, None, {"until": away_until})
        if outcome == "device_problem":
            task = _one(conn, """INSERT INTO device_tasks (household_id, area, incident_id, note, opened_at, opened_by)
                                 VALUES (%s, %s, %s, %s, %s, %s) RETURNING task_id""",
                        (inc["household_id"], inc["eff_area"], incident_id, note or None, as_datetime(now), actor.person_id))
            assert task is not None
            _timeline(conn, incident_id, now, actor.person_id, "device_task_opened", channel, None, {"task_id": task["task_id"]})
            team = load_team(conn, inc["household_id"], inc["eff_area"])
            if team.coordinators:
                enqueue_notice(conn, inc, team.coordinators, "device_task", "device_task", urgent=False, now=now,
                               note=note)
        told = [p for p in _escalation_state(conn, incident_id).notified if p != actor.person_id]
        if told:
            enqueue_notice(conn, inc, told, "resolved", "resolved", urgent=False, now=now, outcome=outcome, note=note)
        return _view(_incident_for(conn, actor, incident_id))


def _admin_log(conn: psycopg.Connection, at: float, actor: ActorLike, action: str, subject: str,
               data: dict[str, Any] | None = None, channel: str = "app") -> int:
    row = _one(conn, """INSERT INTO alert_admin_log (at, actor, action, subject, channel, data) VALUES (%s, %s, %s, %s, %s, %s)
                        RETURNING entry_id""", (as_datetime(at), actor.person_id, action, subject, channel, Jsonb(data or {})))
    assert row is not None
    return int(row["entry_id"])


def admin_log(conn: psycopg.Connection, actor: ActorLike, subject: str) -> list[dict[str, Any]]:
    """Changes to a household's chain or a person's channels and rules (for whoever may manage them)."""
    h = _one(conn, "SELECT area FROM households WHERE household_id = %s", (subject,))
    if h is not None:
        _household_for_manager(conn, actor, subject)
    else:
        _may_manage_person(conn, actor, subject)
    return _rows(conn, "SELECT * FROM alert_admin_log WHERE subject = %s ORDER BY entry_id", (subject,))


# --- chains -----------------------------------------------------------------------------------


def _household_for_manager(conn: psycopg.Connection, actor: ActorLike, household_id: str) -> dict[str, Any]:
    h = _one(conn, "SELECT household_id, area FROM households WHERE household_id = %s", (household_id,))
    if h is None or not _may_act(conn, actor, household_id, h["area"]):
        raise NotFound(f"household {household_id} not found")
    if not access.may_manage_household(conn, actor, household_id):  # a team member of another area: not theirs
        raise Forbidden("only the area's coordinator or an operator edits escalation chains")
    return h


def get_chain(conn: psycopg.Connection, actor: ActorLike, household_id: str) -> tuple[list[dict[str, Any]], str]:
    """(steps, 'household' | 'default'). Team members may read it."""
    h = _one(conn, "SELECT household_id, area FROM households WHERE household_id = %s", (household_id,))
    if h is None or not _may_act(conn, actor, household_id, h["area"]):
        raise NotFound(f"household {household_id} not found")
    row = _one(conn, "SELECT steps FROM escalation_chains WHERE household_id = %s", (household_id,))
    return (row["steps"], "household") if row else (default_chain(conn, household_id), "default")


def default_chain(conn: psycopg.Connection, household_id: str | None) -> list[dict[str, Any]]:
    """The chain of a household without one of its own: asking the resident first when a resident
    has a channel of their own to be asked on, else straight to the team."""
    reachable = household_id is not None and _one(
        conn, "SELECT 1 AS ok FROM households_resident_reachable WHERE household_id = %s", (household_id,)) is not None
    return list(policy.RESIDENT_FIRST_CHAIN if reachable else policy.DEFAULT_CHAIN)


def set_chain(conn: psycopg.Connection, actor: ActorLike, household_id: str, steps: Any, *, clock: Clock,
              channel: str = "app") -> list[dict[str, Any]]:
    """Replace a household's chain. Incidents already open keep the chain they started with."""
    try:
        clean = policy.validate_chain(steps)
    except policy.ChainError as exc:
        raise InvalidInput(str(exc)) from None
    with conn.transaction():
        _household_for_manager(conn, actor, household_id)
        conn.execute("""INSERT INTO escalation_chains (household_id, steps, updated_at, updated_by) VALUES (%s, %s, %s, %s)
                        ON CONFLICT (household_id) DO UPDATE SET steps = EXCLUDED.steps, updated_at = EXCLUDED.updated_at,
                        updated_by = EXCLUDED.updated_by""",
                     (household_id, Jsonb(clean), as_datetime(clock.now()), actor.person_id))
        _admin_log(conn, clock.now(), actor, "chain_set", household_id, {"steps": clean}, channel)
    return clean


def reset_chain(conn: psycopg.Connection, actor: ActorLike, household_id: str, *, clock: Clock | None = None,
                channel: str = "app") -> None:
    """Back to the default chain."""
    with conn.transaction():
        _household_for_manager(conn, actor, household_id)
        conn.execute("DELETE FROM escalation_chains WHERE household_id = %s", (household_id,))
        _admin_log(conn, _now_or_db(conn, clock), actor, "chain_reset", household_id, None, channel)


def _now_or_db(conn: psycopg.Connection, clock: Clock | None) -> float:
    """The caller's clock; callers without one (older signatures) get the database's time."""
    if clock is not None:
        return clock.now()
    row = _one(conn, "SELECT extract(epoch FROM now())::float8 AS t")
    assert row is not None
    return float(row["t"])


# --- channels and rules per person ------------------------------------------------------------

_WEBPUSH_KEYS = ("endpoint", "keys")


def managed_people_sql(actor: ActorLike, alias: str = "p") -> tuple[str, dict[str, Any]]:
    """THE rule for who may manage a person (their channels with full targets, quiet hours, the admin
    log of them, and putting them on a team): a WHERE fragment over ``people AS <alias>``.

    - anyone: themselves; the operator: everyone;
    - a coordinator: the people of their area only: its coordinators, residents of its households, and
      watchers who belong to the area (on one of its teams, invited into it, or placed in it) **and to
      no other area** (issue 17: a coordinator of another area could put any watcher on one of their
      teams and then read the watcher's Slack token and Web Push keys, add an address, mute them).
      A watcher on teams of two areas is managed by nobody but themselves and the operator; putting a
      watcher from another area on a team is the operator's act (or the watcher's own acceptance of an
      invitation)."""
    me = {"mp_me": actor.person_id}
    if actor.role == "operator":
        return "TRUE", me
    if actor.role != "coordinator" or actor.area is None:
        return f"{alias}.person_id = %(mp_me)s", me
    return (
        f"""({alias}.person_id = %(mp_me)s OR CASE {alias}.role
              WHEN 'coordinator' THEN {alias}.area = %(mp_area)s
              WHEN 'resident' THEN EXISTS (SELECT 1 FROM households mh WHERE mh.household_id = {alias}.household_id
                                           AND mh.area = %(mp_area)s)
              WHEN 'watcher' THEN ({alias}.area = %(mp_area)s
                  OR EXISTS (SELECT 1 FROM household_watchers mw JOIN households mh USING (household_id)
                             WHERE mw.person_id = {alias}.person_id AND mh.area = %(mp_area)s)
                  OR EXISTS (SELECT 1 FROM invitations mi LEFT JOIN households mh ON mh.household_id = mi.household_id
                             WHERE mi.used_by = {alias}.person_id AND COALESCE(mh.area, mi.area) = %(mp_area)s))
                 AND NOT EXISTS (SELECT 1 FROM household_watchers mw JOIN households mh USING (household_id)
                                 WHERE mw.person_id = {alias}.person_id AND mh.area IS DISTINCT FROM %(mp_area)s)
              ELSE false END)""",
        {**me, "mp_area": actor.area},
    )


def may_manage_person(conn: psycopg.Connection, actor: ActorLike, person_id: str) -> bool:
    where, params = managed_people_sql(actor)
    return _one(conn, f"SELECT 1 AS ok FROM people p WHERE p.person_id = %(mp_p)s AND {where}",
                {**params, "mp_p": person_id}) is not None


def _may_manage_person(conn: psycopg.Connection, actor: ActorLike, person_id: str) -> None:
    # Not found either way: whether a person outside one's scope exists does not leak.
    if not may_manage_person(conn, actor, person_id):
        raise NotFound(f"person {person_id} not found")


def add_channel(conn: psycopg.Connection, actor: ActorLike, person_id: str, kind: str, target: str, *,
                label: str | None = None, position: int = 0, clock: Clock | None = None) -> int:
    """Add an e-mail address (``kind='email'``, sent through the operator's mail server), an Apprise
    URL (``kind='apprise'``) or a Web Push subscription (JSON) for a person."""
    if "\x00" in (target or "") or "\x00" in (label or ""):
        raise InvalidInput("no NUL characters")
    if kind == "email":
        target = (target or "").strip()
        if len(target) > 254 or not EMAIL_ADDRESS.fullmatch(target):
            raise InvalidInput("an e-mail address looks like name@example.jp")
        local, domain = target.rsplit("@", 1)
        target = f"{local}@{domain.lower()}"
    elif kind == "apprise":
        if not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", target or ""):
            raise InvalidInput("an Apprise URL looks like mailto://..., slack://..., ntfy://...")
        if target.split("://", 1)[0] not in ALLOWED_APPRISE_SCHEMES:  # issue 17: no arbitrary protocols
            raise InvalidInput("this kind of Apprise URL is not offered: " + ", ".join(sorted(ALLOWED_APPRISE_SCHEMES)))
    elif kind == "webpush":
        try:
            sub = json.loads(target)
        except ValueError:
            raise InvalidInput("a Web Push subscription is JSON") from None
        if not isinstance(sub, dict) or not all(k in sub for k in _WEBPUSH_KEYS):
            raise InvalidInput("a Web Push subscription has endpoint and keys")
    else:
        raise InvalidInput("kind is email, apprise or webpush")
    with conn.transaction():
        _may_manage_person(conn, actor, person_id)
        row = _one(conn, """INSERT INTO person_channels (person_id, kind, target, label, position) VALUES (%s, %s, %s, %s, %s)
                            ON CONFLICT (person_id, kind, target) DO UPDATE SET enabled = true, label = EXCLUDED.label,
                            position = EXCLUDED.position RETURNING channel_id""", (person_id, kind, target, label, position))
        assert row is not None
        # the target may hold a secret (a token in an Apprise URL): the log keeps only its scheme
        _admin_log(conn, _now_or_db(conn, clock), actor, "channel_added", person_id,
                   {"channel_id": row["channel_id"], "kind": kind, "scheme": target.split(":", 1)[0] if kind == "apprise" else kind})
    return int(row["channel_id"])


def list_channels(conn: psycopg.Connection, actor: ActorLike, person_id: str) -> list[dict[str, Any]]:
    _may_manage_person(conn, actor, person_id)
    return _rows(conn, """SELECT channel_id, kind, target, label, position, enabled FROM person_channels
                          WHERE person_id = %s ORDER BY position, channel_id""", (person_id,))


def remove_channel(conn: psycopg.Connection, actor: ActorLike, person_id: str, channel_id: int, *,
                   clock: Clock | None = None) -> None:
    with conn.transaction():
        _may_manage_person(conn, actor, person_id)
        conn.execute("UPDATE person_channels SET enabled = false WHERE person_id = %s AND channel_id = %s", (person_id, channel_id))
        _admin_log(conn, _now_or_db(conn, clock), actor, "channel_removed", person_id, {"channel_id": channel_id})


def set_quiet_hours(conn: psycopg.Connection, actor: ActorLike, person_id: str, start: Any, end: Any,
                    timezone: str = "Asia/Tokyo", *, clock: Clock | None = None) -> None:
    """Quiet hours (``datetime.time`` or None) hold back non-urgent notices; welfare alerts are never muted."""
    if not policy.valid_timezone(timezone):
        raise InvalidInput(f"unknown time zone {timezone!r}")
    with conn.transaction():
        _may_manage_person(conn, actor, person_id)
        conn.execute("""INSERT INTO person_alert_rules (person_id, quiet_start, quiet_end, timezone) VALUES (%s, %s, %s, %s)
                        ON CONFLICT (person_id) DO UPDATE SET quiet_start = EXCLUDED.quiet_start,
                        quiet_end = EXCLUDED.quiet_end, timezone = EXCLUDED.timezone""", (person_id, start, end, timezone))
        _admin_log(conn, _now_or_db(conn, clock), actor, "quiet_hours_set", person_id,
                   {"start": str(start) if start else None, "end": str(end) if end else None, "timezone": timezone})


# --- in-app notifications ---------------------------------------------------------------------


def _notification(r: dict[str, Any]) -> Notification:
    return Notification(r["notification_id"], r["person_id"], r["incident_id"], r["notice"], r["urgent"], r["title"],
                        r["body"], r["data"], r["created_at"], r["read_at"])


def list_notifications(conn: psycopg.Connection, actor: ActorLike, *, after_id: int = 0, unread_only: bool = False,
                       limit: int = 100) -> list[Notification]:
    rows = _rows(conn, """SELECT * FROM notifications WHERE person_id = %s AND notification_id > %s
                          AND (NOT %s OR read_at IS NULL) ORDER BY notification_id LIMIT %s""",
                 (actor.person_id, after_id, unread_only, limit))
    return [_notification(r) for r in rows]


def mark_read(conn: psycopg.Connection, actor: ActorLike, notification_ids: Iterable[int], *, clock: Clock) -> int:
    with conn.transaction():
        cur = conn.execute("""UPDATE notifications SET read_at = %s WHERE person_id = %s AND notification_id = ANY(%s)
                              AND read_at IS NULL""", (as_datetime(clock.now()), actor.person_id, list(notification_ids)))
        return cur.rowcount


# =============================================================================================
# The engine (the worker runs these)
# =============================================================================================


def load_team(conn: psycopg.Connection, household_id: str | None, area: str | None) -> policy.Team:
    members: tuple[tuple[str, int], ...] = ()
    bulbs: tuple[tuple[str, str], ...] = ()
    if household_id is not None:
        members = tuple((r["person_id"], int(r["tier"])) for r in _rows(
            conn, "SELECT person_id, tier FROM household_watchers WHERE household_id = %s ORDER BY tier, person_id",
            (household_id,)))
        bulbs = tuple((r["gateway_id"], r["device_id"]) for r in _rows(
            conn, """SELECT gateway_id, device_id FROM devices WHERE household_id = %s
                       AND (kind = 'bulb' AND blink_allowed IS NOT FALSE OR kind = 'plug' AND blink_allowed)
                     AND gateway_id IS NOT NULL ORDER BY device_id""", (household_id,)))
        residents = tuple(r["person_id"] for r in _rows(
            conn, "SELECT person_id FROM people WHERE role = 'resident' AND household_id = %s ORDER BY person_id",
            (household_id,)))
    coordinators = [r["person_id"] for r in _rows(
        conn, "SELECT person_id FROM people WHERE role = 'coordinator' AND area = %s ORDER BY person_id", (area,))]
    if not coordinators:  # an area without a coordinator falls to the operators
        coordinators = [r["person_id"] for r in _rows(conn, "SELECT person_id FROM people WHERE role = 'operator' ORDER BY person_id")]
    return policy.Team(members, tuple(coordinators), bulbs, residents if household_id is not None else ())


def _chain_for(conn: psycopg.Connection, inc: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    if inc["kind"] not in WELFARE_KINDS:
        return list(policy.TECHNICAL_CHAIN), "technical"
    row = _one(conn, "SELECT steps FROM escalation_chains WHERE household_id = %s", (inc["household_id"],))
    if row:
        return row["steps"], "household"
    return default_chain(conn, inc["household_id"]), "default"


_ADOPT_SQL = _INCIDENT_SQL + """
WHERE i.status = 'open' AND e.incident_id IS NULL
ORDER BY i.incident_id LIMIT %s FOR NO KEY UPDATE OF i SKIP LOCKED"""

_DUE_SQL = _INCIDENT_SQL + """
WHERE e.next_step_at <= %s
ORDER BY e.next_step_at LIMIT %s FOR NO KEY UPDATE OF i SKIP LOCKED"""


def _each_isolated(conn: psycopg.Connection, rows: list[dict[str, Any]], fn: Any) -> None:
    """Run ``fn(row)`` for each row in its own savepoint: one bad incident must not block the batch
    (it is logged and retried on the next pass). A lost connection still aborts everything."""
    for row in rows:
        try:
            with conn.transaction():
                fn(row)
        except psycopg.OperationalError:
            raise
        except Exception:
            log.exception("alert engine: incident %s failed; will retry", row["incident_id"])


def adopt_new(conn: psycopg.Connection, clock: Clock, worker_id: str, limit: int = 20, *, app_url: str = "") -> int:
    """Take on newly opened incidents (up to ``limit``, one transaction): snapshot each one's chain
    and run its first steps. Returns how many it took. ``app_url``: the web app's public address, for
    the links in messages to residents (empty: links relative to the app)."""
    now = clock.now()
    with conn.transaction():
        incidents = _rows(conn, _ADOPT_SQL, (limit,))
        _each_isolated(conn, incidents, lambda inc: _adopt(conn, inc, now, worker_id, app_url))
    return len(incidents)


def adopt_one(conn: psycopg.Connection, clock: Clock, worker_id: str, *, app_url: str = "") -> int | None:
    """Take on one newly opened incident; its id, or None when there is none (tests, tools)."""
    now = clock.now()
    with conn.transaction():
        incidents = _rows(conn, _ADOPT_SQL, (1,))
        if not incidents:
            return None
        _adopt(conn, incidents[0], now, worker_id, app_url)
    return int(incidents[0]["incident_id"])


def step_one_due(conn: psycopg.Connection, clock: Clock, worker_id: str, *, app_url: str = "") -> int | None:
    """Advance one due escalation; its incident id, or None when nothing is due (tests, tools)."""
    now = clock.now()
    with conn.transaction():
        incidents = _rows(conn, _DUE_SQL, (as_datetime(now), 1))
        if not incidents:
            return None
        _step(conn, incidents[0], now, worker_id, app_url)
    return int(incidents[0]["incident_id"])


def _adopt(conn: psycopg.Connection, inc: dict[str, Any], now: float, worker_id: str, app_url: str) -> None:
    chain, source = _chain_for(conn, inc)
    created = _one(conn, """INSERT INTO alert_escalations (incident_id, household_id, chain, chain_source, state,
                                   status, next_step_at, started_at, updated_at, worker_id)
                            VALUES (%s, %s, %s, %s, '{}', 'running', %s, %s, %s, %s)
                            ON CONFLICT (incident_id) DO NOTHING RETURNING incident_id""",
                   (inc["incident_id"], inc["household_id"], Jsonb(chain), source, as_datetime(now),
                    as_datetime(now), as_datetime(now), worker_id))
    if created is None:  # another worker got there first
        return
    _timeline(conn, inc["incident_id"], now, None, "escalation_started", "system", None,
              {"chain": chain, "chain_source": source, "worker": worker_id})
    if inc["kind"] in WELFARE_KINDS and inc["household_id"] and _away(conn, inc["household_id"], now):
        _cancel(conn, inc, policy.State(), now, "away", "away mode was on when the incident opened")
    else:
        _run_unless_outage(conn, inc, chain, policy.State(), now, worker_id, app_url)


def step_due(conn: psycopg.Connection, clock: Clock, worker_id: str, limit: int = 20, *, app_url: str = "") -> int:
    """Advance escalations whose next step is due (up to ``limit``, one transaction)."""
    now = clock.now()
    with conn.transaction():
        incidents = _rows(conn, _DUE_SQL, (as_datetime(now), limit))
        _each_isolated(conn, incidents, lambda inc: _step(conn, inc, now, worker_id, app_url))
    return len(incidents)


def _step(conn: psycopg.Connection, inc: dict[str, Any], now: float, worker_id: str, app_url: str) -> None:
    esc = _one(conn, "SELECT * FROM alert_escalations WHERE incident_id = %s FOR UPDATE", (inc["incident_id"],))
    assert esc is not None
    # the due row we saw may be stale (another worker advanced it before we locked): re-check
    if esc["next_step_at"] is None or esc["next_step_at"] > as_datetime(now) or esc["status"] == "done":
        return
    state = policy.State.from_json(esc["state"])
    if inc["status"] in ("resolved", "cancelled"):
        _closed_elsewhere(conn, inc, state, now)
    elif inc["status"] == "claimed":
        _claim_timer(conn, inc, esc["chain"], state, now, worker_id, app_url)
    else:
        _run_unless_outage(conn, inc, esc["chain"], state, now, worker_id, app_url)


def _set_escalation(conn: psycopg.Connection, incident_id: int, state: policy.State, status: str, next_at: float | None,
                    now: float, worker_id: str) -> None:
    conn.execute("""UPDATE alert_escalations SET state = %s, status = %s, next_step_at = %s, updated_at = %s, worker_id = %s
                    WHERE incident_id = %s""",
                 (Jsonb(state.to_json()), status, as_datetime(next_at) if next_at is not None else None, as_datetime(now),
                  worker_id, incident_id))


def _claim_timer(conn: psycopg.Connection, inc: dict[str, Any], chain: list[dict[str, Any]], state: policy.State,
                 now: float, worker_id: str, app_url: str) -> None:
    """A claim nobody resolved: remind the claimer, later reopen the incident to the team and resume."""
    claimed_at = _epoch(inc["claimed_at"]) or now
    claimer = inc["claimed_by"]
    what, next_at = policy.claim_due(chain, claimed_at, state.claim_reminded_at, now)
    key = f"{int(claimed_at * 1000)}"  # one reminder / reopening per claim
    by = _actor_name(conn, claimer) if claimer else ""
    remind_s, grace_s = policy.claim_timeout(chain)
    if what is None:
        _set_escalation(conn, inc["incident_id"], state, "paused", next_at, now, worker_id)
    elif what == "remind":
        _timeline(conn, inc["incident_id"], now, None, "claim_reminder", "system", None,
                  {"claimed_by": claimer, "claimed_minutes_ago": round((now - claimed_at) / 60, 1),
                   "reopen_in_minutes": grace_s / 60})
        if claimer:
            enqueue_notice(conn, inc, [claimer], f"claim_reminder.{key}", "claim_reminder", urgent=True, now=now, by=by)
        _set_escalation(conn, inc["incident_id"], replace(state, claim_reminded_at=now), "paused", next_at, now, worker_id)
    else:  # reopen
        conn.execute("""UPDATE incidents SET status = 'open', claimed_at = NULL, claimed_by = NULL, updated_at = %s
                        WHERE incident_id = %s""", (as_datetime(now), inc["incident_id"]))
        _timeline(conn, inc["incident_id"], now, None, "claim_expired", "system", None,
                  {"claimed_by": claimer, "claimed_at": claimed_at, "timeout_minutes": remind_s / 60,
                   "grace_minutes": grace_s / 60})
        team = [p for p, _tier in load_team(conn, inc["household_id"], inc["eff_area"]).members]
        told = list(dict.fromkeys([*team, *state.notified, *([claimer] if claimer else [])]))
        reopened = {**inc, "status": "open", "claimed_by": None, "claimed_at": None}
        if told:
            enqueue_notice(conn, reopened, told, f"reopened.{key}", "reopened", urgent=True, now=now, by=by)
        _timeline(conn, inc["incident_id"], now, None, "escalation_resumed", "system", None,
                  {"reason": "claim_expired", "step": state.step_key})
        _run_unless_outage(conn, reopened, chain, replace(state, claim_reminded_at=None), now, worker_id, app_url)


def _area_outage(conn: psycopg.Connection, inc: dict[str, Any]) -> int | None:
    """The open area-outage incident of a welfare incident's area, if any."""
    if inc["kind"] not in WELFARE_KINDS or not inc.get("eff_area"):
        return None
    row = _one(conn, """SELECT incident_id FROM incidents WHERE kind = 'area_outage' AND area = %s
                        AND status IN ('open', 'claimed') ORDER BY incident_id LIMIT 1""", (inc["eff_area"],))
    return int(row["incident_id"]) if row else None


def _run_unless_outage(conn: psycopg.Connection, inc: dict[str, Any], chain: list[dict[str, Any]], state: policy.State,
                       now: float, worker_id: str, app_url: str) -> None:
    """While the area's gateways are down the silence says nothing about the resident: a welfare
    escalation in flight pauses (timeline entry) and resumes where it was when the outage closes."""
    outage = _area_outage(conn, inc)
    if outage is not None:
        if state.paused_for is None:
            state = replace(state, paused_for=f"area_outage:{outage}")
            _timeline(conn, inc["incident_id"], now, None, "escalation_paused", "system",
                      "area outage: the gateways of the area are offline", {"reason": "area_outage", "outage_incident": outage,
                                                                            "step": state.step_key})
        _set_escalation(conn, inc["incident_id"], state, "paused", now + policy.OUTAGE_RECHECK_S, now, worker_id)
        return
    if state.paused_for is not None:
        _timeline(conn, inc["incident_id"], now, None, "escalation_resumed", "system", None,
                  {"reason": "area_outage_closed", "paused_for": state.paused_for, "step": state.step_key})
        state = replace(state, paused_for=None)
    _run(conn, inc, chain, state, now, worker_id, app_url)


def _away(conn: psycopg.Connection, household_id: str, now: float) -> bool:
    return _one(conn, "SELECT 1 AS ok FROM away_periods WHERE household_id = %s AND starts_at <= %s AND until > %s",
                (household_id, as_datetime(now), as_datetime(now))) is not None


def _closed_elsewhere(conn: psycopg.Connection, inc: dict[str, Any], state: policy.State, now: float) -> None:
    """The detector (or anyone outside this engine) closed the incident: stop, and tell who was alerted."""
    _stop_escalation(conn, inc["incident_id"], "done", now)
    _timeline(conn, inc["incident_id"], now, None, "escalation_stopped", "system", None,
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
         now: float, worker_id: str, app_url: str) -> None:
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
            _timeline(conn, inc["incident_id"], now, None, "notified", "system", None,
                      {"people": list(action.people), "step": action.step_key, "worker": worker_id})
        elif isinstance(action, policy.Blink):
            for gateway_id, device_id in action.bulbs:
                _enqueue(conn, inc["incident_id"], action.step_key, f"device:{device_id}", None, "mqtt", None, "blink",
                         True, {"gateway_id": gateway_id, "device_id": device_id,
                                "args": {**action.args, "switch_ok": True}}, now, now)  # chosen under blink_allowed
            _timeline(conn, inc["incident_id"], now, None, "blink_requested", "mqtt", None,
                      {"bulbs": [list(b) for b in action.bulbs], "step": action.step_key})
        elif isinstance(action, policy.AskResident):
            _ask_residents(conn, inc, action, now, app_url)
        elif isinstance(action, policy.Cancel):
            _cancel(conn, inc, result.state, now, action.outcome, action.note)
            cancelled = True
        elif isinstance(action, policy.Log):
            _timeline(conn, inc["incident_id"], now, None, action.action, "system", None, action.data)
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
    _stop_escalation(conn, inc["incident_id"], "done", now)
    conn.execute("""UPDATE incidents SET status = 'cancelled', closed_at = %s, outcome = %s, outcome_note = %s,
                    updated_at = %s WHERE incident_id = %s""",
                 (as_datetime(now), outcome, note, as_datetime(now), inc["incident_id"]))
    _timeline(conn, inc["incident_id"], now, None, "cancelled", "system", note, {"outcome": outcome})
    if state.notified:
        enqueue_notice(conn, inc, state.notified, "cancelled", "cancelled", urgent=True, now=now, note=note)


# --- asking the resident first -------------------------------------------------------------------

#: A resident's answer link stays usable this long after the check's own wait (a late "I'm fine"
#: still closes an alert nobody has claimed yet).
RESIDENT_LINK_GRACE_S = 24 * 3600.0
RESIDENT_LINK_PATH = "/r/"  # the app serves the answer page there (app/incidents/resident_views.py)


def resident_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _ask_residents(conn: psycopg.Connection, inc: dict[str, Any], action: policy.AskResident, now: float,
                   app_url: str) -> None:
    """Each resident gets a message with a single-use answer link of their own (only its hash is
    stored); a resident already asked at this step (a replay) is not asked again."""
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
        url = f"{app_url.rstrip('/')}{RESIDENT_LINK_PATH}{token}"
        enqueue_notice(conn, inc, [person_id], action.step_key, "resident_check", urgent=True, now=now, url=url,
                       minutes=f"{action.minutes:g}")
        asked.append(person_id)
        metrics.RESIDENTS_ASKED.inc()
    if asked:
        _timeline(conn, inc["incident_id"], now, None, "resident_asked", "system", None,
                  {"people": asked, "step": action.step_key, "minutes": action.minutes})


# --- the outbox -------------------------------------------------------------------------------


def _enqueue(conn: psycopg.Connection, incident_id: int, step_key: str, recipient: str, person_id: str | None,
             channel: str, channel_id: int | None, notice: str, urgent: bool, payload: dict[str, Any], now: float,
             send_at: float, status: str = "pending") -> int | None:
    """One outbox row; None if this (incident, step, recipient, channel) was already recorded."""
    row = _one(conn, """INSERT INTO alert_deliveries (incident_id, step_key, recipient, person_id, channel, channel_id, notice,
                               urgent, payload, status, created_at, next_attempt_at, sent_at, attempts)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                        ON CONFLICT (incident_id, step_key, recipient, channel) DO NOTHING RETURNING delivery_id""",
               (incident_id, step_key, recipient, person_id, channel, channel_id, notice, urgent, Jsonb(payload), status,
                as_datetime(now), as_datetime(send_at), as_datetime(now) if status == "sent" else None,
                1 if status == "sent" else 0))
    return int(row["delivery_id"]) if row else None


def enqueue_notice(conn: psycopg.Connection, inc: dict[str, Any], people: Sequence[str], step_key: str, notice: str, *,
                   urgent: bool, now: float, inapp_only: bool = False, **fields: str) -> int:
    """Tell ``people`` about an incident, in the caller's transaction.

    The in-app notification is written right here (it *is* a database row, so it is exactly-once
    with the step). Every other channel of each person gets an outbox row, sent by a delivery worker,
    in the person's channel order; non-urgent ones wait for the end of the person's quiet hours.
    A person with no channel besides the app is reported to the coordinator. Returns the number of
    outbox rows waiting to be sent.
    """
    if not people:
        return 0
    persons = {r["person_id"]: r for r in _rows(
        conn, """SELECT p.person_id, p.display_name, p.locale, r.quiet_start, r.quiet_end, r.timezone
                 FROM people p LEFT JOIN person_alert_rules r ON r.person_id = p.person_id WHERE p.person_id = ANY(%s)""",
        (list(people),))}
    channels: dict[str, list[dict[str, Any]]] = {}
    if not inapp_only:
        for r in _rows(conn, """SELECT channel_id, person_id, kind FROM person_channels WHERE person_id = ANY(%s) AND enabled
                                ORDER BY person_id, position, channel_id""", (list(people),)):
            channels.setdefault(r["person_id"], []).append(r)
    name = inc.get("household_name") or inc.get("eff_area") or inc.get("area") or ""
    pending = 0
    for position, person_id in enumerate(people):
        person = persons.get(person_id)
        if person is None:
            continue  # a chain naming someone since deleted
        title, body = render_notice(notice, person["locale"], name=name, kind=inc["kind"], **fields)
        payload = {"title": title, "body": body, "incident_id": inc["incident_id"], "notice": notice,
                   "household_id": inc["household_id"], "kind": inc["kind"]}
        if "url" in fields:  # where a push opens (a resident's answer link; else the alert page)
            payload["url"] = fields["url"]
        first = _enqueue(conn, inc["incident_id"], step_key, person_id, person_id, "inapp", None, notice, urgent, payload,
                         now, now, status="sent")
        if first is None:
            continue  # this step already told this person (a replay)
        data = {"step": step_key, "household_id": inc["household_id"], "kind": inc["kind"]}
        if "url" in fields:  # a notice with a link of its own (a resident's answer link)
            data["url"] = fields["url"]
        conn.execute("""INSERT INTO notifications (person_id, incident_id, notice, urgent, title, body, data, created_at)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                     (person_id, inc["incident_id"], notice, urgent, title, body, Jsonb(data), as_datetime(now)))
        metrics.count_notification("inapp", "sent")
        if inapp_only:
            continue
        send_at = now
        if not urgent:
            tz = person["timezone"] if policy.valid_timezone(person["timezone"]) else "Asia/Tokyo"
            send_at = policy.quiet_hours_end(now, person["quiet_start"], person["quiet_end"], tz) or now
        mine = channels.get(person_id, [])
        for order, ch in enumerate(mine):
            # the channel order is kept by staggering by a millisecond per position
            if _enqueue(conn, inc["incident_id"], step_key, person_id, person_id, f"{ch['kind']}:{ch['channel_id']}",
                        ch["channel_id"], notice, urgent, payload, now, send_at + order * 0.001) is not None:
                pending += 1
        if not mine and notice in ("alert", "technical"):
            pending += report_unreachable(conn, inc, person_id, now, reason="no_channel")
    if pending:
        conn.execute("SELECT pg_notify(%s, %s)", (DELIVERIES_CHANNEL, str(inc["incident_id"])))
    return pending


UNREACHABLE_REASONS = {"no_channel": "no channel besides the app", "all_failed": "every channel failed"}


def report_unreachable(conn: psycopg.Connection, inc: dict[str, Any], person_id: str, now: float, *, reason: str) -> int:
    """Tell the area's coordinator that ``person_id`` cannot be reached (a timeline row each time; the
    coordinator is notified once per incident and person). ``reason``: a key of ``UNREACHABLE_REASONS``,
    kept as a code in the entry's data (readers translate it) beside the English note in its body."""
    team = load_team(conn, inc["household_id"], inc["eff_area"])
    _timeline(conn, inc["incident_id"], now, None, "unreachable", "system", UNREACHABLE_REASONS[reason],
              {"person_id": person_id, "reason": reason})
    targets = [c for c in team.coordinators if c != person_id]
    if not targets:
        return 0
    return enqueue_notice(conn, inc, targets, f"unreachable.{person_id}", "unreachable", urgent=True, now=now,
                          person=_actor_name(conn, person_id))


def incident_row(conn: psycopg.Connection, incident_id: int) -> dict[str, Any] | None:
    return _one(conn, _INCIDENT_SQL + " WHERE i.incident_id = %s", (incident_id,))


_DELIVERY_SELECT = """
SELECT d.*, i.status AS incident_status, c.target, c.kind AS channel_kind, c.enabled AS channel_enabled
FROM alert_deliveries d
JOIN incidents i ON i.incident_id = d.incident_id
LEFT JOIN person_channels c ON c.channel_id = d.channel_id
"""

_NEXT_DELIVERY_SQL = _DELIVERY_SELECT + """
WHERE d.status = 'pending' AND d.next_attempt_at <= %s
ORDER BY d.next_attempt_at, d.delivery_id
LIMIT 1 FOR UPDATE OF d SKIP LOCKED"""

# Rows a sender marked 'sending': in flight, or left behind by a sender that died. The advisory lock
# tells them apart (a live sender holds it; it dies with the sender's connection). No row locks here:
# the row is locked (and re-checked) only once its advisory lock is ours.
_IN_DOUBT_SQL = "SELECT delivery_id, attempt_id FROM alert_deliveries WHERE status = 'sending' ORDER BY delivery_id LIMIT 50"

#: First key of the two-key advisory locks a sender holds on a delivery while it is 'sending'
#: (a space of its own: the migration runner uses the one-bigint form).
DELIVERY_LOCK_CLASS = 0x6D616C74


def _lock_key(delivery_id: int) -> tuple[int, int]:
    return DELIVERY_LOCK_CLASS, int(delivery_id) % 2_147_483_647


def _try_lock_delivery(conn: psycopg.Connection, delivery_id: int) -> bool:
    row = _one(conn, "SELECT pg_try_advisory_lock(%s, %s) AS ok", _lock_key(delivery_id))
    return bool(row and row["ok"])


def _unlock_delivery(conn: psycopg.Connection, delivery_id: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", _lock_key(delivery_id))


def release_delivery(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    """Drop the session lock ``begin_delivery`` took, if ``finish_delivery`` did not (error paths)."""
    if conn.closed or row.get("released"):
        return  # the lock died with the connection, or is already gone
    _unlock_delivery(conn, row["delivery_id"])
    row["released"] = True


def next_delivery(conn: psycopg.Connection, now: float) -> dict[str, Any] | None:
    """Lock the next due pending outbox row (inside the caller's transaction)."""
    return _one(conn, _NEXT_DELIVERY_SQL, (as_datetime(now),))


def _in_doubt(conn: psycopg.Connection) -> dict[str, Any] | None:
    """An in-doubt row whose sender is gone, locked (row and advisory lock), or None."""
    for candidate in _rows(conn, _IN_DOUBT_SQL):
        if not _try_lock_delivery(conn, candidate["delivery_id"]):
            continue  # its sender is alive
        row = _one(conn, _DELIVERY_SELECT + " WHERE d.delivery_id = %s AND d.status = 'sending' FOR UPDATE OF d",
                   (candidate["delivery_id"],))
        if row is not None:
            return row
        _unlock_delivery(conn, candidate["delivery_id"])  # finished meanwhile
    return None


def begin_delivery(conn: psycopg.Connection, now: float, worker_id: str,
                   message_id: Any = None, *, recover: bool = True) -> dict[str, Any] | None:
    """Start one send, committed before any network call (the caller must not be in a transaction).

    Picks the next due pending row, or else (``recover``) an in-doubt one: status 'sending' whose
    sender died. Takes the delivery's session advisory lock, marks the row ``sending`` with a fresh
    attempt id and commits. An in-doubt row is counted in ``resends`` and keeps its Message-ID: what
    the dead sender may already have handed to the channel is sent again as the same message.
    ``message_id(row)`` returns the Message-ID to pin (e-mail), or None.
    Returns the row (``attempt_id``, ``resend`` set; ``skipped`` if not worth sending any more), or
    None when there is nothing to do. The caller sends, then ``finish_delivery`` (which drops the
    lock), and ``release_delivery`` in a ``finally``.
    """
    with conn.transaction():
        # the mark needs no fsync of its own: lost in a database crash, the row is 'pending' again
        # and is re-sent with the same Message-ID (derived from the row)
        conn.execute("SET LOCAL synchronous_commit TO off")
        row = next_delivery(conn, now)
        resend = False
        if row is not None and not _try_lock_delivery(conn, row["delivery_id"]):
            row = None  # its previous attempt is still finishing (a moment): later
        if row is None and recover:
            row = _in_doubt(conn)
            resend = row is not None
        if row is None:
            return None
        reason = _superseded(row)
        if reason:
            record_delivery(conn, row, ok=False, error=reason, now=now, channel_name=str(row["channel"]), skip=True)
            _unlock_delivery(conn, row["delivery_id"])
            return {**row, "skipped": True, "resend": resend, "skip_reason": reason, "released": True}
        attempt_id = uuid.uuid4().hex
        mid = row["message_id"] or (message_id(row) if message_id is not None else None)
        conn.execute("""UPDATE alert_deliveries SET status = 'sending', attempt_id = %s, sending_since = %s, sending_by = %s,
                               message_id = %s, resends = resends + %s WHERE delivery_id = %s""",
                     (attempt_id, as_datetime(now), worker_id, mid, 1 if resend else 0, row["delivery_id"]))
        if resend:
            _timeline(conn, row["incident_id"], now, None, "resend_in_doubt", "system",
                      "a sender stopped between sending and recording; the same message is sent again",
                      {"recipient": row["recipient"], "step": row["step_key"], "channel": row["channel"],
                       "message_id": mid, "previous_worker": row["sending_by"]})
        return {**row, "attempt_id": attempt_id, "message_id": mid, "resend": resend, "skipped": False,
                "resends": int(row["resends"]) + (1 if resend else 0), "released": False}


def _superseded(row: dict[str, Any]) -> str | None:
    """An alert (or blink) for an incident someone already claimed or closed is not worth sending; nor
    is a question to the resident about an incident that has closed."""
    if row["notice"] in ("alert", "blink") and row["incident_status"] != "open":
        return f"incident already {row['incident_status']}"
    if row["notice"] == "resident_check" and row["incident_status"] in ("resolved", "cancelled"):
        return f"incident already {row['incident_status']}"  # nothing left to ask the resident about
    return None


def finish_delivery(conn: psycopg.Connection, row: dict[str, Any], *, ok: bool, error: str | None, now: float,
                    channel_name: str, final: bool = False) -> bool:
    """Record the outcome of the attempt ``begin_delivery`` started, in a transaction of its own.
    False if the attempt is no longer the current one (another worker took it over as in doubt)."""
    with conn.transaction():
        current = _one(conn, "SELECT attempt_id, status FROM alert_deliveries WHERE delivery_id = %s FOR UPDATE",
                       (row["delivery_id"],))
        if current is None or current["attempt_id"] != row["attempt_id"] or current["status"] != "sending":
            return False
        record_delivery(conn, row, ok=ok, error=error, now=now, channel_name=channel_name, final=final)
        # unlocking before COMMIT is safe: whoever takes the lock next locks the row and re-checks it
        _unlock_delivery(conn, row["delivery_id"])
        row["released"] = True
    return True


def record_delivery(conn: psycopg.Connection, row: dict[str, Any], *, ok: bool, error: str | None, now: float,
                    channel_name: str, skip: bool = False, final: bool = False) -> None:
    """Record a send's outcome: sent, skipped, retry later with backoff, or failed for good."""
    attempts = int(row["attempts"]) + (0 if skip else 1)
    incident_id = row["incident_id"]
    if skip:
        conn.execute("UPDATE alert_deliveries SET status = 'skipped', last_error = %s WHERE delivery_id = %s",
                     (error, row["delivery_id"]))
        return
    if ok:
        conn.execute("""UPDATE alert_deliveries SET status = 'sent', attempts = %s, sent_at = %s,
                        sent_real_at = clock_timestamp(), last_error = NULL WHERE delivery_id = %s""",
                     (attempts, as_datetime(now), row["delivery_id"]))
        data = {"recipient": row["recipient"], "notice": row["notice"], "step": row["step_key"], "attempts": attempts}
        if row.get("message_id"):
            data["message_id"] = row["message_id"]
        if row.get("resends"):
            data["resends"] = row["resends"]
        if row["notice"] == "blink" and error:  # sent, but the device did not echo it (MqttBlinkSender confirm_s)
            _timeline(conn, incident_id, now, None, "blink_not_confirmed", channel_name, None, {**data, "detail": error})
            return
        _timeline(conn, incident_id, now, None, "blinked" if row["notice"] == "blink" else "delivered", channel_name, None,
                  data)
        return
    delay = None if final else policy.retry_delay(attempts)
    if delay is not None:
        conn.execute("""UPDATE alert_deliveries SET status = 'pending', attempts = %s, next_attempt_at = %s, last_error = %s
                        WHERE delivery_id = %s""", (attempts, as_datetime(now + delay), error, row["delivery_id"]))
        return
    conn.execute("UPDATE alert_deliveries SET status = 'failed', attempts = %s, last_error = %s WHERE delivery_id = %s",
                 (attempts, error, row["delivery_id"]))
    _timeline(conn, incident_id, now, None, "delivery_failed", channel_name, error,
              {"recipient": row["recipient"], "notice": row["notice"], "step": row["step_key"], "attempts": attempts})
    if row["notice"] in ("alert", "technical") and row["person_id"]:
        still = _one(conn, """SELECT 1 AS ok FROM alert_deliveries WHERE incident_id = %s AND step_key = %s AND recipient = %s
                              AND channel <> 'inapp' AND status IN ('pending', 'sending', 'sent')""",
                     (incident_id, row["step_key"], row["recipient"]))
        if still is None:
            inc = incident_row(conn, incident_id)
            assert inc is not None
            report_unreachable(conn, inc, row["person_id"], now, reason="all_failed")
