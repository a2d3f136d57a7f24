"""Database functions of the safety check (psycopg, plain functions, no HTTP).

- people act through ``start_check``, ``list_checks``, ``get_check``, ``board``, ``answer_in_app``,
  ``claim``, ``household_detail``, ``issue_link``, ``close_check``, ``export_csv`` (scope enforced
  here: operator everything; coordinator their area; watcher their teams' households; resident
  their own household);
- a no-login link answers through ``link_info`` / ``answer_by_link`` (signed, single use);
- the worker runs ``recognise_new_events`` and the outbox functions ``next_delivery`` /
  ``record_delivery``.

Every function that writes runs in one transaction; times are the caller's clock.
Team claims and timelines reuse the alert engine: a per-household incident of kind
``safety_check`` (created with a paused, empty escalation so no alert worker runs a chain for it),
claimed and resolved through ``alerts.service``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from psycopg.types.json import Jsonb

from alerts import models as alert_models
from alerts import service as alerts_service
from alerts.channels import channel_kind_name
from mimamori import access
from mimamori.clock import Clock, as_datetime
from mimamori.db import fetch_dict, fetch_dicts
from safety import metrics, recognise
from safety.models import (
    ANSWERS,
    BOARD_STATES,
    ON_BEHALF_ANSWERS,
    BadLink,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    render_message,
)

NOTIFY_CHANNEL = "mimamori_safety"
MAX_NOTE = 2000
MAX_HOUSEHOLDS = 20_000


_rows = fetch_dicts
_one = fetch_dict


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _audit(conn: psycopg.Connection, check_id: int, household_id: str | None, now: float, actor: str | None,
           action: str, channel: str, data: dict[str, Any] | None = None) -> None:
    conn.execute("""INSERT INTO safety_audit (check_id, household_id, at, actor, action, channel, data)
                    VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                 (check_id, household_id, as_datetime(now), actor, action, channel, Jsonb(data or {})))


# =============================================================================================
# Scope
# =============================================================================================


def _scope(actor: Any, alias: str = "h") -> tuple[str, dict[str, Any]]:
    """WHERE fragment limiting ``households AS <alias>`` to the actor's (``mimamori.access``)."""
    return access.household_sql(actor, alias)


def _manager(actor: Any) -> None:
    if actor.role not in ("operator", "coordinator"):
        raise Forbidden("only a coordinator or an operator starts, closes or exports a safety check")


def _check_for(conn: psycopg.Connection, actor: Any, check_id: int) -> dict[str, Any]:
    """The check, if it holds at least one household the actor may see."""
    where, params = _scope(actor)
    row = _one(conn, f"""SELECT c.*, p.display_name AS started_by_name FROM safety_checks c
                         LEFT JOIN people p ON p.person_id = c.started_by
                         WHERE c.check_id = %(cid)s AND EXISTS (SELECT 1 FROM safety_answers a
                           JOIN households h ON h.household_id = a.household_id
                           WHERE a.check_id = c.check_id AND {where})""", {**params, "cid": check_id})
    if row is None:
        raise NotFound(f"safety check {check_id} not found")
    return row


def _answer_for(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, *,
                lock: bool = False) -> dict[str, Any]:
    where, params = _scope(actor)
    row = _one(conn, f"""SELECT a.*, h.display_name AS household_name, h.area, c.closed_at AS check_closed_at,
                                c.started_at AS check_started_at
                         FROM safety_answers a JOIN households h ON h.household_id = a.household_id
                         JOIN safety_checks c ON c.check_id = a.check_id
                         WHERE a.check_id = %(cid)s AND a.household_id = %(hid)s AND {where}
                         {"FOR NO KEY UPDATE OF a" if lock else ""}""",
               {**params, "cid": check_id, "hid": household_id})
    if row is None:
        raise NotFound("household not in this safety check")
    return row


# =============================================================================================
# Starting a check
# =============================================================================================


class Links:
    """Makes and reads answer links: ``signer`` is ``mimamori.signing.signer(settings, "safety-answer")``."""

    def __init__(self, signer: URLSafeTimedSerializer, base_url: str, max_age_s: int = 7 * 86400) -> None:
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self.max_age_s = max_age_s

    def url(self, token: str) -> str:
        return f"{self.base_url}/safety/a/{token}"


def _nonce_hash(nonce: str) -> bytes:
    return hashlib.sha256(nonce.encode()).digest()


def _new_link(conn: psycopg.Connection, links: Links, check_id: int, household_id: str, person_id: str | None,
              now: float) -> str:
    nonce = secrets.token_urlsafe(16)
    conn.execute("""INSERT INTO safety_links (nonce_hash, check_id, household_id, person_id, created_at)
                    VALUES (%s, %s, %s, %s, %s)""", (_nonce_hash(nonce), check_id, household_id, person_id, as_datetime(now)))
    return links.signer.dumps({"c": check_id, "h": household_id, "n": nonce})


