"""What every part of the safety check builds on (psycopg, plain functions, no HTTP): who may see a
check and a household (``_scope``), the audit trail, answer links (signed; only the nonce's hash kept,
the link itself sealed in the messages that carry it), and what a check sends: blinks and messages
queued on the one outbox, and the team told when a home needs help.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

import psycopg
from itsdangerous import URLSafeTimedSerializer
from psycopg.types.json import Jsonb

from mimamori.alerts import service as alerts_service
from mimamori.alerts.channels import channel_kind_name
from mimamori.kernel import access, contract, outbox
from mimamori.kernel.clock import as_datetime
from mimamori.kernel.db import fetch_dict, fetch_dicts
from mimamori.safety.models import (
    Forbidden,
    NotFound,
    render_message,
)

NOTIFY_CHANNEL = contract.CHANNEL_SAFETY
#: ``outbox.source`` of the safety check's rows
SOURCE = "safety"
MAX_NOTE = 2000
MAX_HOUSEHOLDS = 20_000


_rows = fetch_dicts
_one = fetch_dict


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def audit(conn: psycopg.Connection, check_id: int, household_id: str | None, now: float, actor: str | None,
           action: str, channel: str, data: dict[str, Any] | None = None) -> None:
    conn.execute("""INSERT INTO safety_audit (check_id, household_id, at, actor, action, channel, data)
                    VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                 (check_id, household_id, as_datetime(now), actor, action, channel, Jsonb(data or {})))




def _scope(actor: Any, alias: str = "h") -> tuple[str, dict[str, Any]]:
    """WHERE fragment limiting ``households AS <alias>`` to the actor's: the one rule, ``mimamori.kernel.access``."""
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




class Links:
    """Makes and reads answer links: ``signer`` is ``mimamori.kernel.signing.signer(settings, "safety-answer")``."""

    def __init__(self, signer: URLSafeTimedSerializer, base_url: str, max_age_s: int = 7 * 86400) -> None:
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self.max_age_s = max_age_s
        # links are stored only sealed, with the key they are signed with (the service's secret key)
        self.sealer = outbox.LinkSealer(signer.secret_key)

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


def _enqueue_blinks(conn: psycopg.Connection, check_id: int, hids: list[str], now: float, blinks: int) -> None:
    devices = _rows(conn, """SELECT d.device_id, d.gateway_id, d.household_id FROM devices d
                             WHERE d.household_id = ANY(%s) AND d.gateway_id IS NOT NULL
                               AND (d.kind = 'bulb' AND d.blink_allowed IS NOT FALSE OR d.kind = 'plug' AND d.blink_allowed)
                             ORDER BY d.household_id, d.device_id""", (hids,))
    outbox.enqueue_many(conn, [outbox.Send(
        source=SOURCE, check_id=check_id, recipient=f"device:{d['device_id']}", channel="mqtt", throttle_key="mqtt",
        notice="blink", payload={"gateway_id": d["gateway_id"], "device_id": d["device_id"], "household_id": d["household_id"],
                                 "args": {"times": blinks, "reason": "safety_check", "switch_ok": True}},
        created_at=now, send_at=now) for d in devices])


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
    sends: list[outbox.Send] = []

    def deliver(person_id: str, note: tuple[str, str, dict[str, Any]], message: tuple[str, str, dict[str, Any]]) -> None:
        title, body, data = note
        notes.append((person_id, title, body, Jsonb(data), as_datetime(now)))
        title, body, data = message
        sends.extend(outbox.Send(source=SOURCE, check_id=check_id, recipient=person_id, person_id=person_id,
                                 channel=f"{ch['kind']}:{ch['channel_id']}", channel_id=ch["channel_id"],
                                 throttle_key=channel_kind_name(ch["kind"], ch["target"]), notice="safety_check",
                                 payload={"title": title, "body": body, "urgent": True, **data}, created_at=now, send_at=now)
                     for ch in channels.get(person_id, []))

    for r in residents:
        # the resident's link is a credential: stored only sealed (issue 17), opened by the sender; in the
        # app the resident answers on their own signed-in page instead
        sealed = links.sealer.seal(links.url(_new_link(conn, links, check_id, r["household_id"], r["person_id"], now)))
        data = {"safety_check_id": check_id, "household_id": r["household_id"]}
        page = f"{links.base_url}/safety"
        deliver(r["person_id"], (*render_message("resident", r["locale"], message=message, link=page), {**data, "url": page}),
                (*render_message("resident", r["locale"], message=message, link=outbox.LINK_SLOT),
                 {**data, "sealed_link": sealed}))
    for w in watchers:
        title, body = render_message("watcher", w["locale"], message=message, board=board,
                                     names="、".join(names[h] for h in w["hids"]))
        data = {"safety_check_id": check_id, "url": board}
        deliver(w["person_id"], (title, body, data), (title, body, data))
    with conn.cursor() as cur:
        cur.executemany("""INSERT INTO notifications (person_id, incident_id, notice, urgent, title, body, data, created_at)
                           VALUES (%s, NULL, 'safety_check', true, %s, %s, %s, %s)""", notes)
    outbox.enqueue_many(conn, sends)
    audit(conn, check_id, None, now, None, "messages_queued", "system",
           {"in_app": len(notes), "outbox": len(sends), "residents": len(residents), "watchers": len(watchers)})




