"""The one error tree: every stage's errors derive from ``MimamoriError`` through one of its kinds.

Each kind carries the HTTP status and a short machine ``code`` the web app answers with (one handler,
``app.main``), so no stage translates another's errors. A stage keeps its own base class (e.g.
``alerts.models.AlertError``) for ``except`` clauses of its own and derives each error from that base
*and* the kind it is (``class NotFound(AlertError, errors.NotFound)``).

``detail`` holds extra facts for the answer; a ``reason`` in it is shown to the user (e.g. why a CSRF
token was refused).
"""



from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Gone",
    "InvalidInput",
    "MimamoriError",
    "NotAuthenticated",
    "NotFound",
    "RateLimited",
    "Unavailable",
]


class MimamoriError(Exception):
    """Base of every error the service raises on purpose. Raised as is, it is the service's fault (500)."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str = "", **detail: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.detail = detail


class BadRequest(MimamoriError):
    """The request cannot be understood or trusted: a tampered, unknown or malformed link."""

    status_code = 400
    code = "bad_request"


class InvalidInput(BadRequest):
    """A value is wrong: an unknown outcome, an empty comment, an invalid chain (nothing was changed)."""

    status_code = 422
    code = "invalid"


class NotAuthenticated(MimamoriError):
    """Nobody is signed in."""

    status_code = 401
    code = "not_authenticated"


class Forbidden(MimamoriError):
    """The person may see this but not do this."""

    status_code = 403
    code = "forbidden"


class NotFound(MimamoriError):
    """No such thing, or not one the person may see (its existence does not leak)."""

    status_code = 404
    code = "not_found"


class Conflict(MimamoriError):
    """The thing is not in a state that allows this (already claimed, already used)."""

    status_code = 409
    code = "conflict"


class Gone(MimamoriError):
    """It existed and is over (a closed safety check, an expired link)."""

    status_code = 410
    code = "gone"


class RateLimited(MimamoriError):
    """Too many attempts; try again later."""

    status_code = 429
    code = "rate_limited"


class Unavailable(MimamoriError):
    """A resource the service needs does not answer (the database, a stopping process)."""

    status_code = 503
    code = "unavailable"
