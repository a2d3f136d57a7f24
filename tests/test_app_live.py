"""Live updates over PostgreSQL LISTEN/NOTIFY: payloads carry ids only, one listener connection per
app process fans out to the SSE streams, each filtered by scope, and the listener reconnects when
the database drops it."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest

from mimamori.app.live.hub import APPLICATION_NAME
from mimamori.app.live.service import CHANNEL, Changes, fold, touches
from mimamori.app.people import Person
from mimamori.kernel.clock import as_datetime
from support.waiting import wait_for
from support.web import PEOPLE, app_client, bearer, served

pytestmark = pytest.mark.integration


class SseClient:
    """Reads an SSE stream in a thread; event names arrive on a queue."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base)
        self.http = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.http.connect()
        self.sock = self.http.sock
        self.http.request("GET", "/live", headers=headers)
        self.resp = self.http.getresponse()
        assert self.resp.status == 200, self.resp.read()[:200]
        self.events: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        name = None
        # closed under it by the test (whatever the closed socket raises): the stream is over
        with contextlib.suppress(Exception):
            for raw in self.resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line == "" and name:
                    self.events.put(name)
                    name = None
        self.events.put("<closed>")

    def expect(self, name: str, within: float = 5.0) -> None:
        assert self.events.get(timeout=within) == name

    def quiet(self, for_s: float) -> None:
        try:
            got = self.events.get(timeout=for_s)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected event {got!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # close() alone does not wake the reading thread
        self.http.close()


@contextmanager
def streams(base: str, url: str, clock: object, *people: str) -> Iterator[dict[str, SseClient]]:
    with app_client(url, clock) as c:  # type: ignore[arg-type]
        headers = {p: bearer(c, p) for p in people}
    clients = {p: SseClient(base, headers[p]) for p in people}
    try:
        for client in clients.values():
            client.expect("hello")
        yield clients
    finally:
        for client in clients.values():
            client.close()


def listeners(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,)).fetchall()]


def new_incident(url: str, clock: object, household_id: str) -> int:
    now = as_datetime(clock.now())  # type: ignore[attr-defined]
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():  # one batch of changes
        conn.execute("UPDATE incidents SET status = 'resolved', closed_at = %s WHERE household_id = %s"
                     " AND status IN ('open', 'claimed')", (now, household_id))
        return conn.execute("INSERT INTO incidents (household_id, kind, opened_at, updated_at) VALUES (%s, 'inactivity',"
                            " %s, %s) RETURNING incident_id", (household_id, now, now)).fetchone()[0]


def test_payloads_carry_ids_only(world) -> None:
    url, clock, ids = world
    now = as_datetime(clock.now())
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url, autocommit=True) as conn:
        listener.execute(f"LISTEN {CHANNEL}")
        conn.execute("UPDATE incidents SET status = 'claimed', claimed_by = 'watcher_a', outcome_note = '秘密のメモ'"
                     " WHERE incident_id = %s", (ids["h1"],))
        conn.execute("INSERT INTO incident_timeline (incident_id, at, actor, action, channel, body)"
                     " VALUES (%s, %s, 'watcher_a', 'comment', 'app', '田中さんは元気')", (ids["h1"],  now))
        conn.execute("INSERT INTO notifications (person_id, incident_id, notice, urgent, title, body, created_at)"
                     " VALUES ('watcher_a', %s, 'alert', true, '田中 一郎', '確認してください', %s)", (ids["h1"], now))
        conn.execute("INSERT INTO away_periods (household_id, starts_at, until, source, note)"
                     " VALUES ('h1', %s, %s, 'resident', '入院中')", (now, now.replace(day=25)))
        conn.execute("INSERT INTO sessions (token_hash, person_id, created_at, last_seen_at, expires_at)"
                     " VALUES ('\\x01', 'watcher_b', %s, %s, %s)", (now, now, now.replace(day=28)))
        conn.execute("DELETE FROM sessions WHERE person_id = 'watcher_b'")
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=5)]
    parsed = [json.loads(p) for p in payloads]
    assert parsed == [
        {"t": "incident", "id": ids["h1"], "h": "h1", "a": None},
        {"t": "timeline", "id": ids["h1"]},
        {"t": "notification", "p": "watcher_a"},
        {"t": "away", "h": "h1"},
        {"t": "session", "p": "watcher_b"},
    ]
    text = " ".join(payloads)
    for private in ("田中", "秘密", "元気", "入院", "確認", "name-"):
        assert private not in text
    changes = fold(payloads)
    assert changes.incident_ids == {ids["h1"]} and changes.notified_people == {"watcher_a"}
    assert not fold(["not json", '{"t": "incident"}', '{"t": "away", "h": 5}'])


def _person(pid: str) -> Person:
    role, area, hid, _teams = PEOPLE[pid]
    return Person(pid, f"name-{pid}", role, area, hid)


