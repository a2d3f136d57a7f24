"""Operations surface of the app: /metrics (requests by route template and status, SSE clients,
login failures), /healthz, /readyz (with the app's own database check); open without signing in and
kept out of the OpenAPI document."""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from support.web import app_client, bearer, served
from test_app_live import SseClient

pytestmark = pytest.mark.integration


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_metrics_health_and_readiness(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        before = c.get("/metrics").text
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["app"] is True
        h = bearer(c, "watcher_a")
        assert c.get("/api/households/h1", headers=h).status_code == 200
        assert c.get("/api/households/h3", headers=h).status_code == 404
        assert c.post("/api/auth/login", json={"login": "watcher-a", "password": "wrong"}).status_code == 401
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        after = r.text
        route = "/api/households/{household_id}"
        for status in ("200", "404"):
            delta = (_sample(after, "mimamori_app_requests_total", method="GET", route=route, status=status)
                     - _sample(before, "mimamori_app_requests_total", method="GET", route=route, status=status))
            assert delta == 1, status
        assert "/api/households/h1" not in after  # templates, never raw paths
        assert (_sample(after, "mimamori_app_login_failures_total", reason="wrong_login")
                - _sample(before, "mimamori_app_login_failures_total", reason="wrong_login")) == 1
        assert "mimamori_app_sse_clients" in after
        paths = c.get("/openapi.json").json()["paths"]
        assert not {"/metrics", "/healthz", "/readyz"} & set(paths)


def test_readiness_fails_when_the_database_is_gone(world) -> None:
    url, clock, _ = world
    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with app_client(url, clock) as c:
        assert c.get("/readyz").status_code == 200
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                         (name,))
        try:
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["app"] is False, r.text
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200:  # the pool replaces its broken connections
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_sse_clients_gauge(world) -> None:
    url, clock, _ = world
    with served(url, clock) as base, app_client(url, clock) as c:
        headers = bearer(c, "watcher_a")
        base_value = _sample(c.get("/metrics").text, "mimamori_app_sse_clients")
        streams = [SseClient(base, headers) for _ in range(2)]
        for s in streams:
            s.expect("hello")
        assert _sample(c.get("/metrics").text, "mimamori_app_sse_clients") == base_value + 2
        for s in streams:
            s.close()
        deadline = time.monotonic() + 10
        while _sample(c.get("/metrics").text, "mimamori_app_sse_clients") != base_value:
            assert time.monotonic() < deadline, "closed streams still counted"
            time.sleep(0.1)
