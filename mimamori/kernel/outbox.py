"""The one outbox: every message or blink the service sends is a row of ``outbox`` (migration 0061),
written in the transaction that decided it, and sent by one protocol, whoever queued it.

A send is three steps:

1. **claim** (``claim``): a committed transaction picks the next due ``pending`` row of the caller's
   sources (``FOR UPDATE SKIP LOCKED``), takes the row's session advisory lock, and marks it
   ``sending`` with a fresh ``attempt_id``;
2. the network call, outside any transaction (no row lock is held while a channel is slow);
3. **finish** (``finish``): a second transaction records the outcome (sent / retry later / failed)
   only if the attempt is still the current one; then the lock is dropped.

Killed between 1 and 3 (SIGKILL, a lost connection), the row stays ``sending`` and its advisory lock
dies with the connection: another worker (or the restarted one) finds it *in doubt* and sends it again,
counting it in ``resends``. Whether the first copy reached the channel cannot be known (SMTP, Apprise's
targets and MQTT have no idempotency key a sender can query), so nothing is lost and a raw
re-transmission happens only for a send in flight at the crash; an e-mail keeps its Message-ID (pinned
at the first claim), so it is recognisably the same message.

What differs per source (alerts, safety checks ...) is an ``OutboxSource``: when a row is no longer
worth sending, how long to wait before a retry, and what to record beside the row (a timeline entry,
an audit row). Sources are plain objects handed in by the worker that serves them: the kernel
imports no stage.

Throttling per channel kind is an option of ``claim``: a ``Throttle`` (token bucket per
``throttle_key``) skips kinds with no token, so their rows wait while other kinds go on.

Answer links carry single-use tokens; the outbox and ``notifications`` hold them only sealed
(``LinkSealer``: Fernet, keyed from the service's secret key), and the sender opens them at send time.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from cryptography.fernet import Fernet, InvalidToken
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from mimamori.kernel.clock import as_datetime

log = logging.getLogger(__name__)

#: First key of the two-key advisory locks a sender holds on a row while it is 'sending' (a space of
#: its own: the migration runner uses the one-bigint form). The alert engine's value, kept.
LOCK_CLASS = 0x6D616C74

#: Rows in doubt looked at per recovery pass.
IN_DOUBT_BATCH = 50

_SELECT = """
SELECT o.*, c.target, c.kind AS channel_kind, c.enabled AS channel_enabled
FROM outbox o LEFT JOIN person_channels c ON c.channel_id = o.channel_id
"""

_NEXT_SQL = _SELECT + """
WHERE o.status = 'pending' AND o.next_attempt_at <= %(now)s AND o.source = ANY(%(sources)s)
  AND NOT (o.throttle_key = ANY(%(blocked)s))