def start_check(conn: psycopg.Connection, actor: Any, *, message: str, clock: Clock, links: Links,
                area: str | None = None, household_ids: Sequence[str] | None = None, blinks: int = 3) -> int:
    """Start a safety check of an area (or a list of households) with a message. In the same
    transaction: one answer row per household, a blink for each of its bulbs (and plugs a coordinator allowed), an in-app
    message to every household member and watcher, an outbox row for each of their other channels
    (residents' messages carry their personal single-use link). Returns the check id."""
    _manager(actor)
    message = (message or "").strip()
    if not message or len(message) > 1000 or "\x00" in message:
        raise InvalidInput("a message is 1..1000 characters")
    if (area is None) == (not household_ids):
        raise InvalidInput("give either an area or a list of households")
    if actor.role == "coordinator" and area is not None and area != actor.area:
        raise Forbidden("a coordinator starts safety checks in their own area")
    now = clock.now()
    with conn.transaction():
        where, params = _scope(actor)
        if area is not None:
            homes = _rows(conn, f"SELECT h.household_id, h.display_name FROM households h WHERE h.area = %(area)s AND {where}"
                                " ORDER BY h.household_id", {**params, "area": area})
        else:
            ids = list(dict.fromkeys(household_ids or []))
            if len(ids) > MAX_HOUSEHOLDS:
                raise InvalidInput("too many households")
            homes = _rows(conn, f"SELECT h.household_id, h.display_name FROM households h WHERE h.household_id = ANY(%(ids)s)"
                                f" AND {where} ORDER BY h.household_id", {**params, "ids": ids})
            if len(homes) != len(ids):
                raise NotFound("some households were not found")
        if not homes:
            raise InvalidInput("no households to check")
        row = _one(conn, """INSERT INTO safety_checks (area, message, started_by, started_at) VALUES (%s, %s, %s, %s)
                            RETURNING check_id""", (area, message, actor.person_id, as_datetime(now)))
        assert row is not None
        check_id = int(row["check_id"])
        hids = [h["household_id"] for h in homes]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO safety_answers (check_id, household_id, updated_at) VALUES (%s, %s, %s)",
                            [(check_id, hid, as_datetime(now)) for hid in hids])
        _audit(conn, check_id, None, now, actor.person_id, "started", "app",
               {"area": area, "households": len(hids), "message": message})
        # People's messages first in the outbox: they are throttled per channel kind, and while their
        # kind waits for a token the worker sends blinks; queued after the blinks, watchers heard of a
        # check of 2,000 homes only 22 s after it started (bench/safety_bench.py).
        _send_messages(conn, check_id, homes, message, now, links)
        _enqueue_blinks(conn, check_id, hids, now, blinks)
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(check_id)))
    return check_id


def _enqueue_blinks(conn: psycopg.Connection, check_id: int, hids: list[str], now: float, blinks: int) -> None:
    devices = _rows(conn, """SELECT d.device_id, d.gateway_id, d.household_id FROM devices d
                             WHERE d.household_id = ANY(%s) AND d.gateway_id IS NOT NULL
                               AND (d.kind = 'bulb' AND d.blink_allowed IS NOT FALSE OR d.kind = 'plug' AND d.blink_allowed)
                             ORDER BY d.household_id, d.device_id""", (hids,))
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO safety_deliveries (check_id, recipient, channel, throttle_key, payload, created_at, next_attempt_at)
               VALUES (%s, %s, 'mqtt', 'mqtt', %s, %s, %s) ON CONFLICT DO NOTHING""",
            [(check_id, f"device:{d['device_id']}", Jsonb({"gateway_id": d["gateway_id"], "device_id": d["device_id"],
                                                            "household_id": d["household_id"],
                                                            "args": {"times": blinks, "reason": "safety_check", "switch_ok": True}}),
              as_datetime(now), as_datetime(now)) for d in devices])


def _send_messages(conn: psycopg.Connection, check_id: int, homes: list[dict[str, Any]], message: str, now: float,
                   links: Links) -> None:
    hids = [h["household_id"] for h in homes]
    names = {h["household_id"]: h["display_name"] for h in homes}
    residents = _rows(conn, """SELECT person_id, household_id, locale FROM people
                               WHERE role = 'resident' AND household_id = ANY(%s) ORDER BY person_id""", (hids,))
    watchers = _rows(conn, """SELECT w.person_id, p.locale, array_agg(w.household_id ORDER BY w.household_id) AS hids
                              FROM household_watchers w JOIN people p ON p.person_id = w.person_id
                              WHERE w.household_id = ANY(%s) GROUP BY w.person_id, p.locale ORDER BY w.person_id""", (hids,))
    people = [r["person_id"] for r in residents] + [r["person_id"] for r in watchers]
    channels: dict[str, list[dict[str, Any]]] = {}
    for ch in _rows(conn, """SELECT channel_id, person_id, kind, target FROM person_channels
                             WHERE person_id = ANY(%s) AND enabled ORDER BY person_id, position, channel_id""", (people,)):
        channels.setdefault(ch["person_id"], []).append(ch)
    board = f"{links.base_url}/safety/{check_id}"
    notes: list[tuple[Any, ...]] = []
    outbox: list[tuple[Any, ...]] = []

    def deliver(person_id: str, title: str, body: str, data: dict[str, Any]) -> None:
        notes.append((person_id, title, body, Jsonb(data), as_datetime(now)))
        for ch in channels.get(person_id, []):
            key = channel_kind_name(ch["kind"], ch["target"])
            outbox.append((check_id, person_id, person_id, f"{ch['kind']}:{ch['channel_id']}", ch["channel_id"], key,
                           Jsonb({"title": title, "body": body, "urgent": True, **data}), as_datetime(now), as_datetime(now)))

    for r in residents:
        url = links.url(_new_link(conn, links, check_id, r["household_id"], r["person_id"], now))
        title, body = render_message("resident", r["locale"], message=message, link=url)
        deliver(r["person_id"], title, body, {"safety_check_id": check_id, "household_id": r["household_id"], "url": url})
    for w in watchers:
        title, body = render_message("watcher", w["locale"], message=message, board=board,
                                     names="、".join(names[h] for h in w["hids"]))
        deliver(w["person_id"], title, body, {"safety_check_id": check_id, "url": board})
    with conn.cursor() as cur:
        cur.executemany("""INSERT INTO notifications (person_id, incident_id, notice, urgent, title, body, data, created_at)
                           VALUES (%s, NULL, 'safety_check', true, %s, %s, %s, %s)""", notes)
        cur.executemany("""INSERT INTO safety_deliveries (check_id, recipient, person_id, channel, channel_id, throttle_key,
                                  payload, created_at, next_attempt_at)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""", outbox)
    _audit(conn, check_id, None, now, None, "messages_queued", "system",
           {"in_app": len(notes), "outbox": len(outbox), "residents": len(residents), "watchers": len(watchers)})


def issue_link(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, *, clock: Clock,
               links: Links) -> str:
    """A fresh single-use answer link for a household (e.g. printed, or read out on the phone)."""
    _manager(actor)
    now = clock.now()
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id)
        if a["check_closed_at"] is not None:
            raise Gone("the safety check is closed")
        token = _new_link(conn, links, check_id, household_id, None, now)
        _audit(conn, check_id, household_id, now, actor.person_id, "link_issued", "app")
    return links.url(token)


# =============================================================================================
# Reading
# =============================================================================================

_BOARD_SQL = """
SELECT a.household_id, h.display_name AS household_name, h.area, a.state, a.how, a.answered_at, a.answered_by,
       ap.display_name AS answered_by_name, a.note, a.device_id, a.last_activity_at, a.incident_id,
       i.status AS incident_status, i.claimed_by, cp.display_name AS claimed_by_name,
       coalesce(sp.lives_alone, true) AS lives_alone,
       coalesce(gw.total, 0) AS gateways_total, coalesce(gw.offline, 0) AS gateways_offline
