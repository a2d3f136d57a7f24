"""Accounts: argon2 password hashes, database sessions (CSRF tokens are derived: app.auth.csrf), invitation links,
login rate limiting, and signing out everywhere. Plain functions, no HTTP.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from mimamori.app.people import PERSON_COLUMNS, Person, person_from_row
from mimamori.kernel.access import require_area, require_manage_household
from mimamori.kernel.clock import Clock, as_datetime
from mimamori.kernel.errors import Conflict, Forbidden, InvalidInput, NotAuthenticated, NotFound, RateLimited

SESSION_TTL = timedelta(days=30)
INVITATION_TTL = timedelta(days=14)
# Rate limiting: failures counted over a sliding window, per login and per client address.
LOGIN_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_LOGIN = 5
MAX_FAILURES_PER_CLIENT = 30
NOTICE_VERSION = "2026-01"

_hasher = PasswordHasher()
# Verified against when the login does not exist, so both paths cost the same time.
_DUMMY_HASH = _hasher.hash("not a password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_person_id(prefix: str = "p") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def create_account(conn: psycopg.Connection, clock: Clock, person_id: str, login: str, password: str) -> None:
    now = as_datetime(clock.now())
    try:
        conn.execute(
            "INSERT INTO accounts (person_id, login, password_hash, created_at, password_changed_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (person_id, login.lower(), hash_password(password), now, now),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict("login already taken") from exc


def login(conn: psycopg.Connection, clock: Clock, login_name: str, password: str, *, client: str,
          user_agent: str | None = None) -> tuple[str, Person]:
    """Check a password; return (session token, person). Raises RateLimited/NotAuthenticated."""
    login_name = login_name.lower()
    now = as_datetime(clock.now())
    since = now - LOGIN_WINDOW
    # Issue 17: failures count per (login, client), so nobody can lock someone else out of their
    # account from elsewhere; and per client over all logins (password spraying from one address).
    by_login, by_client = conn.execute(
        "SELECT count(*) FILTER (WHERE login = %(l)s), count(*)"
        " FROM login_attempts WHERE at > %(since)s AND NOT succeeded AND client = %(c)s",
        {"l": login_name, "c": client, "since": since},
    ).fetchone()
    if by_login >= MAX_FAILURES_PER_LOGIN or by_client >= MAX_FAILURES_PER_CLIENT:
        raise RateLimited("too many failed sign-ins; try again later")
    row = conn.execute(
        f"SELECT a.password_hash, {PERSON_COLUMNS} FROM accounts a JOIN people p USING (person_id) WHERE a.login = %s",
        (login_name,),
    ).fetchone()
    ok = verify_password(row[0], password) if row else (verify_password(_DUMMY_HASH, password) and False)
    conn.execute(
        "INSERT INTO login_attempts (login, client, at, succeeded) VALUES (%s, %s, %s, %s)",
        (login_name, client, now, ok),
    )
    # Housekeeping: attempts only matter inside the window.
    conn.execute("DELETE FROM login_attempts WHERE at < %s", (now - 4 * LOGIN_WINDOW,))
    if not ok or row is None:
        raise NotAuthenticated("wrong login or password")
    person = person_from_row(row[1:])
    token = start_session(conn, clock, person.person_id, user_agent=user_agent)
    return token, person


def start_session(conn: psycopg.Connection, clock: Clock, person_id: str, *, user_agent: str | None = None) -> str:
    now = as_datetime(clock.now())
    token = secrets.token_urlsafe(32)
    conn.execute("DELETE FROM sessions WHERE person_id = %s AND expires_at <= %s", (person_id, now))
    conn.execute(
        "INSERT INTO sessions (token_hash, person_id, created_at, last_seen_at, expires_at, user_agent)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (_digest(token), person_id, now, now, now + SESSION_TTL, (user_agent or "")[:200]),
    )
    return token


def session_person(conn: psycopg.Connection, clock: Clock, token: str) -> Person | None:
    """The person of a live session, or None."""
    if not token or len(token) > 200:
        return None
    now = as_datetime(clock.now())
    row = conn.execute(
        f"SELECT s.last_seen_at, {PERSON_COLUMNS} FROM sessions s JOIN people p USING (person_id)"
        " WHERE s.token_hash = %s AND s.expires_at > %s",
        (_digest(token), now),
    ).fetchone()
    if row is None:
        return None
    if now - row[0] > timedelta(minutes=5):  # keep writes rare
        conn.execute("UPDATE sessions SET last_seen_at = %s WHERE token_hash = %s", (now, _digest(token)))
    return person_from_row(row[1:])


def logout(conn: psycopg.Connection, token: str) -> None:
    conn.execute("DELETE FROM sessions WHERE token_hash = %s", (_digest(token),))


def logout_everywhere(conn: psycopg.Connection, person: Person) -> int:
    return conn.execute("DELETE FROM sessions WHERE person_id = %s", (person.person_id,)).rowcount


def set_locale(conn: psycopg.Connection, person: Person, locale: str) -> None:
    if locale not in ("ja", "en"):
        raise InvalidInput("unknown language")
    conn.execute("UPDATE people SET locale = %s WHERE person_id = %s", (locale, person.person_id))


# --- invitations -------------------------------------------------------------------------------


def create_invitation(conn: psycopg.Connection, clock: Clock, actor: Person, *, role: str, display_name: str,
                      household_id: str | None = None, area: str | None = None, tier: int = 1,
                      relation: str | None = None) -> tuple[str, object]:
    """A coordinator invites a watcher or resident of their area; an operator anyone. Returns (token, expiry)."""
    if role in ("operator", "coordinator"):
        if not actor.is_operator:
            raise Forbidden("only an operator may invite coordinators")
        if role == "coordinator" and not area:
            raise InvalidInput("a coordinator needs an area")
        household_id = None
    elif role in ("watcher", "resident"):
        if role == "resident" and not household_id:
            raise InvalidInput("a resident invitation needs a household")
        if household_id:
            require_manage_household(conn, actor, household_id)
            area = None
        else:
            # Issue 17: a coordinator invites into their own area only (the check used to compare the
            # coordinator's area with itself and store whatever area was asked for).
            require_area(actor, area if area is not None else actor.area)
            if actor.role == "coordinator":
                area = actor.area
    else:
        raise InvalidInput("unknown role")
    now = as_datetime(clock.now())
    token = secrets.token_urlsafe(24)
    expires = now + INVITATION_TTL
    conn.execute(
        "INSERT INTO invitations (token_hash, role, display_name, area, household_id, tier, relation, invited_by,"
        " created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (_digest(token), role, display_name, area, household_id, tier, relation, actor.person_id, now, expires),
    )
    return token, expires


def get_invitation(conn: psycopg.Connection, clock: Clock, token: str) -> dict:
    row = conn.execute(
        "SELECT i.role, i.display_name, i.area, i.household_id, h.display_name, i.expires_at, i.used_at"
        " FROM invitations i LEFT JOIN households h USING (household_id) WHERE i.token_hash = %s",
        (_digest(token),),
    ).fetchone()
    if row is None or row[6] is not None or row[5] <= as_datetime(clock.now()):
        raise NotFound("invitation not found, used or expired")
    return {"role": row[0], "display_name": row[1], "area": row[2], "household_id": row[3],
            "household_name": row[4], "expires_at": row[5]}


#: Login names an invitation may try that turn out taken (a "login already taken" answer says that a
#: name exists: issue 17 found accept an unthrottled oracle for login names).
MAX_TAKEN_NAMES_PER_INVITATION = 5


def accept_invitation(conn: psycopg.Connection, clock: Clock, token: str, *, login_name: str, password: str,
                      locale: str = "ja", consent: bool = False, client: str = "unknown") -> Person:
    """Create the person and account an invitation describes; a resident records consent here.
    A name found taken counts as a failed sign-in of the invitation and the client: a few per
    invitation, and the sign-in throttle's per-client budget, then ``RateLimited``.
    """
    if len(password) < 8:
        raise InvalidInput("password too short")
    now = as_datetime(clock.now())
    key = f"invitation:{_digest(token)[:24]}"
    by_invitation, by_client = conn.execute(
        "SELECT count(*) FILTER (WHERE login = %(k)s), count(*) FILTER (WHERE client = %(c)s)"
        " FROM login_attempts WHERE at > %(since)s AND NOT succeeded AND (login = %(k)s OR client = %(c)s)",
        {"k": key, "c": client, "since": now - LOGIN_WINDOW},
    ).fetchone()
    if by_invitation >= MAX_TAKEN_NAMES_PER_INVITATION or by_client >= MAX_FAILURES_PER_CLIENT:
        raise RateLimited("too many attempts; try again later")
    try:
        return _accept(conn, now, clock, token, login_name=login_name, password=password, locale=locale, consent=consent)
    except Conflict:
        conn.execute("INSERT INTO login_attempts (login, client, at, succeeded) VALUES (%s, %s, %s, false)", (key, client, now))
        raise


def _accept(conn: psycopg.Connection, now: datetime, clock: Clock, token: str, *, login_name: str, password: str,
            locale: str, consent: bool) -> Person:
    with conn.transaction():
        row = conn.execute(
            "SELECT role, display_name, area, household_id, tier, relation, invited_by FROM invitations"
            " WHERE token_hash = %s AND used_at IS NULL AND expires_at > %s FOR UPDATE",
            (_digest(token), now),
        ).fetchone()
        if row is None:
            raise NotFound("invitation not found, used or expired")
        role, name, area, household_id, tier, relation, _invited_by = row
        if role == "resident" and not consent:
            raise InvalidInput("consent is needed to take part")
        person_id = new_person_id()
        conn.execute(
            "INSERT INTO people (person_id, display_name, role, area, household_id, locale, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (person_id, name, role, area, household_id if role == "resident" else None, locale, now),
        )
        create_account(conn, clock, person_id, login_name, password)
        if role == "watcher" and household_id:
            conn.execute(
                "INSERT INTO household_watchers (household_id, person_id, tier, relation, added_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (household_id, person_id, tier or 1, relation, now),
            )
        if role == "resident":
            conn.execute(
                "INSERT INTO consents (household_id, given_by, notice_version, given_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (household_id, notice_version) DO UPDATE SET given_by = EXCLUDED.given_by,"
                " given_at = EXCLUDED.given_at, withdrawn_at = NULL",
                (household_id, person_id, NOTICE_VERSION, now),
            )
        conn.execute("UPDATE invitations SET used_at = %s, used_by = %s WHERE token_hash = %s",
                     (now, person_id, _digest(token)))
    return Person(person_id, name, role, area, household_id if role == "resident" else None, locale)


def get_person(conn: psycopg.Connection, person_id: str) -> Person:
    row = conn.execute(f"SELECT {PERSON_COLUMNS} FROM people p WHERE p.person_id = %s", (person_id,)).fetchone()
    if row is None:
        raise NotFound("person not found")
    return person_from_row(row)
