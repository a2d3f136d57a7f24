"""CSRF tokens: signed with the service secret (``mimamori.kernel.signing.signer(settings, "csrf")``) and
bound to one session, so nothing is stored per session and a token is worthless in any other one.

- Signed-in (cookie) sessions: the token binds a digest of the session token. Unsafe requests send
  it as ``X-CSRF-Token`` or the ``csrf_token`` form field. Bearer-token requests need none (a
  browser never adds an ``Authorization`` header by itself).
- Before there is a session (the sign-in form and the invitation-accept form: login CSRF), the form
  gets a pre-session: a random id in the ``mimamori_pre_session`` cookie (HttpOnly, SameSite=Strict),
  and the form's token binds that id, signed the same way.

A refused token raises :class:`CsrfFailed` with a reason: ``missing``, ``forged`` (bad signature),
``other_session`` (signed by us, bound to another session or to a pre-session), ``expired``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import NoReturn

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from mimamori.app import metrics
from mimamori.kernel.errors import Forbidden


class CsrfFailed(Forbidden):
    """An unsafe request without a valid token of its session (``detail["reason"]`` says why)."""

    code = "csrf_failed"


PRE_SESSION_COOKIE = "mimamori_pre_session"
PRE_SESSION_MAX_AGE = 2 * 3600
SESSION = "session"
PRE_SESSION = "pre"
REASONS = ("missing", "forged", "other_session", "expired")


def _binding(kind: str, secret: str) -> str:
    # A digest, not the secret: the token's payload is readable by whoever holds it.
    return hashlib.sha256(f"mimamori-csrf:{kind}:{secret}".encode()).hexdigest()[:32]


def issue(serializer: URLSafeTimedSerializer, kind: str, secret: str) -> str:
    return serializer.dumps(_binding(kind, secret))


def verify(serializer: URLSafeTimedSerializer, kind: str, secret: str | None, sent: str | None, *,
           max_age: int) -> None:
    """Raise CsrfFailed unless ``sent`` was issued by us, for ``kind`` bound to ``secret``, within ``max_age`` s."""
    if not sent or not secret:
        _refuse("missing")
    try:
        bound = serializer.loads(sent, max_age=max_age)
    except SignatureExpired:
        _refuse("expired")
    except BadSignature:
        _refuse("forged")
    if not isinstance(bound, str) or not hmac.compare_digest(bound, _binding(kind, secret or "")):
        _refuse("other_session")


def _refuse(reason: str) -> NoReturn:
    metrics.CSRF_FAILURES.labels(reason).inc()
    raise CsrfFailed(f"CSRF token refused: {reason}", reason=reason)


def new_pre_session() -> str:
    return secrets.token_urlsafe(24)