FROM safety_answers a
JOIN households h ON h.household_id = a.household_id
LEFT JOIN people ap ON ap.person_id = a.answered_by
LEFT JOIN incidents i ON i.incident_id = a.incident_id
LEFT JOIN people cp ON cp.person_id = i.claimed_by
LEFT JOIN safety_household_profiles sp ON sp.household_id = a.household_id
-- the home's gateways: its own, and area gateways its devices report through, counted once each.
-- Aggregated once for the check's homes (a per-row OR scanned every gateway for every home: 2.6 s
-- for a board of 5,000 homes, measured by bench/safety_bench.py).
LEFT JOIN (SELECT hg.household_id, count(*) AS total, count(*) FILTER (WHERE g.status = 'offline') AS offline
           FROM (SELECT g.household_id, g.gateway_id FROM gateways g
                 WHERE g.household_id IN (SELECT household_id FROM safety_answers WHERE check_id = %(cid)s)
                 UNION
                 SELECT d.household_id, d.gateway_id FROM devices d
                 WHERE d.gateway_id IS NOT NULL
                   AND d.household_id IN (SELECT household_id FROM safety_answers WHERE check_id = %(cid)s)) hg
           JOIN gateways g ON g.gateway_id = hg.gateway_id
           GROUP BY hg.household_id) gw ON gw.household_id = a.household_id
