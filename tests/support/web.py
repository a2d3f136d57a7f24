"""Helpers for the app tests: a seeded world and signed-in clients (the ``world`` fixture is in conftest)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg
from fastapi.testclient import TestClient

from mimamori.app.auth.service import hash_password
from mimamori.app.main import create_app
from mimamori.kernel.clock import ManualClock, as_datetime
from mimamori.kernel.config import Settings

PASSWORD = "correct horse 1"
START = 1_767_225_600.0 + 20 * 86400 + 3 * 3600  # 2026-01-21 12:00 JST

#: Each person's role, area, household and the households whose team they are on.
PEOPLE = {
    "oper": ("operator", None, None, ()),
    "coord_a": ("coordinator", "north", None, ()),
    "coord_b": ("coordinator", "south", None, ()),
    "watcher_a": ("watcher", None, None, ("h1",)),
    "watcher_b": ("watcher", None, None, ("h3",)),
    "resident_1": ("resident", None, "h1", ()),
    "resident_2": ("resident", None, "h2", ()),
}
HOUSEHOLDS = {"h1": ("田中 一郎", "north"), "h2": ("佐藤 花子", "north"), "h3": ("鈴木 次郎", "south")}
_HASH: list[str] = []


def seed(url: str, clock: ManualClock) -> dict[str, int]:
    """Households in two areas, people of every role, devices with 14 days of events, one open
    inactivity incident in h1 and one in h3. Returns the incident ids.
    """
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    now = as_datetime(clock.now())
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        for hid, (name, area) in HOUSEHOLDS.items():
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)", (hid, name, area))
            conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES (%s, %s, NULL, 'online')",
                         (f"gw-{hid}", hid))
            conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind, room) VALUES (%s, %s, %s, 'bulb', '居間')",
                         (f"bulb-{hid}", f"gw-{hid}", hid))
            conn.execute("INSERT INTO device_state (device_id, last_seen_at, last_heartbeat_at) VALUES (%s, %s, %s)",
                         (f"bulb-{hid}", now, now))
            rows = []
            for day in range(14):
                for hour in (7, 8, 12, 18, 21):
                    t = now - timedelta(days=day, hours=(12 - hour) % 24)
                    rows.append((t, hid, f"bulb-{hid}", len(rows), "on" if hour % 2 else "off"))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (%s, %s, %s, %s, %s)", rows)
            conn.execute("INSERT INTO household_contacts (household_id, address, phone, updated_at) VALUES (%s, %s, %s, %s)",
                         (hid, f"{area} 1-2-3", "076-000-0000", now))
        for pid, (role, area, hid, teams) in PEOPLE.items():
            conn.execute("INSERT INTO people (person_id, display_name, role, area, household_id) VALUES (%s, %s, %s, %s, %s)",
                         (pid, f"name-{pid}", role, area, hid))
            conn.execute("INSERT INTO accounts (person_id, login, password_hash, created_at, password_changed_at)"
                         " VALUES (%s, %s, %s, %s, %s)", (pid, pid.replace("_", "-"), _HASH[0], now, now))
            for team_hid in teams:
                conn.execute("INSERT INTO household_watchers (household_id, person_id, tier) VALUES (%s, %s, 1)", (team_hid, pid))
        ids = {}
        for hid in ("h1", "h3"):
            ids[hid] = conn.execute(
                "INSERT INTO incidents (household_id, kind, opened_at, updated_at, rule) VALUES (%s, 'inactivity', %s, %s, 'test')"
                " RETURNING incident_id", (hid, now, now)).fetchone()[0]
    return ids


def login_name(person_id: str) -> str:
    return person_id.replace("_", "-")


@contextmanager
def app_client(url: str, clock: ManualClock) -> Iterator[TestClient]:
    app = create_app(Settings(), database_url=url, clock=clock)
    # A client on this machine, as the operator's browser and scraper are (the default MIMAMORI_OPS_NETWORKS).
    with TestClient(app, base_url="http://testserver", client=("127.0.0.1", 50000)) as client:
        yield client


def bearer(client: TestClient, person_id: str) -> dict[str, str]:
    r = client.post("/api/auth/login", json={"login": login_name(person_id), "password": PASSWORD})
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return {"authorization": f"Bearer {r.json()['token']}"}


def cookie_login(client: TestClient, person_id: str) -> str:
    """Sign in through the page form (as a browser would: the form first, for its login-CSRF token);
    returns the CSRF token of the session.
    """
    form = client.get("/login")
    assert form.status_code == 200, form.text
    field = 'name="csrf_token" value="'
    start = form.text.index(field) + len(field)
    login_csrf = form.text[start:form.text.index('"', start)]
    r = client.post("/login", data={"login": login_name(person_id), "password": PASSWORD, "next": "/",
                                    "csrf_token": login_csrf},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get("/coord" if PEOPLE[person_id][0] in ("operator", "coordinator") else "/")
    marker = 'name="csrf-token" content="'
    start = page.text.index(marker) + len(marker)
    return page.text[start:page.text.index('"', start)]


@contextmanager
def served(url: str, clock: ManualClock) -> Iterator[str]:
    """The app under uvicorn on a free port, in a thread; yields its base URL."""
    import uvicorn

    app = create_app(Settings(), database_url=url, clock=clock)
    # The socket is bound here and handed to uvicorn: a port found free and bound later can be taken in between
    # by another process on a busy machine ("address already in use").
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="app-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.stopping.set()
        server.should_exit = True
        thread.join(15)