def _set_answer(conn: psycopg.Connection, check_id: int, household_id: str, state: str, how: str, now: float, *,
                by: str | None = None, note: str | None = None, device_id: str | None = None) -> None:
    conn.execute("""UPDATE safety_answers SET state = %s, how = %s, answered_at = %s, answered_by = %s, note = %s,
                           device_id = %s, updated_at = %s WHERE check_id = %s AND household_id = %s""",
                 (state, how, as_datetime(now), by, note, device_id, as_datetime(now), check_id, household_id))


def _tell_team_needs_help(conn: psycopg.Connection, check_id: int, household_id: str, now: float, how: str, *,
                          reason: str = "needs_help", actor: str | None = None) -> int:
    """"Needs help" from a home: the household's team and the area's coordinators hear it at once (in
    the app, and on their other channels through the outbox), and the household's safety-check
    incident opens so one of them can claim it.
    """
    a = _one(conn, """SELECT a.*, h.display_name AS household_name, h.area FROM safety_answers a
                      JOIN households h ON h.household_id = a.household_id
                      WHERE a.check_id = %s AND a.household_id = %s""", (check_id, household_id))
    if a is None:  # a row the same transaction just wrote or locked
        raise RuntimeError("a: expected a row, found none")
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
            outbox.enqueue(conn, outbox.Send(
                source=SOURCE, check_id=check_id, recipient=f"{person_id}#{reason}:{household_id}", person_id=person_id,
                channel=f"{ch['kind']}:{ch['channel_id']}", channel_id=ch["channel_id"], throttle_key=key,
                notice=f"safety_{reason}", payload={"title": title, "body": body, "urgent": True, **data},
                created_at=now, send_at=now))
    # the alert engine tells everyone notified when one of them claims ("X is going") or resolves
    conn.execute("UPDATE alert_escalations SET state = %s, updated_at = %s WHERE incident_id = %s",
                 (Jsonb({"notified": people}), as_datetime(now), incident_id))
    audit(conn, check_id, household_id, now, actor, "team_alerted", how,
           {"people": people, "incident_id": incident_id, "reason": reason})
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(check_id)))
    return incident_id




def _ensure_incident(conn: psycopg.Connection, actor: Any, a: dict[str, Any], now: float) -> int:
    """The household's safety-check incident for this check (opened once). It is given a paused,
    empty escalation in the same transaction, so alert workers never adopt it and run the
    household's normal chain; the claim and the timeline are the alert engine's.
    """
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
    if row is None:  # a row the same transaction just wrote or locked
        raise RuntimeError("row: expected a row, found none")
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
