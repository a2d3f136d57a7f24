"""Helpers for the alert tests: a real SMTP server (aiosmtpd) and a seeded town (the ``smtp`` fixture is in conftest)."""

from __future__ import annotations

import asyncio
import email
import email.header
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiosmtpd.controller import Controller

from mimamori.kernel.clock import as_datetime
from mimamori.kernel.embedded import free_port


@dataclass
class Mail:
    received_at: float  # real epoch
    rcpt: list[str]
    subject: str
    body: str
    message_id: str = ""


_LINGERING: list[Any] = []


class _TrackingController(Controller):
    """aiosmtpd's controller, keeping the SMTP session of every connection (to close them at stop)."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sessions: list[Any] = []

    def factory(self):  # type: ignore[no-untyped-def]
        session = super().factory()
        self.sessions.append(session)
        return session


class SmtpSink:
    """A real SMTP server on a free port that keeps every message it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self.lock = threading.Lock()
        self.controller = _TrackingController(self, hostname="127.0.0.1", port=self.port)
        #: Fault injection: when set, the n-th message (1-based) is kept but its "250 OK" is held back
        #: until ``release`` is set: the sender's crash window between "accepted" and "recorded".
        self.hold_nth: int | None = None
        self.holding = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        msg = email.message_from_bytes(envelope.content)
        subject = str(email.header.make_header(email.header.decode_header(msg.get("Subject", ""))))
        part = msg.get_payload(0) if msg.is_multipart() else msg
        body = part.get_payload(decode=True).decode("utf-8", "replace")  # type: ignore[union-attr]
        message_ids = msg.get_all("Message-ID") or []
        assert len(message_ids) <= 1, message_ids  # one Message-ID header, never two
        with self.lock:
            self.mails.append(Mail(time.time(), list(envelope.rcpt_tos), subject, body, str(message_ids[0]) if message_ids else ""))
            hold = self.hold_nth is not None and len(self.mails) == self.hold_nth
        if hold:
            self.holding.set()
            while not self.release.is_set():  # noqa: ASYNC110 - a threading.Event, set from the test's thread
                await asyncio.sleep(0.01)
        return "250 OK"

    def by_message_id(self) -> dict[str, list[Mail]]:
        with self.lock:
            out: dict[str, list[Mail]] = {}
            for m in self.mails:
                out.setdefault(m.message_id, []).append(m)
            return out

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        """Close every client connection in the server's own loop, then stop it. A connection left
        open (a sender killed mid-send, a held reply) would otherwise be collected after the loop
        closed, and its stream warns then ("loop is closed": an error, with warnings as errors, in
        whichever later test the collector happens to run).
        """
        self.release.set()
        for _ in range(2):  # twice: a sender may have connected while the first sweep ran
            closed = threading.Event()

            def close_connections(closed: threading.Event = closed) -> None:
                for session in self.controller.sessions:
                    transport = getattr(session, "transport", None)
                    if transport is not None and not transport.is_closing():
                        transport.abort()
                self.controller.loop.call_soon(closed.set)  # after the connection_lost callbacks just queued

            self.controller.loop.call_soon_threadsafe(close_connections)
            closed.wait(5)
        self.controller.stop()
        # Whatever is still open (accepted in the last instant) would warn when collected after its loop
        # closed, inside a later test: kept referenced until the run ends (CI failed on it twice).
        _LINGERING.extend(s for s in self.controller.sessions
                          if getattr(s, "transport", None) is not None and not s.transport.is_closing())

    def url(self, to: str) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=alerts@mimamori.test&to={to}&mode=insecure"

    def to(self, addr: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.mails if addr in m.rcpt]

    def count(self) -> int:
        with self.lock:
            return len(self.mails)



@dataclass
class Town:
    household_id: str
    area: str
    gateway_id: str
    bulb_id: str
    tier1: list[str]
    tier2: list[str]
    coordinator: str
    emails: dict[str, str] = field(default_factory=dict)


def seed_town(conn: psycopg.Connection, smtp: SmtpSink | None, *, suffix: str | None = None, tier1: int = 2,
              tier2: int = 1, with_email: bool = True) -> Town:
    s = suffix or uuid.uuid4().hex[:6]
    area = f"north-{s}"
    hid, gw, bulb = f"h-{s}", f"gw-{s}", f"bulb-{s}"
    conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)", (hid, f"山田 {s}", area))
    conn.execute("INSERT INTO gateways (gateway_id, household_id, area) VALUES (%s, %s, %s)", (gw, hid, area))
    conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'bulb')", (bulb, gw, hid))
    town = Town(hid, area, gw, bulb, [f"w1{i}-{s}" for i in range(tier1)], [f"w2{i}-{s}" for i in range(tier2)], f"c-{s}")
    conn.execute("INSERT INTO people (person_id, display_name, role, area) VALUES (%s, %s, 'coordinator', %s)",
                 (town.coordinator, "町会長", area))
    for tier, people in ((1, town.tier1), (2, town.tier2)):
        for p in people:
            conn.execute("INSERT INTO people (person_id, display_name, role) VALUES (%s, %s, 'watcher')", (p, f"見守り {p}"))
            conn.execute("INSERT INTO household_watchers (household_id, person_id, tier) VALUES (%s, %s, %s)", (hid, p, tier))
    if with_email and smtp is not None:
        for p in [*town.tier1, *town.tier2, town.coordinator]:
            addr = f"{p}@example.org"
            town.emails[p] = addr
            conn.execute("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)", (p, smtp.url(addr)))
    return town


def open_incident(conn: psycopg.Connection, household_id: str, at: float, kind: str = "inactivity") -> int:
    """What the detector does when it notices a silence (here: after a simulated fall)."""
    row = conn.execute(
        """INSERT INTO incidents (household_id, kind, status, opened_at, updated_at, rule, score, evidence)
           VALUES (%s, %s, 'open', %s, %s, 'test', 0.99, '{"scenario": "fall"}') RETURNING incident_id""",
        (household_id, kind, as_datetime(at), as_datetime(at)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def actions(conn: psycopg.Connection, incident_id: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT action FROM incident_timeline WHERE incident_id = %s ORDER BY entry_id",
                                       (incident_id,))]


def notices(conn: psycopg.Connection, person_id: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT notice FROM notifications WHERE person_id = %s ORDER BY notification_id",
                                       (person_id,))]