ORDER BY o.next_attempt_at, o.delivery_id
LIMIT 1 FOR UPDATE OF o SKIP LOCKED"""

# No row locks here: a row is locked (and re-checked) only once its advisory lock is ours.
_IN_DOUBT_SQL = """SELECT delivery_id FROM outbox WHERE status = 'sending' AND source = ANY(%s)
                   ORDER BY delivery_id LIMIT %s"""


class OutboxSource(Protocol):
    """What one engine decides about its own rows (all called inside the outbox's transactions)."""

    #: ``outbox.source`` of its rows
    name: str

    def superseded(self, conn: psycopg.Connection, row: dict[str, Any]) -> str | None:
        """Why the row is no longer worth sending (it is then ``skipped``), or None."""

    def retry_delay(self, attempts: int) -> float | None:
        """Seconds before the next try after ``attempts`` failed ones; None: give up."""

    def recorded(self, conn: psycopg.Connection, row: dict[str, Any], outcome: str, error: str | None, now: float) -> None:
        """Record beside the row what happened: ``outcome`` is ``sent``, ``retry``, ``failed``,
        ``skipped`` or ``resend`` (an in-doubt row about to be sent again).
        """


# =============================================================================================
# Queueing
# =============================================================================================


@dataclass(frozen=True)
class Send:
    """One row to queue. ``incident_id``/``step_key``/``notice`` for alerts, ``check_id`` for safety."""

    source: str
    recipient: str
    channel: str
    payload: dict[str, Any]
    created_at: float
    send_at: float
    throttle_key: str = "default"
    person_id: str | None = None
    channel_id: int | None = None
    incident_id: int | None = None
    check_id: int | None = None
    step_key: str | None = None
    notice: str | None = None
    urgent: bool = True
    status: str = "pending"


_INSERT = """INSERT INTO outbox (source, incident_id, check_id, step_key, recipient, person_id, channel, channel_id, notice,
                                 urgent, throttle_key, payload, status, created_at, next_attempt_at, sent_at, attempts)
             VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
             ON CONFLICT DO NOTHING"""


def _params(s: Send) -> tuple[Any, ...]:
    done = s.status == "sent"  # a record of something already delivered (an in-app notification)
    return (s.source, s.incident_id, s.check_id, s.step_key, s.recipient, s.person_id, s.channel, s.channel_id, s.notice,
            s.urgent, s.throttle_key, Jsonb(s.payload), s.status, as_datetime(s.created_at), as_datetime(s.send_at),
            as_datetime(s.created_at) if done else None, 1 if done else 0)


def enqueue(conn: psycopg.Connection, send: Send) -> int | None:
    """Queue one row in the caller's transaction; its id, or None if the source's replay key
    (alerts: incident, step, recipient, channel; safety: check, recipient, channel) was queued already.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_INSERT + " RETURNING delivery_id", _params(send))
        row = cur.fetchone()
    return int(row["delivery_id"]) if row else None


def enqueue_many(conn: psycopg.Connection, sends: Sequence[Send]) -> None:
    """Queue many rows (replays skipped), in the caller's transaction."""
    if sends:
        with conn.cursor() as cur:
            cur.executemany(_INSERT, [_params(s) for s in sends])


# =============================================================================================
# Throttling per channel kind
# =============================================================================================


@dataclass
class Throttle:
    """A token bucket per key (channel kind): ``rates`` in messages per second; keys not listed use
    ``rates['default']`` (1/s when absent). Bursts up to one second's worth (at least 1). The caller's
    clock; safe to share between a worker's delivery threads. ``per_minute`` builds one from "at most
    N a minute" figures.
    """

    rates: dict[str, float]
    _tokens: dict[str, float] = field(default_factory=dict)
    _at: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def per_minute(cls, per_minute: Mapping[str, float]) -> Throttle:
        return cls({k: v / 60.0 for k, v in per_minute.items()})

    def rate(self, key: str) -> float:
        return float(self.rates.get(key, self.rates.get("default", 1.0)))

    def _level(self, key: str, now: float) -> float:
        burst = max(1.0, self.rate(key))
        return min(burst, self._tokens.get(key, burst) + (now - self._at.get(key, now)) * self.rate(key))

    def try_take(self, key: str, now: float) -> bool:
        with self._lock:
            tokens = self._level(key, now)
            self._at[key] = now
            if tokens >= 1.0:
                self._tokens[key] = tokens - 1.0
                return True
            self._tokens[key] = tokens
            return False

    def blocked(self, keys: Collection[str], now: float) -> list[str]:
        """Keys with no token now (without taking one)."""
        with self._lock:
            return [key for key in keys if self._level(key, now) < 1.0]


# =============================================================================================
# The protocol: claim, send (the caller), finish
# =============================================================================================


def _lock_key(delivery_id: int) -> tuple[int, int]:
    return LOCK_CLASS, int(delivery_id) % 2_147_483_647


def _one(conn: psycopg.Connection, sql: str, params: Any = None) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _try_lock(conn: psycopg.Connection, delivery_id: int) -> bool:
    row = _one(conn, "SELECT pg_try_advisory_lock(%s, %s) AS ok", _lock_key(delivery_id))
    return bool(row and row["ok"])


def _unlock(conn: psycopg.Connection, delivery_id: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", _lock_key(delivery_id))


def _in_doubt(conn: psycopg.Connection, sources: list[str]) -> dict[str, Any] | None:
    """A row whose sender is gone ('sending', advisory lock free), locked both ways; or None."""
    with conn.cursor() as cur:
        candidates = [r[0] for r in cur.execute(_IN_DOUBT_SQL, (sources, IN_DOUBT_BATCH)).fetchall()]
    for delivery_id in candidates:
        if not _try_lock(conn, delivery_id):
            continue  # its sender is alive
        row = _one(conn, _SELECT + " WHERE o.delivery_id = %s AND o.status = 'sending' FOR UPDATE OF o", (delivery_id,))
        if row is not None:
            return row
        _unlock(conn, delivery_id)  # finished meanwhile
    return None


def claim(conn: psycopg.Connection, sources: Mapping[str, OutboxSource], now: float, worker_id: str, *,
          recover: bool = True, throttle: Throttle | None = None, throttle_keys: Collection[str] = (),
          message_id: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any] | None:
    """Step 1: start one send, committed before any network call (``conn`` in autocommit mode).

    Picks the next due pending row of ``sources`` whose throttle key has a token, or else
    (``recover``) an in-doubt row. Returns the row with ``attempt_id``, ``resend`` and ``skipped``
    (True: superseded, already recorded as skipped: do not send), or None when there is nothing to do.
    The caller sends, then calls ``finish``, and ``release`` in a ``finally``.
    """
    names = list(sources)
    with conn.transaction():
        # the mark needs no fsync of its own: lost in a database crash, the row is 'pending' again and is
        # re-sent with the same Message-ID (derived from the row)
        conn.execute("SET LOCAL synchronous_commit TO off")
        blocked = throttle.blocked(throttle_keys, now) if throttle is not None else []
        row = _one(conn, _NEXT_SQL, {"now": as_datetime(now), "sources": names, "blocked": blocked})
        if row is not None and throttle is not None and not throttle.try_take(row["throttle_key"], now):
            row = None  # a kind not listed in throttle_keys ran out: it waits
        if row is not None and not _try_lock(conn, row["delivery_id"]):
            row = None  # its previous attempt is still finishing (a moment): later
        resend = False
        if row is None and recover:
            row = _in_doubt(conn, names)
            resend = row is not None
        if row is None:
            return None
        source = sources[row["source"]]
        reason = source.superseded(conn, row)
        if reason:
            conn.execute("UPDATE outbox SET status = 'skipped', last_error = %s WHERE delivery_id = %s",
                         (reason, row["delivery_id"]))
            source.recorded(conn, row, "skipped", reason, now)
            _unlock(conn, row["delivery_id"])
            return {**row, "skipped": True, "resend": resend, "skip_reason": reason, "released": True}
        attempt_id = uuid.uuid4().hex
        mid = row["message_id"] or (message_id(row) if message_id is not None else None)
        conn.execute("""UPDATE outbox SET status = 'sending', attempt_id = %s, sending_since = %s, sending_by = %s,
                               message_id = %s, resends = resends + %s WHERE delivery_id = %s""",
                     (attempt_id, as_datetime(now), worker_id, mid, 1 if resend else 0, row["delivery_id"]))
        claimed = {**row, "attempt_id": attempt_id, "message_id": mid, "resend": resend, "skipped": False,
                   "resends": int(row["resends"]) + (1 if resend else 0), "released": False}
        if resend:
            source.recorded(conn, claimed, "resend", None, now)
        return claimed


def finish(conn: psycopg.Connection, sources: Mapping[str, OutboxSource], row: dict[str, Any], *, ok: bool,
           error: str | None, now: float, final: bool = False) -> str | None:
    """Step 3: record the attempt's outcome in a transaction of its own; returns the outcome
    (``sent``, ``retry``, ``failed``), or None if the attempt is no longer the current one (another
    worker took it over as in doubt). ``final``: a permanent failure, no retry can help.
    """
    source = sources[row["source"]]
    with conn.transaction():
        current = _one(conn, "SELECT attempt_id, status FROM outbox WHERE delivery_id = %s FOR UPDATE", (row["delivery_id"],))
        if current is None or current["attempt_id"] != row["attempt_id"] or current["status"] != "sending":
            return None
        attempts = int(row["attempts"]) + 1
        if ok:
            conn.execute("""UPDATE outbox SET status = 'sent', attempts = %s, sent_at = %s, sent_real_at = clock_timestamp(),
                            last_error = NULL WHERE delivery_id = %s""", (attempts, as_datetime(now), row["delivery_id"]))
            outcome = "sent"
        else:
            delay = None if final else source.retry_delay(attempts)
            if delay is not None:
                conn.execute("""UPDATE outbox SET status = 'pending', attempts = %s, next_attempt_at = %s, last_error = %s
                                WHERE delivery_id = %s""", (attempts, as_datetime(now + delay), error, row["delivery_id"]))
                outcome = "retry"
            else:
                conn.execute("UPDATE outbox SET status = 'failed', attempts = %s, last_error = %s WHERE delivery_id = %s",
                             (attempts, error, row["delivery_id"]))
                outcome = "failed"
        source.recorded(conn, {**row, "attempts": attempts}, outcome, error, now)
        # unlocking before COMMIT is safe: whoever takes the lock next locks the row and re-checks it
        _unlock(conn, row["delivery_id"])
        row["released"] = True
    return outcome


def release(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    """Drop the advisory lock ``claim`` took, if ``finish`` did not (error paths)."""
    if conn.closed or row.get("released"):
        return  # the lock died with the connection, or is already gone
    _unlock(conn, row["delivery_id"])
    row["released"] = True


@dataclass(frozen=True)
class Result:
    """A channel's answer to one send."""

    ok: bool
    error: str | None = None
    #: no retry can help (invalid URL, Web Push 404/410, channel removed)
    permanent: bool = False


def deliver_one(conn: psycopg.Connection, sources: Mapping[str, OutboxSource], send: Callable[[dict[str, Any]], Any],
                now: Callable[[], float], worker_id: str, *, recover: bool = True, throttle: Throttle | None = None,
                throttle_keys: Collection[str] = (), message_id: Callable[[dict[str, Any]], str | None] | None = None,
                observe: Callable[[dict[str, Any], Any, str | None], None] | None = None) -> bool:
    """Claim, send and finish one row; whether there was one. ``send(row)`` returns an object with
    ``ok``, ``error`` and ``permanent`` (``Result`` or a channel's own); an exception from it is a
    failed attempt (retried), never a dead worker. ``observe(row, result, outcome)`` counts it.
    """
    row = claim(conn, sources, now(), worker_id, recover=recover, throttle=throttle, throttle_keys=throttle_keys,
                message_id=message_id)
    if row is None:
        return False
    if row["skipped"]:
        if observe is not None:
            observe(row, None, "skipped")
        return True
    try:
        try:
            result = send(row)
        except Exception as exc:  # noqa: BLE001 - a channel library's bug is this attempt's failure, retried later
            result = Result(ok=False, error=f"{type(exc).__name__}: {exc!s:.300}")
        outcome = finish(conn, sources, row, ok=result.ok, error=result.error, now=now(), final=result.permanent)
    finally:
        release(conn, row)
    if observe is not None:
        observe(row, result, outcome)
    return True


# =============================================================================================
# Sealed answer links
# =============================================================================================

#: Where an answer link goes in a queued title/body; the sender puts the opened link there.
LINK_SLOT = "\u2063{link}\u2063"


class LinkSealer:
    """Seals answer links (their tokens are credentials) for storage and opens them at send time:
    Fernet with a key derived from the service's secret key (``mimamori.kernel.signing.secret_key``).
    """

    def __init__(self, secret_key: str | bytes) -> None:
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        digest = hashlib.sha256(b"mimamori/sealed-links\x00" + key).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, link: str) -> str:
        return self._fernet.encrypt(link.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except InvalidToken:
            raise ValueError("a sealed link that this service's key does not open (was the secret key changed?)") from None


def open_links(payload: Mapping[str, Any], sealer: LinkSealer | None) -> dict[str, Any]:
    """The payload to send: its sealed link (``sealed_link``) opened into ``url`` and into the text
    where ``LINK_SLOT`` stands. Without a sealer (or a link) the payload is returned as it is.
    """
    out = dict(payload)
    sealed = out.pop("sealed_link", None)
    if sealed is None:
        return out
    if sealer is None:
        raise ValueError("this message carries a sealed link and the worker has no key to open it")
    link = sealer.open(sealed)
    for key in ("title", "body"):
        if isinstance(out.get(key), str):
            out[key] = out[key].replace(LINK_SLOT, link)
    out["url"] = link
    return out


# =============================================================================================
# The delivery side task of a worker (``mimamori.kernel.worker``)
# =============================================================================================

#: How often a delivery task looks for rows left in doubt by a worker that died (real seconds).
RECOVER_EVERY_S = 1.0


def delivery_task(database_url: str, deliver: Callable[[psycopg.Connection, bool], bool], *, wake: threading.Event,
                  poll_s: float, idle_s: Callable[[], float] | None = None,
                  application_name: str = "mimamori outbox") -> Callable[[threading.Event], None]:
    """A worker's side task sending the outbox until ``stop``: ``deliver(conn, recover)`` (one row,
    e.g. ``alerts.flows.deliver_one``) while there is work, then a wait for ``wake`` (a NOTIFY) or
    ``idle_s()`` (default ``poll_s``). A lost database connection is reconnected (its advisory locks die
    with it: a row it was sending is found in doubt and re-sent); any other error ends the task, and
    with it the worker (``mimamori.kernel.worker.Worker``).
    """

    def run(stop: threading.Event) -> None:
        conn: psycopg.Connection | None = None
        recovered = 0.0
        try:
            while not stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(database_url, autocommit=True, application_name=application_name)
                    # in-doubt rows are looked for about once a second, not on every pass
                    recover = time.monotonic() - recovered >= RECOVER_EVERY_S
                    if recover:
                        recovered = time.monotonic()
                    while not stop.is_set() and deliver(conn, recover):
                        pass
                except psycopg.OperationalError:
                    log.exception("outbox delivery: database error; reconnecting")
                    if conn is not None:
                        conn.close()
                    conn = None
                    stop.wait(1.0)
                    continue
                if wake.wait(idle_s() if idle_s is not None else poll_s):
                    wake.clear()
        finally:
            if conn is not None:
                conn.close()

    return run
