"""Database functions of the alert engine (psycopg, plain functions, no HTTP).

Two groups:
- the API the app calls with the acting person: ``list_my_alerts``, ``get_incident``, ``timeline``,
  ``claim``, ``comment``, ``resolve``, ``get_chain`` / ``set_chain`` / ``reset_chain``,
  ``add_channel`` / ``list_channels`` / ``remove_channel``, ``set_quiet_hours``,
  ``list_notifications`` / ``mark_read``. Only the household's team (household_watchers), the
  area's coordinator, or an operator may act on an incident; others get ``NotFound``.
- the engine the worker runs lives in ``alerts.engine`` (``adopt_new``, ``step_due``), the records
  both write in ``alerts.records`` (timeline, team, notices); their names used by callers are
  re-exported here.

Every function that writes runs in one transaction (``conn.transaction()``), so a step's new state,
its outbox rows, its in-app notifications and its timeline rows commit together or not at all.
Times are the caller's clock (``clock.now()``), never the database's ``now()``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from mimamori.alerts import policy
from mimamori.alerts.channels import ALLOWED_APPRISE_SCHEMES, EMAIL_ADDRESS
from mimamori.alerts.engine import adopt_one  # noqa: F401 - re-exported for a caller outside mimamori/alerts/ (tests/test_app_api.py)
from mimamori.alerts.models import (
    OUTCOMES,
    ActorLike,
    Conflict,
    Forbidden,
    IncidentView,
    InvalidInput,
    NotFound,
    Notification,
    TimelineEntry,
)
from mimamori.alerts.records import (
    _INCIDENT_SQL,
    _chain_for,
    _one,
    _rows,
    actor_name,
    add_timeline,
    default_chain,
    enqueue_notice,
    escalation_state,
    load_team,
    stop_escalation,
)
from mimamori.kernel import access
from mimamori.kernel.clock import Clock, as_datetime

log = logging.getLogger(__name__)

MAX_COMMENT = 2000


def _may_act(conn: psycopg.Connection, actor: ActorLike, household_id: str | None, area: str | None) -> bool:
    """A household's team business (or, without a household, an area's) the actor may see and act on:
    the one rule in ``mimamori.kernel.access``."""
    if household_id is not None:
        return access.may_act_for_household(conn, actor, household_id)
    return access.may_manage_area(actor, area)


def _scope_sql(actor: ActorLike) -> tuple[str, dict[str, Any]]:
    """WHERE fragment: incidents (alias i) the actor may see and act on (``mimamori.kernel.access``)."""
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


def claim(conn: psycopg.Connection, actor: ActorLike, incident_id: int, *, clock: Clock, channel: str = "app") -> IncidentView:
    """"I'll go": the actor takes the check. Escalation pauses; everyone alerted so far is told."""
    now = clock.now()
    with conn.transaction():
        inc = _incident_for(conn, actor, incident_id, lock=True)
        if inc["status"] != "open":
            raise Conflict(f"incident is {inc['status']}" + (f" by {inc['claimed_by']}" if inc["claimed_by"] else ""))
        conn.execute("""UPDATE incidents SET status = 'claimed', claimed_at = %s, claimed_by = %s, updated_at = %s
                        WHERE incident_id = %s""", (as_datetime(now), actor.person_id, as_datetime(now), incident_id))
        add_timeline(conn, incident_id, now, actor.person_id, "claimed", channel)
        _pause_for_claim(conn, inc, now)
        others = [p for p in escalation_state(conn, incident_id).notified if p != actor.person_id]
        if others:
            by = actor_name(conn, actor.person_id)
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
        entry_id = add_timeline(conn, incident_id, now, actor.person_id, "comment", channel, text)
        team = [r["person_id"] for r in _rows(conn, "SELECT person_id FROM household_watchers WHERE household_id = %s",
                                              (inc["household_id"],))]
        others = [p for p in dict.fromkeys([*team, *escalation_state(conn, incident_id).notified]) if p != actor.person_id]
        if others:
            enqueue_notice(conn, inc, others, f"comment.{entry_id}", "comment", urgent=False, now=now,
                           by=actor_name(conn, actor.person_id), note=text, inapp_only=True)
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
        stop_escalation(conn, incident_id, "done", now)
        conn.execute("""UPDATE incidents SET status = 'resolved', closed_at = %s, closed_by = %s, outcome = %s,
                               outcome_note = %s, updated_at = %s WHERE incident_id = %s""",
                     (as_datetime(now), actor.person_id, outcome, note or None, as_datetime(now), incident_id))
        add_timeline(conn, incident_id, now, actor.person_id, "resolved", channel, note or None, {"outcome": outcome})
        if outcome == "away" and inc["household_id"]:
            if away_until is None:  # refused above already; for the type checker
                raise InvalidInput("outcome 'away' needs away_until")
            conn.execute("""INSERT INTO away_periods (household_id, starts_at, until, source, set_by, note)
                            VALUES (%s, %s, %s, 'alert_outcome', %s, %s)""",
                         (inc["household_id"], as_datetime(now), as_datetime(away_until), actor.person_id, note or None))
            add_timeline(conn, incident_id, now, actor.person_id, "away_set", channel, None, {"until": away_until})
        if outcome == "device_problem":
            task = _one(conn, """INSERT INTO device_tasks (household_id, area, incident_id, note, opened_at, opened_by)
                                 VALUES (%s, %s, %s, %s, %s, %s) RETURNING task_id""",
                        (inc["household_id"], inc["eff_area"], incident_id, note or None, as_datetime(now), actor.person_id))
            if task is None:  # a row the same transaction just wrote or locked
                raise RuntimeError("task: expected a row, found none")
            add_timeline(conn, incident_id, now, actor.person_id, "device_task_opened", channel, None, {"task_id": task["task_id"]})
            team = load_team(conn, inc["household_id"], inc["eff_area"])
            if team.coordinators:
                enqueue_notice(conn, inc, team.coordinators, "device_task", "device_task", urgent=False, now=now,
                               note=note)
        told = [p for p in escalation_state(conn, incident_id).notified if p != actor.person_id]
        if told:
            enqueue_notice(conn, inc, told, "resolved", "resolved", urgent=False, now=now, outcome=outcome, note=note)
        return _view(_incident_for(conn, actor, incident_id))


def log_admin_change(conn: psycopg.Connection, at: float, actor: ActorLike, action: str, subject: str,
               data: dict[str, Any] | None = None, channel: str = "app") -> int:
    row = _one(conn, """INSERT INTO alert_admin_log (at, actor, action, subject, channel, data) VALUES (%s, %s, %s, %s, %s, %s)
                        RETURNING entry_id""", (as_datetime(at), actor.person_id, action, subject, channel, Jsonb(data or {})))
    if row is None:  # a row the same transaction just wrote or locked
        raise RuntimeError("row: expected a row, found none")
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
        log_admin_change(conn, clock.now(), actor, "chain_set", household_id, {"steps": clean}, channel)
    return clean


def reset_chain(conn: psycopg.Connection, actor: ActorLike, household_id: str, *, clock: Clock | None = None,
                channel: str = "app") -> None:
    """Back to the default chain."""
    with conn.transaction():
        _household_for_manager(conn, actor, household_id)
        conn.execute("DELETE FROM escalation_chains WHERE household_id = %s", (household_id,))
        log_admin_change(conn, _now_or_db(conn, clock), actor, "chain_reset", household_id, None, channel)


def _now_or_db(conn: psycopg.Connection, clock: Clock | None) -> float:
    """The caller's clock; callers without one (older signatures) get the database's time."""
    if clock is not None:
        return clock.now()
    row = _one(conn, "SELECT extract(epoch FROM now())::float8 AS t")
    if row is None:  # a row the same transaction just wrote or locked
        raise RuntimeError("row: expected a row, found none")
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
      invitation).
    """
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
    URL (``kind='apprise'``) or a Web Push subscription (JSON) for a person.
    """
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
        if row is None:  # a row the same transaction just wrote or locked
            raise RuntimeError("row: expected a row, found none")
        # the target may hold a secret (a token in an Apprise URL): the log keeps only its scheme
        log_admin_change(conn, _now_or_db(conn, clock), actor, "channel_added", person_id,
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
        log_admin_change(conn, _now_or_db(conn, clock), actor, "channel_removed", person_id, {"channel_id": channel_id})


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
        log_admin_change(conn, _now_or_db(conn, clock), actor, "quiet_hours_set", person_id,
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
