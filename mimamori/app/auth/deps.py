"""``current_person``: the signed-in person of a request (cookie session, or a Bearer token for API
clients). Unsafe methods with a cookie session must carry the session's CSRF token (header
``X-CSRF-Token`` or form field ``csrf_token``; signed and session-bound, see app.auth.csrf).
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from mimamori.app.auth import csrf, service
from mimamori.app.people import Person
from mimamori.kernel.errors import NotAuthenticated

SESSION_COOKIE = "mimamori_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_UNKNOWN = object()


def _lookup(request: Request, token: str) -> Person | None:
    with request.app.state.pool.connection() as conn:
        conn.autocommit = True
        return service.session_person(conn, request.app.state.clock, token)


def session_token(request: Request) -> tuple[str | None, bool]:
    """(token, came as bearer)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), True
    return request.cookies.get(SESSION_COOKIE), False


async def optional_person(request: Request) -> Person | None:
    known: object = getattr(request.state, "person", _UNKNOWN)
    if known is not _UNKNOWN:  # asked before in this request
        return cast("Person | None", known)
    token, bearer = session_token(request)
    found = await run_in_threadpool(_lookup, request, token) if token else None
    request.state.person = found
    cookie_session = found is not None and not bearer
    serializer = request.app.state.csrf_signer
    request.state.csrf = csrf.issue(serializer, csrf.SESSION, token or "") if cookie_session else None
    if cookie_session and request.method not in SAFE_METHODS:
        sent = request.headers.get("x-csrf-token")
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            form = await request.form()
            value = form.get("csrf_token")
            sent = value if isinstance(value, str) else None
        csrf.verify(serializer, csrf.SESSION, token, sent, max_age=int(service.SESSION_TTL.total_seconds()))
    return found


async def current_person(person: Annotated[Person | None, Depends(optional_person)]) -> Person:
    if person is None:
        raise NotAuthenticated("sign in first")
    return person


CurrentPerson = Annotated[Person, Depends(current_person)]
OptionalPerson = Annotated[Person | None, Depends(optional_person)]
