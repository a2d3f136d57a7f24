"""The resident's own answer to a resident check (a no-login, single-use link in their message).

A resident check (``policy._resident_check``) asks the residents before the team hears anything.
Their answer, from the link's page:

- ``fine``: an alert nobody has claimed yet is cancelled (outcome ``resident_responded``); whoever
  was already alerted is told. A claimed alert stays with its claimer, who is told the answer.
- ``away`` (until a date): away mode until then (``away_periods``, source ``resident``), and the
  alert is cancelled the same way (outcome ``away``).
- ``help``: the whole team is told at once, and a check still waiting ends now so the chain goes on
  (the engine reads the answer from ``resident_check_links``); the detector no longer closes the
  alert when a switch is used. Never refused: not when the link has expired, and an alert that
  closed meanwhile opens again (the team can claim it; its chain runs once more from the team).

Whatever the answer, the link is used up and the answer is on the incident's timeline with the
resident as its actor. Only the token's hash is stored (``resident_check_links``).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from mimamori.alerts import engine, metrics, policy, records
from mimamori.alerts.models import Conflict, InvalidInput, NotFound
from mimamori.kernel import contract
from mimamori.kernel.clock import Clock, as_datetime
from mimamori.kernel.db import fetch_dict

ANSWERS: Final = contract.RESIDENT_ANSWERS
MAX_AWAY_DAYS: Final = 60
MAX_TOKEN = 200
LINK_PATH: Final = engine.RESIDENT_LINK_PATH


class LinkGone(Conflict):
    """The link expired (an answer is no longer useful to anyone)."""


_LINK_SELECT = """SELECT l.*, i.status, i.claimed_by, i.kind, h.display_name AS household_name, h.timezone, p.locale
                  FROM resident_check_links l JOIN incidents i ON i.incident_id = l.incident_id
                  JOIN households h ON h.household_id = l.household_id
                  LEFT JOIN people p ON p.person_id = l.person_id"""


def _link(conn: psycopg.Connection, token: str, *, lock: bool = False) -> dict[str, Any]:
    if not token or len(token) > MAX_TOKEN:
        raise NotFound("this link is not valid")
    row = fetch_dict(conn, f"""{_LINK_SELECT} WHERE l.token_hash = %s {"FOR NO KEY UPDATE OF l, i" if lock else ""}""",
                       (engine.resident_token_hash(token),))
    if row is None:
        raise NotFound("this link is not valid (it was changed or never sent)")
    return row


def _link_of_person(conn: psycopg.Connection, incident_id: int, person_id: str) -> dict[str, Any]:
    """The newest check sent to this resident for this incident (the same answer, from another channel)."""
    row = fetch_dict(conn, f"""{_LINK_SELECT} WHERE l.incident_id = %s AND l.person_id = %s
                                 ORDER BY l.created_at DESC LIMIT 1 FOR NO KEY UPDATE OF l, i""", (incident_id, person_id))
    if row is None:
        raise NotFound("no check was sent to you for this alert")
    return row


def link_info(conn: psycopg.Connection, token: str, *, clock: Clock) -> dict[str, Any]:
    """What the answer page shows before the resident presses anything (does not use the link up)."""
    row = _link(conn, token)
    tz = row["timezone"] if policy.valid_timezone(row["timezone"]) else "Asia/Tokyo"
    today = datetime.fromtimestamp(clock.now(), ZoneInfo(tz)).date()
    return {"household_name": row["household_name"], "locale": row["locale"] or "ja",
            "used": row["used_at"] is not None, "answer": row["answer"],
            "expired": row["used_at"] is None and row["expires_at"] <= as_datetime(clock.now()),
            "today": today.isoformat(), "tomorrow": (today + timedelta(days=1)).isoformat(),
            "last_day": (today + timedelta(days=MAX_AWAY_DAYS)).isoformat()}


def away_until_from_date(day: str, tz: str, now: float) -> float:
    """The end of the day the resident says they will be back (their household's time zone)."""
    try:
        back = date.fromisoformat(day)
    except (TypeError, ValueError):
        raise InvalidInput("the return date must be a date (YYYY-MM-DD)") from None
    if back >= date.max - timedelta(days=1):  # 9999-12-31 + 1 day overflowed (a 500; issue 17)
        raise InvalidInput(f"away mode is at most {MAX_AWAY_DAYS} days; a coordinator can set longer")
    zone = ZoneInfo(tz if policy.valid_timezone(tz) else "Asia/Tokyo")
    until = datetime.combine(back + timedelta(days=1), time(0, 0), zone).timestamp()
    if until <= now:
        raise InvalidInput("the return date is in the past")
    if until - now > (MAX_AWAY_DAYS + 1) * 86400:
        raise InvalidInput(f"away mode is at most {MAX_AWAY_DAYS} days; a coordinator can set longer")
    return until


def answer(conn: psycopg.Connection, token: str, reply: str, *, clock: Clock, back_on: str | None = None) -> dict[str, Any]:
    """Record the resident's answer and act on it (see the module text). ``back_on``: the date they
    will be back (``away`` only). Raises ``NotFound`` (a link never sent), ``Conflict`` (already
    used), ``LinkGone`` (expired), ``InvalidInput``.
    """
    if reply not in ANSWERS:
        raise InvalidInput(f"answer must be one of {ANSWERS}")
    with conn.transaction():
        result = _answer(conn, _link(conn, token, lock=True), reply, clock=clock, back_on=back_on, channel="link")
    metrics.RESIDENT_ANSWERS.labels(reply).inc()  # once committed
    return result


def answer_as_resident(conn: psycopg.Connection, person_id: str, incident_id: int, reply: str, *, clock: Clock,
                       channel: str) -> dict[str, Any]:
    """The same answer from a resident known otherwise than by the link (their linked LINE account): the
    newest check sent to them for this incident. ``fine`` and ``help`` only (``away`` needs a date)."""
    if reply not in ("fine", "help"):
        raise InvalidInput("answer must be fine or help")
    with conn.transaction():
        result = _answer(conn, _link_of_person(conn, incident_id, person_id), reply, clock=clock, back_on=None,
                         channel=channel)
    metrics.RESIDENT_ANSWERS.labels(reply).inc()
    return result


def _answer(conn: psycopg.Connection, link: dict[str, Any], reply: str, *, clock: Clock, back_on: str | None,
            channel: str) -> dict[str, Any]:
    now = clock.now()
    # one body for every channel; the caller holds the transaction and the link's lock
    if link["used_at"] is not None:
        raise Conflict("this link has already been used")
    if link["expires_at"] <= as_datetime(now) and reply != "help":  # a call for help is never refused
        raise LinkGone("this link has expired")
    away_until = away_until_from_date(back_on or "", link["timezone"], now) if reply == "away" else None
    conn.execute("""UPDATE resident_check_links SET used_at = %s, answer = %s, away_until = %s WHERE token_hash = %s""",
                 (as_datetime(now), reply, as_datetime(away_until) if away_until else None, link["token_hash"]))
    incident_id, person_id = link["incident_id"], link["person_id"]
    records.add_timeline(conn, incident_id, now, person_id, "resident_answered", channel, None,
                      {"answer": reply, **({"until": away_until} if away_until else {})})
    inc = records.incident_row(conn, incident_id)
    if inc is None:  # a row the same transaction just wrote or locked
        raise RuntimeError("inc: expected a row, found none")
    if away_until is not None:
        conn.execute("""INSERT INTO away_periods (household_id, starts_at, until, source, set_by, note)
                        VALUES (%s, %s, %s, 'resident', %s, 'answered a resident check')""",
                     (link["household_id"], as_datetime(now), as_datetime(away_until), person_id))
        records.add_timeline(conn, incident_id, now, person_id, "away_set", channel, None, {"until": away_until})
    effect = _act(conn, inc, link, reply, now, person_id)
    return {"incident_id": incident_id, "answer": reply, "away_until": away_until, "effect": effect}


def _reopen_for_help(conn: psycopg.Connection, inc: dict[str, Any], state: policy.State, now: float,
                     person_id: str | None) -> bool:
    """A call for help on an alert that closed meanwhile (the resident reached a switch, then asked
    for help) opens it again, so the team can claim it; its chain runs once more from the team's
    first step (a new round: the resident is not asked again). False when another alert of the same
    kind is open for the home (the team is told on that one's behalf).
    """
    incident_id = inc["incident_id"]
    other = fetch_dict(conn, """SELECT incident_id FROM incidents WHERE household_id = %s AND kind = %s
                                  AND status IN ('open', 'claimed') AND incident_id <> %s""",
                         (inc["household_id"], inc["kind"], incident_id))
    if other is not None:
        return False
    conn.execute("""UPDATE incidents SET status = 'open', closed_at = NULL, closed_by = NULL, outcome = NULL,
                    outcome_note = NULL, updated_at = %s WHERE incident_id = %s""", (as_datetime(now), incident_id))
    records.add_timeline(conn, incident_id, now, person_id, "reopened_for_help", "link", None, {"was": inc["status"]})
    again = policy.State(round=state.round + 1, notified=state.notified)
    # the escalation exists: the question this answers was asked by it
    conn.execute("""UPDATE alert_escalations SET state = %s, status = 'running', next_step_at = %s, updated_at = %s
                    WHERE incident_id = %s""", (Jsonb(again.to_json()), as_datetime(now), as_datetime(now), incident_id))
    return True


def _act(conn: psycopg.Connection, inc: dict[str, Any], link: dict[str, Any], reply: str, now: float,
         person_id: str | None) -> str:
    """What the answer did to the alert: 'cancelled', 'escalated' (the check ended early), 'reopened'
    (help after it closed), 'told_team' or 'none' (the alert was already closed, or nobody to tell).
    """
    incident_id = inc["incident_id"]
    state = records.escalation_state(conn, incident_id)
    notice = f"resident_answered_{reply}"
    by = records.actor_name(conn, person_id) if person_id else ""
    if inc["status"] == "open" and reply in ("fine", "away"):
        outcome = "resident_responded" if reply == "fine" else "away"
        note = f"the resident answered the check: {reply}"
        records.stop_escalation(conn, incident_id, "done", now)
        conn.execute("""UPDATE incidents SET status = 'cancelled', closed_at = %s, closed_by = %s, outcome = %s,
                        outcome_note = %s, updated_at = %s WHERE incident_id = %s""",
                     (as_datetime(now), person_id, outcome, note, as_datetime(now), incident_id))
        records.add_timeline(conn, incident_id, now, None, "cancelled", "system", note, {"outcome": outcome})
        if state.notified:
            records.enqueue_notice(conn, inc, state.notified, "cancelled", notice, urgent=True, now=now, by=by)
        return "cancelled"
    if inc["status"] not in ("open", "claimed") and reply != "help":
        return "none"  # the alert is over; a call for help never is
    reopened = inc["status"] not in ("open", "claimed") and _reopen_for_help(conn, inc, state, now, person_id)
    if reopened:
        inc = {**inc, "status": "open", "claimed_by": None}
    escalated = False
    if reply == "help" and inc["status"] in ("open", "claimed"):
        # the detector must not close it when a switch is used again: only a person who went closes it
        conn.execute("UPDATE incidents SET evidence = evidence || jsonb_build_object('help_asked_at', %s::float8)"
                     " WHERE incident_id = %s", (now, incident_id))
    if reply == "help" and inc["status"] == "open" and state.check_since is not None and not reopened:
        # during the check: the engine's next look (now) ends the check and goes on with the chain
        escalated = conn.execute("UPDATE alert_escalations SET next_step_at = %s WHERE incident_id = %s AND status = 'running'",
                                 (as_datetime(now), incident_id)).rowcount > 0
    # tell who knows of the alert (the claimer, whoever was alerted) and, for "help", the whole team now
    team = [p for p, _tier in records.load_team(conn, inc["household_id"], inc["eff_area"]).members]
    told = list(dict.fromkeys([*([inc["claimed_by"]] if inc["claimed_by"] else []), *state.notified,
                               *(team if reply == "help" else [])]))
    if told:
        records.enqueue_notice(conn, inc, told, f"resident_answered.{link['step_key']}.{person_id}", notice,
                               urgent=True, now=now, by=by)
    return "reopened" if reopened else "escalated" if escalated else "told_team" if told else "none"
