"""The app as the lead runs it (run_app with a stop event), demo accounts, live updates over SSE,
area outage banners and device problems."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import psycopg
import pytest
from fastapi.testclient import TestClient

from mimamori.app.demo import DEMO_PASSWORD, create_demo_accounts
from mimamori.app.main import create_app, run_app
from mimamori.kernel.clock import ManualClock, as_datetime
from mimamori.kernel.config import Settings
from mimamori.kernel.embedded import free_port
from support.web import START, app_client, bearer, cookie_login, served

pytestmark = pytest.mark.integration


def test_run_app_serves_until_stopped(pg_url: str) -> None:
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(target=run_app, args=(Settings(),),
                              kwargs={"database_url": pg_url, "port": port, "stop": stop}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                assert json.load(r) == {"status": "ok"}
                break
        except OSError:
            assert time.monotonic() < deadline, "app did not come up"
            time.sleep(0.1)
    # The first /openapi.json builds the schema (~60 operations): seconds on a loaded 2-core machine.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=30) as r:
        assert "/api/households" in json.load(r)["paths"]
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_demo_accounts_sign_in(pg_url: str) -> None:
    clock = ManualClock(START)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for i in range(8):
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, 'town')",
                         (f"h{i:02d}", f"家 {i}"))
        logins = create_demo_accounts(conn, clock)
        again = create_demo_accounts(conn, clock)  # idempotent
    assert [d.login for d in logins] == [d.login for d in again]
    assert {d.role for d in logins} == {"operator", "coordinator", "watcher", "resident"}
    assert all(d.line() for d in logins)
    app = create_app(Settings(), database_url=pg_url, clock=clock)
    with TestClient(app) as c:
        seen = {}
        for d in logins:
            r = c.post("/api/auth/login", json={"login": d.login, "password": DEMO_PASSWORD})
            assert r.status_code == 200, d
            h = {"authorization": f"Bearer {r.json()['token']}"}
            seen[d.login] = [x["household_id"] for x in c.get("/api/households", headers=h).json()]
    assert len(seen["operator"]) == len(seen["coordinator"]) == 8
    assert seen["watcher1"] == ["h00", "h01", "h02"] and seen["watcher2"] == ["h03", "h04", "h05"]
    assert seen["resident"] == ["h00"]


def _read_event(resp: http.client.HTTPResponse, deadline: float) -> str:
    """The name of the next SSE event (skipping comments)."""
    name = None
    while time.monotonic() < deadline:
        line = resp.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line == "" and name:
            return name
    raise AssertionError("no event in time")


def test_live_stream_signals_new_alert(world) -> None:
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM incidents")
    with served(url, clock) as base:
        with TestClient(create_app(Settings(), database_url=url, clock=clock)) as c:
            headers = bearer(c, "watcher_a")
        parts = urlsplit(base)
        conn_http = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn_http.request("GET", "/live", headers=headers)
        resp = conn_http.getresponse()
        assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
        deadline = time.monotonic() + 10
        assert _read_event(resp, deadline) == "hello"
        with psycopg.connect(url, autocommit=True) as conn:
            now = as_datetime(clock.now())
            # another team's household first: no event for this watcher ...
            conn.execute("INSERT INTO incidents (household_id, kind, opened_at, updated_at) VALUES ('h3', 'inactivity', %s, %s)",
                         (now, now))
            time.sleep(1.5)
            conn.execute("INSERT INTO incidents (household_id, kind, opened_at, updated_at) VALUES ('h1', 'inactivity', %s, %s)",
                         (now, now))
        t0 = time.monotonic()
        assert _read_event(resp, t0 + 5) == "change"
        assert time.monotonic() - t0 < 3  # ... and only one change, caused by the second insert
        # signing out everywhere ends the stream
        with TestClient(create_app(Settings(), database_url=url, clock=clock)) as c:
            assert c.post("/api/auth/logout-all", headers=headers).status_code == 200
        assert _read_event(resp, time.monotonic() + 5) == "signed_out"
        conn_http.close()


def test_area_outage_banner_and_device_problems(world) -> None:
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        now = as_datetime(clock.now())
        conn.execute("INSERT INTO incidents (area, kind, opened_at, updated_at) VALUES ('north', 'area_outage', %s, %s)",
                     (now, now))
        conn.execute("UPDATE gateways SET status = 'offline' WHERE gateway_id = 'gw-h2'")
    with app_client(url, clock) as c:
        coord = bearer(c, "coord_a")
        problems = c.get("/api/devices/problems", headers=coord).json()
        assert [(p["device_id"], p["problem"]) for p in problems] == [("bulb-h2", "gateway_offline")]
        statuses = {h["household_id"]: h["status"] for h in c.get("/api/households", headers=coord).json()}
        assert statuses == {"h1": "check_needed", "h2": "device_problem"}
        assert [o["area"] for o in c.get("/api/devices/outages", headers=bearer(c, "watcher_a")).json()] == ["north"]
        assert c.get("/api/devices/outages", headers=bearer(c, "watcher_b")).json() == []
        cookie_login(c, "coord_a")
        page = c.get("/coord").text
        assert "通信障害" in page and "中継機がオフライン" in page
    with app_client(url, clock) as c:
        cookie_login(c, "watcher_b")
        assert "通信障害" not in c.get("/").text


def test_pwa_manifest_service_worker_and_push_subscription(world, monkeypatch: pytest.MonkeyPatch) -> None:
    from py_vapid import Vapid02

    vapid = Vapid02()
    vapid.generate_keys()
    monkeypatch.setenv("MIMAMORI_ALERTS_VAPID_PRIVATE_KEY", vapid.private_pem().decode())
    monkeypatch.delenv("MIMAMORI_WEBPUSH_VAPID_PUBLIC_KEY", raising=False)
    url, clock, _ = world
    with app_client(url, clock) as c:
        manifest = c.get("/manifest.webmanifest").json()
        assert manifest["start_url"] == "/" and manifest["display"] == "standalone" and manifest["lang"] == "ja"
        sw = c.get("/sw.js")
        assert sw.headers["content-type"].startswith("text/javascript") and "showNotification" in sw.text
        csrf = cookie_login(c, "watcher_a")
        home = c.get("/").text
        key = home.split('name="vapid-public-key" content="')[1].split('"')[0]
        assert len(key) == 87  # 65-byte uncompressed P-256 point, base64url
        sub = {"endpoint": "https://push.example.invalid/abc", "keys": {"p256dh": "BNcR", "auth": "tBHI"}}
        assert c.post("/api/push/subscriptions", json=sub, headers={"x-csrf-token": csrf}).status_code == 204
    with psycopg.connect(url) as conn:
        kind, target = conn.execute("SELECT kind, target FROM person_channels WHERE person_id = 'watcher_a'").fetchone()
    assert kind == "webpush" and json.loads(target)["endpoint"] == sub["endpoint"]


def test_alerts_router_is_mounted_with_app_sessions(world) -> None:
    pytest.importorskip("mimamori.alerts.views")
    url, clock, ids = world
    with app_client(url, clock) as c:
        assert c.get("/api/alerts").status_code == 401
        listed = c.get("/api/alerts", headers=bearer(c, "watcher_a"))
        assert listed.status_code == 200 and [i["incident_id"] for i in listed.json()] == [ids["h1"]]
