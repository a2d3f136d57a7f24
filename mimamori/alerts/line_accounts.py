"""LINE accounts in the database (issue 16): one-time link codes, redeliveries acted on once, and the
monthly push allowance. The words and buttons are in ``alerts.line``; acting on a postback is the alert
engine's and the safety check's own service functions, with the linked person's rights."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg

LINK_CODE_DIGITS = 6
LINK_CODE_TTL = timedelta(minutes=10)
# Guessing: at most this many wrong codes per LINE user per hour (a million codes, a handful of tries).
MAX_LINK_FAILURES_PER_HOUR = 5
WEBHOOK_EVENTS_KEPT = timedelta(days=31)
_CODE = re.compile(r"^\s*(\d{6})\s*$")
_USER = re.compile(r"^U[0-9a-zA-Z_-]{1,64}$")


def _hash(code: str) -> bytes:
    return hashlib.sha256(f"mimamori-line-link:{code}".encode()).digest()


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def issue_link_code(conn: psycopg.Connection, person_id: str, now: float) -> str:
    """A fresh code for this person (their earlier unused codes stop working). Shown once in the app;
    the person sends it to the bot from LINE."""
    with conn.transaction():
        conn.execute("DELETE FROM line_link_codes WHERE person_id = %s OR expires_at < %s", (person_id, _at(now)))
        while True:
            code = f"{secrets.randbelow(10**LINK_CODE_DIGITS):0{LINK_CODE_DIGITS}d}"
            inserted = conn.execute(
                "INSERT INTO line_link_codes (code_hash, person_id, expires_at) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING 1", (_hash(code), person_id, _at(now) + LINK_CODE_TTL)).fetchone()
            if inserted:
                return code


@dataclass(frozen=True)
class LinkResult:
    outcome: str  # linked | not_a_code | wrong_code | throttled
    person_id: str | None = None


def redeem_link_code(conn: psycopg.Connection, line_user_id: str, text: str, now: float) -> LinkResult:
    """A text message to the bot: if it is a live code, link this LINE user to the code's person (a LINE
    account links one person; linking again moves it). Wrong codes are counted and throttled."""
    match = _CODE.match(text or "")
    if not match or not _USER.match(line_user_id):
        return LinkResult("not_a_code")
    at = _at(now)
    with conn.transaction():
        failures = conn.execute("SELECT count(*) FROM line_link_failures WHERE line_user_id = %s AND at > %s",
                                (line_user_id, at - timedelta(hours=1))).fetchone()[0]
        if failures >= MAX_LINK_FAILURES_PER_HOUR:
            return LinkResult("throttled")
        row = conn.execute(
            "UPDATE line_link_codes SET used_at = %s WHERE code_hash = %s AND used_at IS NULL AND expires_at > %s"
            " RETURNING person_id", (at, _hash(match.group(1)), at)).fetchone()
        if row is None:
            conn.execute("INSERT INTO line_link_failures (line_user_id, at) VALUES (%s, %s)", (line_user_id, at))
            return LinkResult("wrong_code")
        person_id = row[0]
        conn.execute("DELETE FROM line_accounts WHERE line_user_id = %s AND person_id <> %s", (line_user_id, person_id))
        conn.execute(
            "INSERT INTO line_accounts (person_id, line_user_id, linked_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (person_id) DO UPDATE SET line_user_id = EXCLUDED.line_user_id, linked_at = EXCLUDED.linked_at",
            (person_id, line_user_id, at))
        conn.execute("DELETE FROM line_link_failures WHERE line_user_id = %s", (line_user_id,))
        _ensure_channel(conn, person_id, line_user_id)
    return LinkResult("linked", person_id)


def _ensure_channel(conn: psycopg.Connection, person_id: str, line_user_id: str) -> None:
    """The linked account as the person's channel of kind ``line`` (last in their order when new); a LINE
    account linked to someone else before is no longer their channel."""
    conn.execute("DELETE FROM person_channels WHERE kind = 'line' AND target = %s AND person_id <> %s",
                 (line_user_id, person_id))
    updated = conn.execute("UPDATE person_channels SET target = %s, enabled = true WHERE person_id = %s AND kind = 'line'"
                           " RETURNING 1", (line_user_id, person_id)).fetchone()
    if updated is None:
        conn.execute(
            "INSERT INTO person_channels (person_id, kind, target, label, position)"
            " SELECT %s, 'line', %s, 'LINE', coalesce(max(position) + 1, 0) FROM person_channels WHERE person_id = %s",
            (person_id, line_user_id, person_id))


def unlink(conn: psycopg.Connection, person_id: str) -> bool:
    with conn.transaction():
        conn.execute("DELETE FROM person_channels WHERE person_id = %s AND kind = 'line'", (person_id,))
        return conn.execute("DELETE FROM line_accounts WHERE person_id = %s RETURNING 1", (person_id,)).fetchone() is not None


#: Who is told when the month's allowance is nearly used: whoever runs the service and its areas.
_BUDGET_NOTICE = ("LINEの今月の送信枠が残りわずかです",
                  ("今月のLINEの送信（プッシュ）が枠の{share}%（{used}/{allowance}通）に達しました。枠を超えるとLINEへは"
                   "届かなくなり、アプリやメールなど他の連絡先にだけ届きます。プランの見直しをご検討ください。"))


def record_push(conn: psycopg.Connection, now: float, *, allowance: int, warn_at_share: float = 0.8) -> Budget:
    """After a LINE push was accepted: count it, and tell the operators and coordinators once a month when
    the allowance is nearly used."""
    budget = count_push(conn, now, allowance=allowance, warn_at_share=warn_at_share)
    if budget.warn_now:
        title, body = _BUDGET_NOTICE
        conn.execute(
            """INSERT INTO notifications (person_id, notice, urgent, title, body, data, created_at)
               SELECT person_id, 'line_budget', false, %s, %s, '{}'::jsonb, %s FROM people
               WHERE role IN ('operator', 'coordinator')""",
            (title, body.format(share=round(100 * budget.used / max(1, allowance)), used=budget.used, allowance=allowance),
             _at(now)))
    return budget


def person_for(conn: psycopg.Connection, line_user_id: str) -> str | None:
    row = conn.execute("SELECT person_id FROM line_accounts WHERE line_user_id = %s", (line_user_id,)).fetchone()
    return row[0] if row else None


def line_user_for(conn: psycopg.Connection, person_id: str) -> str | None:
    row = conn.execute("SELECT line_user_id FROM line_accounts WHERE person_id = %s", (person_id,)).fetchone()
    return row[0] if row else None


def first_delivery(conn: psycopg.Connection, webhook_event_id: str, now: float) -> bool:
    """True the first time an event is seen; a redelivery of it (same ``webhookEventId``) is False and must
    not act again. Call inside the transaction that acts, so an action that fails is retried on redelivery."""
    conn.execute("DELETE FROM line_webhook_events WHERE received_at < %s", (_at(now) - WEBHOOK_EVENTS_KEPT,))
    return conn.execute(
        "INSERT INTO line_webhook_events (webhook_event_id, received_at) VALUES (%s, %s)"
        " ON CONFLICT DO NOTHING RETURNING 1", (webhook_event_id[:64], _at(now))).fetchone() is not None


@dataclass(frozen=True)
class Budget:
    month: date
    used: int
    allowance: int
    warn_now: bool  # the warning share was just crossed: tell a coordinator (once a month)

    @property
    def left(self) -> int:
        return max(0, self.allowance - self.used)


def count_push(conn: psycopg.Connection, now: float, *, allowance: int, warn_at_share: float = 0.8) -> Budget:
    """Count one push against this month's allowance (UTC months, as LINE counts them in its own time
    zone closely enough for a warning at 80 %). A welfare alert is never held back for the budget: this
    counts and warns, the caller decides only for digests."""
    at = _at(now)
    month = date(at.year, at.month, 1)
    used, warned = conn.execute(
        "INSERT INTO line_push_usage (month, pushes) VALUES (%s, 1) ON CONFLICT (month)"
        " DO UPDATE SET pushes = line_push_usage.pushes + 1 RETURNING pushes, warned_at", (month,)).fetchone()
    warn_now = warned is None and used >= warn_at_share * allowance
    if warn_now:
        conn.execute("UPDATE line_push_usage SET warned_at = %s WHERE month = %s", (at, month))
    return Budget(month, used, allowance, warn_now)