def test_touches_follows_scope(world) -> None:
    url, _clock, ids = world
    h1_incident = Changes(incident_ids={ids["h1"]}, incident_households={"h1"})
    outage_north = Changes(incident_ids={999_999}, incident_areas={"north"})
    away_h1 = Changes(away_households={"h1"})
    with psycopg.connect(url, autocommit=True) as conn:
        sees = {pid: touches(conn, _person(pid), h1_incident) for pid in PEOPLE}
        assert sees == {"oper": True, "coord_a": True, "coord_b": False, "watcher_a": True, "watcher_b": False,
                        "resident_1": False, "resident_2": False}
        assert {pid for pid in PEOPLE if touches(conn, _person(pid), outage_north)} == {"oper", "coord_a", "watcher_a"}
        assert {pid for pid in PEOPLE if touches(conn, _person(pid), away_h1)} == {"oper", "coord_a", "watcher_a",
                                                                                  "resident_1"}
        assert touches(conn, _person("watcher_b"), Changes(notified_people={"watcher_b"}))
        assert not touches(conn, _person("watcher_a"), Changes(notified_people={"watcher_b"}))
        assert touches(conn, _person("resident_2"), Changes(resync=True))


def test_one_listener_fans_out_by_scope(world) -> None:
    url, clock, ids = world
    with served(url, clock) as base, streams(base, url, clock, "watcher_a", "watcher_b", "coord_a") as s:
        wait_for(lambda: len(listeners(url)) == 1)
        # another team's household: only watcher_b (and not coord_a: h3 is in the south)
        new_incident(url, clock, "h3")
        s["watcher_b"].expect("change")
        # a comment on h1's alert: watcher_a and the north coordinator
        now = as_datetime(clock.now())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO incident_timeline (incident_id, at, action, channel) VALUES (%s, %s, 'x', 'app')",
                         (ids["h1"], now))
        s["watcher_a"].expect("change")
        s["coord_a"].expect("change")
        # an in-app notification: its recipient only
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO notifications (person_id, notice, urgent, title, body, created_at)"
                         " VALUES ('coord_a', 'alert', false, 't', 'b', %s)", (now,))
        s["coord_a"].expect("change")
        for pid in ("watcher_a", "watcher_b", "coord_a"):
            s[pid].quiet(0.5)
        assert len(listeners(url)) == 1  # three streams, one connection


def test_listener_reconnects_when_the_database_drops_it(world) -> None:
    url, clock, _ids = world
    with served(url, clock) as base, streams(base, url, clock, "watcher_a") as s:
        wait_for(lambda: len(listeners(url)) == 1)
        (old,) = listeners(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (old,)).fetchone()[0]
        wait_for(lambda: listeners(url) not in ([], [old]))
        s["watcher_a"].expect("change")  # the resync after reconnecting: changes may have been missed
        new_incident(url, clock, "h1")
        s["watcher_a"].expect("change")
        assert len(listeners(url)) == 1


def test_app_without_streams_holds_no_listener(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        assert c.get("/api/me", headers=bearer(c, "watcher_a")).status_code == 200
        assert listeners(url) == []


def test_safety_board_changes_are_live_ids_only_and_scoped(world) -> None:
    """Migration 0041: an answer (or the worker's recognition) and a home gateway's status NOTIFY the
    app's channel with ids only; heartbeats (last_seen_at) stay silent; only those who may see the
    household are told (the safety board's viewers)."""
    url, clock, _ids = world
    now = as_datetime(clock.now())
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url, autocommit=True) as conn:
        check_id = conn.execute("INSERT INTO safety_checks (area, message, started_by, started_at)"
                                " VALUES ('north', '地震がありました', 'coord_a', %s) RETURNING check_id", (now,)).fetchone()[0]
        conn.execute("INSERT INTO safety_answers (check_id, household_id, updated_at) VALUES (%s, 'h1', %s)",
                     (check_id, now))
        listener.execute(f"LISTEN {CHANNEL}")
        conn.execute("UPDATE safety_answers SET state = 'needs_help', how = 'app', note = '足をけがしました', updated_at = %s"
                     " WHERE check_id = %s AND household_id = 'h1'", (now, check_id))
        conn.execute("UPDATE gateways SET last_seen_at = %s WHERE gateway_id = 'gw-h1'", (now,))  # a heartbeat: silent
        conn.execute("UPDATE gateways SET status = 'offline', status_changed_at = %s WHERE gateway_id = 'gw-h3'", (now,))
        payloads = [n.payload for n in listener.notifies(timeout=1.5, stop_after=3)]
        assert [json.loads(p) for p in payloads] == [{"t": "safety", "c": check_id, "h": "h1"}, {"t": "gateway", "h": "h3"}]
        assert "足" not in " ".join(payloads)
        answer, gateway = fold(payloads[:1]), fold(payloads[1:])
        assert answer.household_changes == {"h1"} and gateway.household_changes == {"h3"}
        assert {pid for pid in PEOPLE if touches(conn, _person(pid), answer)} == {"oper", "coord_a", "watcher_a", "resident_1"}
        assert {pid for pid in PEOPLE if touches(conn, _person(pid), gateway)} == {"oper", "coord_b", "watcher_b"}