WHERE a.check_id = %(cid)s AND {where}
"""


def _board_rows(conn: psycopg.Connection, actor: Any, check_id: int) -> list[dict[str, Any]]:
    where, params = _scope(actor)
    rows = _rows(conn, _BOARD_SQL.format(where=where), {**params, "cid": check_id})
    for r in rows:
        r["board_state"] = recognise.effective_state(r["state"], int(r["gateways_total"]), int(r["gateways_offline"]))
    rows.sort(key=lambda r: recognise.risk_key(r["board_state"], r["lives_alone"], _epoch(r["last_activity_at"]),
                                               r["household_name"]))
    return rows


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {s: 0 for s in BOARD_STATES}
    for r in rows:
        counts[r["board_state"]] += 1
    counts["total"] = len(rows)
    return counts


def _check_json(c: dict[str, Any]) -> dict[str, Any]:
    return {"check_id": c["check_id"], "area": c["area"], "message": c["message"], "started_by": c["started_by"],
            "started_by_name": c.get("started_by_name"), "started_at": c["started_at"], "closed_at": c["closed_at"],
            "closed_by": c["closed_by"], "open": c["closed_at"] is None}


def list_checks(conn: psycopg.Connection, actor: Any, *, limit: int = 50) -> list[dict[str, Any]]:
    """Checks holding households the actor may see, newest first, with counts of their households."""
    where, params = _scope(actor)
    checks = _rows(conn, f"""SELECT c.*, p.display_name AS started_by_name FROM safety_checks c
                            LEFT JOIN people p ON p.person_id = c.started_by
                            WHERE EXISTS (SELECT 1 FROM safety_answers a JOIN households h ON h.household_id = a.household_id
                                          WHERE a.check_id = c.check_id AND {where})
                            ORDER BY c.started_at DESC, c.check_id DESC LIMIT %(lim)s""", {**params, "lim": limit})
    out = []
    for c in checks:
        out.append({**_check_json(c), "counts": _counts(_board_rows(conn, actor, c["check_id"]))})
    return out


def get_check(conn: psycopg.Connection, actor: Any, check_id: int) -> dict[str, Any]:
    c = _check_for(conn, actor, check_id)
    return {**_check_json(c), "counts": _counts(_board_rows(conn, actor, check_id))}


def board(conn: psycopg.Connection, actor: Any, check_id: int, *, state: str | None = None,
          lives_alone: bool | None = None, q: str | None = None, now: float | None = None) -> dict[str, Any]:
    """The live board: the check, counts per state (over the actor's households) and the households
    ordered by risk, filtered by board state / living alone / a name fragment. With ``now`` (the
    caller's clock), every household shown is logged as viewed (the database's ``log_household_views``)."""
    c = _check_for(conn, actor, check_id)
    rows = _board_rows(conn, actor, check_id)
    counts = _counts(rows)
    if state:
        if state not in BOARD_STATES:
            raise InvalidInput(f"state is one of {BOARD_STATES}")
        rows = [r for r in rows if r["board_state"] == state]
    if lives_alone is not None:
        rows = [r for r in rows if r["lives_alone"] == lives_alone]
    if q:
        rows = [r for r in rows if q.lower() in r["household_name"].lower() or q.lower() in r["household_id"].lower()]
    if now is not None and rows:
        conn.execute("SELECT log_household_views(%s, %s, %s, %s)",
                     (actor.person_id, [r["household_id"] for r in rows], f"safety board {check_id}", as_datetime(now)))
    return {"check": _check_json(c), "counts": counts, "households": [_household_json(r) for r in rows]}


def _household_json(r: dict[str, Any]) -> dict[str, Any]:
    return {"household_id": r["household_id"], "household_name": r["household_name"], "area": r["area"],
            "state": r["board_state"], "answered": r["state"], "how": r["how"], "answered_at": r["answered_at"],
            "answered_by": r["answered_by"], "answered_by_name": r["answered_by_name"], "note": r["note"],
            "device_id": r["device_id"], "last_activity_at": r["last_activity_at"], "lives_alone": r["lives_alone"],
            "incident_id": r["incident_id"], "incident_status": r["incident_status"], "claimed_by": r["claimed_by"],
            "claimed_by_name": r["claimed_by_name"],
            "gateways_offline": int(r["gateways_offline"]), "gateways_total": int(r["gateways_total"])}


def household_detail(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str) -> dict[str, Any]:
    """One household of a check: its answer, the audit of the check for it, and the team timeline."""
    _answer_for(conn, actor, check_id, household_id)
    row = next(r for r in _board_rows(conn, actor, check_id) if r["household_id"] == household_id)
    audit = _rows(conn, """SELECT s.at, s.actor, p.display_name AS actor_name, s.action, s.channel, s.data
                           FROM safety_audit s LEFT JOIN people p ON p.person_id = s.actor
                           WHERE s.check_id = %s AND (s.household_id = %s OR s.household_id IS NULL)
                           ORDER BY s.entry_id""", (check_id, household_id))
    timeline: list[dict[str, Any]] = []
    if row["incident_id"] is not None:
        timeline = [{"at": e.at, "actor": e.actor, "actor_name": e.actor_name, "action": e.action, "channel": e.channel,
                     "body": e.body} for e in _incident_timeline(conn, actor, row["incident_id"])]
    return {**_household_json(row), "audit": audit, "timeline": timeline}


def _incident_timeline(conn: psycopg.Connection, actor: Any, incident_id: int) -> list[Any]:
    try:
        return alerts_service.timeline(conn, actor, incident_id)
    except alert_models.NotFound:
        return []


# =============================================================================================
# Answers
# =============================================================================================


def _set_answer(conn: psycopg.Connection, check_id: int, household_id: str, state: str, how: str, now: float, *,
                by: str | None = None, note: str | None = None, device_id: str | None = None) -> None:
    conn.execute("""UPDATE safety_answers SET state = %s, how = %s, answered_at = %s, answered_by = %s, note = %s,
                           device_id = %s, updated_at = %s WHERE check_id = %s AND household_id = %s""",
                 (state, how, as_datetime(now), by, note, device_id, as_datetime(now), check_id, household_id))


def _read_token(links: Links, token: str) -> tuple[int, str, str]:
    try:
        data = links.signer.loads(token, max_age=links.max_age_s)
    except SignatureExpired:
        raise Gone("this link has expired") from None
    except BadSignature:
        raise BadLink("this link is not valid (it was changed or never issued)") from None
    if not (isinstance(data, dict) and isinstance(data.get("c"), int) and isinstance(data.get("h"), str)
            and isinstance(data.get("n"), str)):
        raise BadLink("this link is not valid")
    return data["c"], data["h"], data["n"]


def link_info(conn: psycopg.Connection, links: Links, token: str) -> dict[str, Any]:
    """What an answer link is for (the page shows it before the resident presses a button). Does
    not use the link up."""
    check_id, household_id, nonce = _read_token(links, token)
    row = _one(conn, """SELECT l.used_at, l.used_answer, c.message, c.closed_at, h.display_name, p.locale
                        FROM safety_links l JOIN safety_checks c ON c.check_id = l.check_id
                        JOIN households h ON h.household_id = l.household_id
                        LEFT JOIN people p ON p.person_id = l.person_id
                        WHERE l.nonce_hash = %s AND l.check_id = %s AND l.household_id = %s""",
               (_nonce_hash(nonce), check_id, household_id))
    if row is None:
        raise BadLink("this link is not valid")
    return {"check_id": check_id, "household_id": household_id, "household_name": row["display_name"],
            "message": row["message"], "closed": row["closed_at"] is not None, "used": row["used_at"] is not None,
            "used_answer": row["used_answer"], "locale": row["locale"] or "ja"}


def _tell_team_needs_help(conn: psycopg.Connection, check_id: int, household_id: str, now: float, how: str, *,
                          reason: str = "needs_help", actor: str | None = None) -> int:
    """"Needs help" from a home: the household's team and the area's coordinators hear it at once (in
    the app, and on their other channels through the outbox), and the household's safety-check
    incident opens so one of them can claim it."""
    a = _one(conn, """SELECT a.*, h.display_name AS household_name, h.area FROM safety_answers a
                      JOIN households h ON h.household_id = a.household_id
                      WHERE a.check_id = %s AND a.household_id = %s""", (check_id, household_id))
    assert a is not None
    incident_id = _ensure_incident(conn, None, a, now)
    conn.execute("""INSERT INTO incident_timeline (incident_id, at, actor, action, channel, body)
                    VALUES (%s, %s, %s, %s, %s, NULL)""", (incident_id, as_datetime(now), actor, f"safety_{reason}", how))
    team = alerts_service.load_team(conn, household_id, a["area"])
    people = list(dict.fromkeys([p for p, _tier in team.members] + list(team.coordinators)))
    if not people:
        return incident_id
    locales = {r["person_id"]: r["locale"] for r in _rows(conn, "SELECT person_id, locale FROM people WHERE person_id = ANY(%s)",
                                                          (people,))}
    channels = _rows(conn, """SELECT channel_id, person_id, kind, target FROM person_channels
                              WHERE person_id = ANY(%s) AND enabled ORDER BY person_id, position, channel_id""", (people,))
    for person_id in people:
        title, body = render_message(reason, locales.get(person_id, "ja"), name=a["household_name"], message="")
        data = {"safety_check_id": check_id, "household_id": household_id, "incident_id": incident_id,
                "url": f"/safety/{check_id}/h/{household_id}"}
        conn.execute("""INSERT INTO notifications (person_id, incident_id, notice, urgent, title, body, data, created_at)
                        VALUES (%s, %s, %s, true, %s, %s, %s, %s)""",
                     (person_id, incident_id, f"safety_{reason}", title, body, Jsonb(data), as_datetime(now)))
        for ch in (c for c in channels if c["person_id"] == person_id):
            key = channel_kind_name(ch["kind"], ch["target"])
            conn.execute("""INSERT INTO safety_deliveries (check_id, recipient, person_id, channel, channel_id, throttle_key,
                                   payload, created_at, next_attempt_at)
                            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                         (check_id, f"{person_id}#{reason}:{household_id}", person_id, f"{ch['kind']}:{ch['channel_id']}",
                          ch["channel_id"], key, Jsonb({"title": title, "body": body, "urgent": True, **data}), as_datetime(now),
                          as_datetime(now)))
    # the alert engine tells everyone notified when one of them claims ("X is going") or resolves
    conn.execute("UPDATE alert_escalations SET state = %s, updated_at = %s WHERE incident_id = %s",
                 (Jsonb({"notified": people}), as_datetime(now), incident_id))
    _audit(conn, check_id, household_id, now, actor, "team_alerted", how,
           {"people": people, "incident_id": incident_id, "reason": reason})
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(check_id)))
    return incident_id


