"""Issue 17, medium: notification streams.

Each ``/api/alerts/notifications/stream`` opened its own PostgreSQL connection (85 streams from one
resident: "too many clients"), and a stream kept delivering after its session ended (sign-out
everywhere). Now they share the app's one LISTEN connection and re-check the session.
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from support.web import PASSWORD, login_name, served

pytestmark = [pytest.mark.integration, pytest.mark.security]


def _login(host: str, port: int, person: str) -> str:
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("POST", "/api/auth/login", json.dumps({"login": login_name(person), "password": PASSWORD}),
              {"content-type": "application/json"})
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, body
    c.close()
    return json.loads(body)["token"]


OPEN: list[http.client.HTTPConnection] = []


@pytest.fixture(autouse=True)
def _close_connections():
    yield
    while OPEN:
        OPEN.pop().close()


def _open_stream(host: str, port: int, token: str, last_event_id: str | None = None) -> http.client.HTTPResponse:
    c = http.client.HTTPConnection(host, port, timeout=20)
    OPEN.append(c)
    headers = {"authorization": f"Bearer {token}", "accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    c.request("GET", "/api/alerts/notifications/stream", headers=headers)
    r = c.getresponse()
    assert r.status == 200, r.read()
    return r


def _backends(url: str) -> int:
    with psycopg.connect(url) as conn:
        dbname = conn.info.dbname
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                            (dbname,)).fetchone()[0]


def _read_until(resp: http.client.HTTPResponse, marker: bytes, timeout: float) -> bytes:
    sock = resp.fp.raw._sock  # type: ignore[union-attr]
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got and time.monotonic() < deadline:
        try:
            line = resp.fp.readline()
        except TimeoutError:
            break
        if not line:
            break
        got += line
    return got


def test_streams_share_one_database_connection(world) -> None:
    url, clock, _ = world
    with served(url, clock) as base:
        parts = urlsplit(base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        token = _login(host, port, "resident_1")
        streams = [_open_stream(host, port, token) for _ in range(3)]
        time.sleep(1.0)
        before = _backends(url)
        streams += [_open_stream(host, port, token) for _ in range(30)]
        time.sleep(1.5)
        after = _backends(url)
        for s in streams:
            s.close()
        while OPEN:
            OPEN.pop().close()
    assert after - before <= 3, (before, after)


def test_a_stream_stops_delivering_after_sign_out_everywhere(world) -> None:
    url, clock, _ = world
    with served(url, clock) as base:
        parts = urlsplit(base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        token = _login(host, port, "watcher_a")
        stream = _open_stream(host, port, token)
        time.sleep(0.5)
        other = _login(host, port, "watcher_a")
        c = http.client.HTTPConnection(host, port, timeout=10)
        OPEN.append(c)
        c.request("POST", "/api/auth/logout-all", headers={"authorization": f"Bearer {other}"})
        assert c.getresponse().status == 200
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO notifications (person_id, notice, urgent, title, body, data, created_at)"
                         " VALUES ('watcher_a', 'test', false, 'secret title', 'secret body', '{}', now())")
        got = _read_until(stream, b"signed_out", 20)
        stream.close()
        while OPEN:
            OPEN.pop().close()
    assert b"secret" not in got
    assert b"event: signed_out" in got


def test_a_huge_last_event_id_is_not_a_server_error(world) -> None:
    url, clock, _ = world
    with served(url, clock) as base:
        parts = urlsplit(base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        token = _login(host, port, "watcher_a")
        c = http.client.HTTPConnection(host, port, timeout=20)
        c.request("GET", "/api/alerts/notifications/stream",
                  headers={"authorization": f"Bearer {token}", "last-event-id": "9" * 5000})
        r = c.getresponse()
        status = r.status
        c.close()
    assert status == 200
