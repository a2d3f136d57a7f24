"""The no-login answer links of a safety check (psycopg, no HTTP): a fresh link for a household
(``issue_link``), what a link is for (``link_info``) and the answer through it (``answer_by_link``):
signed, single use, consumed in the transaction that records the answer.
"""

from __future__ import annotations

from typing import Any

import psycopg
from itsdangerous import BadSignature, SignatureExpired

from mimamori.kernel import access
from mimamori.kernel.clock import Clock, as_datetime
from mimamori.safety.models import (
    ANSWERS,
    BadLink,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
)
from mimamori.safety.records import Links, _answer_for, _new_link, _nonce_hash, _one, _set_answer, _tell_team_needs_help, audit


def issue_link(conn: psycopg.Connection, actor: Any, check_id: int, household_id: str, *, clock: Clock,
               links: Links) -> str:
    """A fresh single-use answer link for a household (e.g. printed, or read out on the phone)."""
    access.require_manage_household(conn, actor, household_id)
    now = clock.now()
    with conn.transaction():
        a = _answer_for(conn, actor, check_id, household_id)
        if a["check_closed_at"] is not None:
            raise Gone("the safety check is closed")
        token = _new_link(conn, links, check_id, household_id, None, now)
        audit(conn, check_id, household_id, now, actor.person_id, "link_issued", "app")
    return links.url(token)


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
    not use the link up.
    """
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


def answer_by_link(conn: psycopg.Connection, links: Links, token: str, answer: str, *, clock: Clock,
                   check_id: int | None = None, household_id: str | None = None) -> dict[str, Any]:
    """Record a no-login answer ('safe' / 'needs_help') from a signed link, using the link up in the
    same transaction. ``check_id`` / ``household_id``: what the page or client says it answers; a
    link for another check or household is refused. Raises ``BadLink`` (forged/never issued),
    ``Forbidden`` (another check/household), ``Conflict`` (already used), ``Gone`` (check closed,
    link expired).
    """
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
        audit(conn, t_check, t_household, now, link["person_id"], f"answered_{answer}", "link")
        if answer == "needs_help":
            _tell_team_needs_help(conn, t_check, t_household, now, "link")
    return {"check_id": t_check, "household_id": t_household, "state": answer}