def escalate(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, *, clock: Clock,
             channel: str = "app") -> dict[str, Any]:
    """The coordinator asks the household's team to go and see (a home that has not answered): they
    are told at once on all their channels, and the household's incident is open to claim."""
    _manager(actor)
    now = clock.now()
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id, lock=True)
        if a["check_closed_at"] is not None:
            raise Gone("the safety check is closed")
        incident_id = _tell_team_needs_help(conn, check_id, household_id, now, channel, reason="no_answer",
                                            actor=actor.person_id)
    return {"check_id": check_id, "household_id": household_id, "incident_id": incident_id}


def answer_by_link(conn: psycopg.Connection, links: Links, token: str, answer: str, *, clock: Clock,
                   check_id: int | None = None, household_id: str | None = None) -> dict[str, Any]:
    """Record a no-login answer ('safe' / 'needs_help') from a signed link, using the link up in the
    same transaction. ``check_id`` / ``household_id``: what the page or client says it answers; a
    link for another check or household is refused. Raises ``BadLink`` (forged/never issued),
    ``Forbidden`` (another check/household), ``Conflict`` (already used), ``Gone`` (check closed,
    link expired)."""
    if answer not in ANSWERS:
        raise InvalidInput(f"answer is one of {ANSWERS}")
    t_check, t_household, nonce = _read_token(links, token)
    if check_id is not None and check_id != t_check:
        raise Forbidden("this link belongs to another safety check")
    if household_id is not None and household_id != t_household:
        raise Forbidden("this link belongs to another household")
    now = clock.now()
    with conn.transaction():
        link = _one(conn, """SELECT l.*, c.closed_at FROM safety_links l JOIN safety_checks c ON c.check_id = l.check_id
                             WHERE l.nonce_hash = %s FOR UPDATE OF l""", (_nonce_hash(nonce),))
        if link is None:
            raise BadLink("this link is not valid")
        if link["check_id"] != t_check or link["household_id"] != t_household:
            raise Forbidden("this link belongs to another household or check")
        if link["used_at"] is not None:
            raise Conflict("this link has already been used")
        if link["closed_at"] is not None:
            raise Gone("the safety check is closed")
        conn.execute("UPDATE safety_links SET used_at = %s, used_answer = %s WHERE nonce_hash = %s",
                     (as_datetime(now), answer, _nonce_hash(nonce)))
        _one(conn, "SELECT 1 FROM safety_answers WHERE check_id = %s AND household_id = %s FOR NO KEY UPDATE",
             (t_check, t_household))
        _set_answer(conn, t_check, t_household, answer, "link", now, by=link["person_id"])
        _audit(conn, t_check, t_household, now, link["person_id"], f"answered_{answer}", "link")
        if answer == "needs_help":
            _tell_team_needs_help(conn, t_check, t_household, now, "link")
    return {"check_id": t_check, "household_id": t_household, "state": answer}


