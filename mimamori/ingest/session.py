"""The ingest's broker session and counters: a client id fixed per process slot and database (so a
restarted ingest resumes its persistent session, and a session belongs to one database), and the
plain counters an ``IngestService`` keeps since its start.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import asdict, dataclass

import psycopg

from mimamori.kernel import db
from mimamori.kernel.config import Settings

log = logging.getLogger("mimamori.ingest.consumer")


@dataclass
class IngestStats:
    """Counters since start (plain ints; read them any time, e.g. for Prometheus)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    heartbeats: int = 0
    batches: int = 0
    acked: int = 0
    last_batch_size: int = 0
    #: Seconds from the newest event's device time to its commit, for the last batch.
    lag_s: float = 0.0
    db_errors: int = 0
    connects: int = 0
    resend_requests: int = 0
    #: time.monotonic() of the first message and of the last commit (throughput measurements).
    first_message_at: float = 0.0
    last_commit_at: float = 0.0

    def snapshot(self) -> dict[str, float | int]:
        return asdict(self)


def default_client_id(settings: Settings, index: int = 0, database: str | None = None) -> str:
    """Fixed per process slot and database, so that a restarted ingest resumes its persistent
    session, and a session (with what the broker queued for it) belongs to one database: an ingest
    pointed at another database starts a session of its own instead of taking the old one's queue.
    ``database`` is ``mimamori.kernel.db.database_identity``; a configured ``ingest_client_id`` is the prefix.
    """
    if settings.ingest_client_id:
        base = settings.ingest_client_id
    else:
        host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40]
        base = f"mimamori-ingest-{host}"
    db_part = f"-{database}" if database else ""
    if settings.ingest_client_id and index == 0:
        return f"{base}{db_part}"
    return f"{base}{db_part}-{index}"


def identity_of(database_url: str | None) -> str | None:
    """The database's identity (see ``default_client_id``), waiting for the database if it is down:
    without it the ingest would not know which broker session is its own.
    """
    if not database_url:
        return None
    delay = 1.0
    while True:
        try:
            with psycopg.connect(database_url, connect_timeout=5) as conn:
                return db.database_identity(conn)
        except psycopg.OperationalError as exc:
            log.warning("ingest: database unavailable (%s); retrying in %.0f s", str(exc).strip()[:200], delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