def answer_in_app(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, answer: str, *,
                  clock: Clock, note: str | None = None, channel: str = "app") -> dict[str, Any]:
    """A resident answers for their own household ('app'), or a team member / coordinator answers
    on its behalf after a visit or call ('on_behalf', with a note). Resolves the household's
    safety-check incident, if one was opened, with the matching outcome."""
    note = (note or "").strip() or None
    if note is not None and (len(note) > MAX_NOTE or "\x00" in note):
        raise InvalidInput("note too long")
    own = actor.role == "resident"
    if answer not in (ANSWERS if own else ON_BEHALF_ANSWERS):
        raise InvalidInput("not a valid answer")
    now = clock.now()
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id, lock=True)
        if a["check_closed_at"] is not None:
            raise Gone("the safety check is closed")
        how = "app" if own else "on_behalf"
        _set_answer(conn, check_id, household_id, answer, how, now, by=actor.person_id, note=note)
        _audit(conn, check_id, household_id, now, actor.person_id, f"answered_{answer}", channel,
               {"how": how, "note": note} if note else {"how": how})
        if own and answer == "needs_help":
            _tell_team_needs_help(conn, check_id, household_id, now, "app")
        if a["incident_id"] is not None and not own and answer in ("safe", "needs_help"):
            inc = _one(conn, "SELECT status FROM incidents WHERE incident_id = %s", (a["incident_id"],))
            if inc and inc["status"] in ("open", "claimed"):
                alerts_service.resolve(conn, actor, a["incident_id"], "fine" if answer == "safe" else "needed_help",
                                       note or "", clock=clock, channel=channel)
    return {"check_id": check_id, "household_id": household_id, "state": answer, "how": how}


# =============================================================================================
# Team work: claim ("I'll go") through the alert engine
# =============================================================================================


def _ensure_incident(conn: psycopg.Connection, actor: Any, a: dict[str, Any], now: float) -> int:
    """The household's safety-check incident for this check (opened once). It is given a paused,
    empty escalation in the same transaction, so alert workers never adopt it and run the
    household's normal chain; the claim and the timeline are the alert engine's."""
    if a["incident_id"] is not None:
        inc = _one(conn, "SELECT status FROM incidents WHERE incident_id = %s", (a["incident_id"],))
        if inc and inc["status"] in ("open", "claimed"):
            return int(a["incident_id"])
    existing = _one(conn, """SELECT incident_id FROM incidents WHERE household_id = %s AND kind = 'safety_check'
                             AND status IN ('open', 'claimed')""", (a["household_id"],))
    if existing is not None:  # an earlier check's, still open: close it first
        conn.execute("""UPDATE incidents SET status = 'cancelled', closed_at = %s, updated_at = %s, outcome = 'auto_closed'
                        WHERE incident_id = %s""", (as_datetime(now), as_datetime(now), existing["incident_id"]))
    row = _one(conn, """INSERT INTO incidents (household_id, kind, opened_at, updated_at, rule, evidence)
                        VALUES (%s, 'safety_check', %s, %s, 'safety_check', %s) RETURNING incident_id""",
               (a["household_id"], as_datetime(now), as_datetime(now), Jsonb({"safety_check_id": a["check_id"]})))
    assert row is not None
    incident_id = int(row["incident_id"])
    conn.execute("""INSERT INTO alert_escalations (incident_id, household_id, chain, chain_source, state, status,
                           next_step_at, started_at, updated_at, worker_id)
                    VALUES (%s, %s, '[]', 'technical', '{}', 'paused', NULL, %s, %s, 'safety')""",
                 (incident_id, a["household_id"], as_datetime(now), as_datetime(now)))
    conn.execute("""INSERT INTO incident_timeline (incident_id, at, actor, action, channel, body, data)
                    VALUES (%s, %s, %s, 'safety_check_opened', 'system', NULL, %s)""",
                 (incident_id, as_datetime(now), actor.person_id if actor is not None else None,
                  Jsonb({"safety_check_id": a["check_id"]})))
    conn.execute("UPDATE safety_answers SET incident_id = %s, updated_at = %s WHERE check_id = %s AND household_id = %s",
                 (incident_id, as_datetime(now), a["check_id"], a["household_id"]))
    return incident_id


def claim(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, *, clock: Clock,
          channel: str = "app") -> dict[str, Any]:
    """"I'll go" for a household of a check: the team sees who is going (alert engine's claim)."""
    if actor.role not in ("operator", "coordinator", "watcher"):
        raise Forbidden("only the team, a coordinator or an operator claims")
    now = clock.now()
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id, lock=True)
        if a["check_closed_at"] is not None:
            raise Gone("the safety check is closed")
        incident_id = _ensure_incident(conn, actor, a, now)
        try:
            alerts_service.claim(conn, actor, incident_id, clock=clock, channel=channel)
        except alert_models.Conflict as exc:
            raise Conflict(str(exc)) from None
        except alert_models.NotFound:
            raise NotFound("household not in this safety check") from None
        _audit(conn, check_id, household_id, now, actor.person_id, "claimed", channel, {"incident_id": incident_id})
    return {"check_id": check_id, "household_id": household_id, "incident_id": incident_id, "claimed_by": actor.person_id}


def comment(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, text: str, *, clock: Clock,
            channel: str = "app") -> None:
    """A note on the household's team timeline (opens the incident if needed)."""
    if actor.role not in ("operator", "coordinator", "watcher"):
        raise Forbidden("only the team, a coordinator or an operator comments")
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id, lock=True)
        incident_id = _ensure_incident(conn, actor, a, clock.now())
        try:
            alerts_service.comment(conn, actor, incident_id, text, clock=clock, channel=channel)
        except alert_models.InvalidInput as exc:
            raise InvalidInput(str(exc)) from None


# =============================================================================================
# Closing and exporting
# =============================================================================================


def close_check(conn: psycopg.Connection, actor: Any, check_id: int, *, clock: Clock) -> dict[str, Any]:
    """Close a check: links stop working, pending messages and blinks are dropped, and safety-check
    incidents still open are closed (their timelines stay). Returns the final counts."""
    _manager(actor)
    now = clock.now()
    with conn.transaction():
        c = _check_for(conn, actor, check_id)
        if c["closed_at"] is not None:
            raise Conflict("the safety check is already closed")
        if actor.role == "coordinator" and c["area"] is not None and c["area"] != actor.area:
            raise Forbidden("outside your area")
        conn.execute("UPDATE safety_checks SET closed_at = %s, closed_by = %s WHERE check_id = %s",
                     (as_datetime(now), actor.person_id, check_id))
        conn.execute("""UPDATE safety_deliveries SET status = 'skipped', last_error = 'check closed'
                        WHERE check_id = %s AND status = 'pending'""", (check_id,))
        for r in _rows(conn, """SELECT a.incident_id FROM safety_answers a JOIN incidents i ON i.incident_id = a.incident_id
                                WHERE a.check_id = %s AND i.status IN ('open', 'claimed')""", (check_id,)):
            conn.execute("""UPDATE incidents SET status = 'resolved', closed_at = %s, closed_by = %s, updated_at = %s,
                            outcome = 'auto_closed', outcome_note = 'safety check closed' WHERE incident_id = %s""",
                         (as_datetime(now), actor.person_id, as_datetime(now), r["incident_id"]))
            conn.execute("""INSERT INTO incident_timeline (incident_id, at, actor, action, channel, body)
                            VALUES (%s, %s, %s, 'safety_check_closed', 'app', NULL)""",
                         (r["incident_id"], as_datetime(now), actor.person_id))
        counts = _counts(_board_rows(conn, actor, check_id))
        _audit(conn, check_id, None, now, actor.person_id, "closed", "app", {"counts": counts})
    return {"check_id": check_id, "counts": counts}


CSV_COLUMNS = ("household_id", "household_name", "area", "state", "how", "answered_at", "answered_by_name", "note",
               "lives_alone", "last_activity_at", "claimed_by_name", "gateways_offline", "gateways_total")


def export_csv(conn: psycopg.Connection, actor: Any, check_id: int, *, clock: Clock) -> str:
    """The check's result for the city: one line per household (the actor's), ordered by risk."""
    _manager(actor)
    c = _check_for(conn, actor, check_id)
    rows = [_household_json(r) for r in _board_rows(conn, actor, check_id)]
    out = io.StringIO()
    writer = csv.writer(out)
    # The check's message is a manager's text: one quoted, formula-safe cell (a newline in it used to
    # start rows of its own; issue 17).
    writer.writerow([_csv_cell(f"# safety check {c['check_id']}: {c['message']} (started {c['started_at'].isoformat()}"
                               f"{', closed ' + c['closed_at'].isoformat() if c['closed_at'] else ''})")])
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([_csv_cell(r[k]) for k in CSV_COLUMNS])
    with conn.transaction():
        _audit(conn, check_id, None, clock.now(), actor.person_id, "exported_csv", "app", {"rows": len(rows)})
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):  # no formulas in a spreadsheet
        return "'" + value
    return "" if value is None else value


def set_lives_alone(conn: psycopg.Connection, actor: Any, household_id: str, lives_alone: bool, *, clock: Clock) -> None:
    """Record whether a household's resident lives alone (the board puts them first)."""
    _manager(actor)
    where, params = _scope(actor)
    with conn.transaction():
        if _one(conn, f"SELECT 1 AS ok FROM households h WHERE h.household_id = %(hid)s AND {where}",
                {**params, "hid": household_id}) is None:
            raise NotFound("household not found")
        conn.execute("""INSERT INTO safety_household_profiles (household_id, lives_alone, updated_at) VALUES (%s, %s, %s)
                        ON CONFLICT (household_id) DO UPDATE SET lives_alone = EXCLUDED.lives_alone,
                        updated_at = EXCLUDED.updated_at""", (household_id, lives_alone, as_datetime(clock.now())))


# =============================================================================================
# The worker's side: recognising answers in new events
# =============================================================================================


def open_households(conn: psycopg.Connection) -> dict[str, list[tuple[int, float]]]:
    """household -> [(check_id, started_at)] of open checks."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in _rows(conn, """SELECT a.household_id, c.check_id, c.started_at FROM safety_answers a
                            JOIN safety_checks c ON c.check_id = a.check_id WHERE c.closed_at IS NULL"""):
        out.setdefault(r["household_id"], []).append((int(r["check_id"]), r["started_at"].timestamp()))
    return out


def recognise_new_events(conn: psycopg.Connection, clock: Clock, cursor: float | None, *, lookback_s: float = 5.0,
                         window_s: float = recognise.DOUBLE_TOGGLE_WINDOW_S) -> tuple[float | None, int]:
    """Look at events received since ``cursor`` (minus ``lookback_s``, for batches that committed
    late) for households in open checks; re-judge those households from all their events since
    their check started (``recognise.recognise``) and record upgrades (no answer → sign of life →
    safe by double toggle). Returns (new cursor, households whose answer changed)."""
    metrics.PASSES.inc()
    if cursor is None:  # first pass: everything of open checks
        since_received = None
    else:
        since_received = cursor - lookback_s
    open_hh = _rows(conn, """SELECT a.check_id, a.household_id, a.state, a.how, a.last_activity_at, c.started_at
                             FROM safety_answers a JOIN safety_checks c ON c.check_id = a.check_id
                             WHERE c.closed_at IS NULL""")
    if not open_hh:  # nothing to follow: the next check starts from its own start time
        return None, 0
    hids = sorted({r["household_id"] for r in open_hh})
    earliest = min(r["started_at"] for r in open_hh)
    touched = _rows(conn, """SELECT household_id, max(received_at) AS m FROM events
                             WHERE household_id = ANY(%s) AND time >= %s AND kind IN ('on','off','motion','open','close')
                             AND (%s::timestamptz IS NULL OR received_at > %s::timestamptz)
                             GROUP BY household_id""",
                    (hids, earliest, as_datetime(since_received) if since_received is not None else None,
                     as_datetime(since_received) if since_received is not None else None))
    newest = max((r["m"] for r in touched), default=None)
    new_cursor = max(filter(None, [cursor, _epoch(newest)]), default=None)
    if not touched:
        return new_cursor, 0
    touched_ids = [r["household_id"] for r in touched]
    received = {r["household_id"]: _epoch(r["m"]) for r in touched}
    events: dict[str, list[recognise.Ev]] = {}
    for r in _rows(conn, """SELECT e.household_id, extract(epoch FROM e.time)::float8 AS t, e.device_id, e.kind, e.seq
                            FROM events e WHERE e.household_id = ANY(%s) AND e.time >= %s
                            AND e.kind IN ('on','off','motion','open','close')""", (touched_ids, earliest)):
        events.setdefault(r["household_id"], []).append(recognise.Ev(r["t"], r["device_id"], r["kind"], int(r["seq"])))
    switchable: dict[str, set[str]] = {}
    for r in _rows(conn, "SELECT household_id, device_id FROM devices WHERE household_id = ANY(%s) AND kind IN ('bulb','plug')",
                   (touched_ids,)):
        switchable.setdefault(r["household_id"], set()).add(r["device_id"])
    changed = 0
    # stamped once the events are read (the pass began before): the answer is known from now on
    now = clock.now()
    with conn.transaction():
        for a in open_hh:
            hid = a["household_id"]
            if hid not in events:
                continue
            # devices never paired with a kind are taken as switchable when they sent on/off
            verdict = recognise.recognise(events[hid], since=a["started_at"].timestamp(),
                                          switchable=switchable.get(hid) or None, window_s=window_s)
            if verdict.last_activity is not None and (a["last_activity_at"] is None
                                                      or verdict.last_activity > a["last_activity_at"].timestamp()):
                conn.execute("""UPDATE safety_answers SET last_activity_at = %s, updated_at = %s
                                WHERE check_id = %s AND household_id = %s""",
                             (as_datetime(verdict.last_activity), as_datetime(now), a["check_id"], hid))
            if not recognise.upgrades(a["state"], a["how"], verdict.state):
                continue
            how = "double_toggle" if verdict.state == "safe" else "activity"
            cur = conn.execute("""UPDATE safety_answers SET state = %s, how = %s, answered_at = %s, device_id = %s,
                                         updated_at = %s
                                  WHERE check_id = %s AND household_id = %s AND state = %s
                                  AND (how IS NULL OR how IN ('activity', 'double_toggle'))""",
                               (verdict.state, how, as_datetime(verdict.at or now), verdict.device_id, as_datetime(now),
                                a["check_id"], hid, a["state"]))
            if cur.rowcount:
                changed += 1
                metrics.ANSWERS_RECOGNISED.labels(verdict.state).inc()
                if received.get(hid) is not None:
                    metrics.RECOGNITION_LATENCY.observe(max(0.0, now - received[hid]))
                _audit(conn, a["check_id"], hid, now, None, f"recognised_{verdict.state}", "mqtt",
                       {"how": how, "device_id": verdict.device_id, "at": verdict.at, "recognised_at": now})
    return new_cursor, changed


# --- the outbox ---------------------------------------------------------------------------------

_NEXT_SQL = """
SELECT d.*, c.target, c.kind AS channel_kind, c.enabled AS channel_enabled
FROM safety_deliveries d
LEFT JOIN person_channels c ON c.channel_id = d.channel_id
WHERE d.status = 'pending' AND d.next_attempt_at <= %s AND NOT (d.throttle_key = ANY(%s))
ORDER BY d.next_attempt_at, d.delivery_id
LIMIT 1 FOR UPDATE OF d SKIP LOCKED"""


def next_delivery(conn: psycopg.Connection, now: float, blocked_keys: Sequence[str] = ()) -> dict[str, Any] | None:
    """Lock the next due outbox row whose channel kind is not throttled right now."""
    return _one(conn, _NEXT_SQL, (as_datetime(now), list(blocked_keys)))


RETRY_DELAYS_S = (5.0, 30.0, 120.0, 600.0)


def record_delivery(conn: psycopg.Connection, row: dict[str, Any], *, ok: bool, error: str | None, now: float,
                    permanent: bool = False) -> None:
    attempts = int(row["attempts"]) + 1
    if ok:
        conn.execute("""UPDATE safety_deliveries SET status = 'sent', attempts = %s, sent_at = %s, last_error = NULL
                        WHERE delivery_id = %s""", (attempts, as_datetime(now), row["delivery_id"]))
        if row["channel"] == "mqtt":
            _audit(conn, row["check_id"], row["payload"].get("household_id"), now, None, "blinked", "mqtt",
                   {"device_id": row["payload"].get("device_id")})
        return
    if not permanent and attempts <= len(RETRY_DELAYS_S):
        conn.execute("""UPDATE safety_deliveries SET attempts = %s, next_attempt_at = %s, last_error = %s
                        WHERE delivery_id = %s""",
                     (attempts, as_datetime(now + RETRY_DELAYS_S[attempts - 1]), error, row["delivery_id"]))
        return
    conn.execute("UPDATE safety_deliveries SET status = 'failed', attempts = %s, last_error = %s WHERE delivery_id = %s",
                 (attempts, error, row["delivery_id"]))
    _audit(conn, row["check_id"], row["payload"].get("household_id"), now, None, "delivery_failed", row["throttle_key"],
           {"recipient": row["recipient"], "error": error})
