"""Issue 17, medium: SSRF through a person's Apprise channel ("test send").

A resident registered ``json://127.0.0.1:<port>/...`` and made the app POST to a loopback port; the
error text told open ports from closed ones. Now: only the schemes the app offers, no private or
loopback targets (unless the operator allows a network), and a plain "failed" to whoever tested.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import psycopg
import pytest

from support.web import app_client, cookie_login

pytestmark = [pytest.mark.integration, pytest.mark.security]


@pytest.fixture(autouse=True)
def _no_private_allowance(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py allows loopback for the other tests' sinks; here nothing is allowed."""
    monkeypatch.setenv("MIMAMORI_ALERTS_PRIVATE_TARGETS", "")


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on loopback that records what reaches it (the internal service an attacker aims at)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()


def _add(app, csrf: str, url: str) -> None:
    r = app.post("/api/alerts/people/resident_1/channels", json={"kind": "apprise", "target": url},
                 headers={"x-csrf-token": csrf})
    assert r.status_code == 201, r.text


def test_test_send_to_a_loopback_target_never_connects_and_says_only_failed(world, listener) -> None:
    url, clock, _ = world
    port, hits = listener
    with app_client(url, clock) as app:
        csrf = cookie_login(app, "resident_1")
        _add(app, csrf, f"json://127.0.0.1:{port}/internal")
        with psycopg.connect(url) as conn:
            cid = conn.execute("SELECT channel_id FROM person_channels WHERE person_id = 'resident_1'").fetchone()[0]
        r = app.post(f"/contacts/resident_1/{cid}/test", data={"csrf_token": csrf})
        assert r.status_code == 200
        assert "テストを送れませんでした" in r.text
        assert "refused" not in r.text.lower() and str(port) not in r.text.replace(f"json://127.0.0.1:{port}", "")
        audit = app.get("/api/alerts/audit/resident_1", headers={"x-csrf-token": csrf}).json()
    assert hits == []
    tested = [e for e in audit if e["action"] == "channel_tested"]
    assert tested and tested[0]["data"]["error"] == "failed"


def test_a_closed_port_and_an_open_one_look_the_same(world, listener) -> None:
    url, clock, _ = world
    port, _ = listener
    texts = []
    with app_client(url, clock) as app:
        csrf = cookie_login(app, "resident_1")
        for p in (port, 9):
            _add(app, csrf, f"json://localhost:{p}/x")
        with psycopg.connect(url) as conn:
            ids = [r[0] for r in conn.execute("SELECT channel_id FROM person_channels WHERE person_id = 'resident_1' ORDER BY channel_id")]
        for cid in ids:
            body = app.post(f"/contacts/resident_1/{cid}/test", data={"csrf_token": csrf}).text
            start = body.index('id="test-result"')
            texts.append(body[start:body.index("</p>", start)])
    assert texts[0] == texts[1]


def test_only_offered_schemes_are_registered(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as app:
        csrf = cookie_login(app, "resident_1")
        for target in ("https://127.0.0.1/x", "xml://127.0.0.1/x", "syslog://127.0.0.1", "mqtt://127.0.0.1/t"):
            r = app.post("/api/alerts/people/resident_1/channels", json={"kind": "apprise", "target": target},
                         headers={"x-csrf-token": csrf})
            assert r.status_code == 422, (target, r.status_code, r.text)


@pytest.mark.parametrize("url", [
    "json://127.0.0.1:8080/x", "jsons://localhost/x", "form://10.0.0.5/x", "json://[::1]:80/x",
    "json://169.254.169.254/latest/meta-data", "ntfy://192.168.1.2/topic", "mailto://u:p@127.0.0.1?to=a@b.jp",
    "mailtos://u:p@example.com?smtp=127.0.0.1", "json://0.0.0.0/x", "json://[::ffff:127.0.0.1]/x", "xml://93.184.216.34/x",
])
def test_refused_targets(url: str) -> None:
    from mimamori.alerts.channels import refused_target

    assert refused_target(url, resolve=lambda h: [h.strip("[]")] if h[0].isdigit() or ":" in h else ["127.0.0.1"]) is not None


@pytest.mark.parametrize("url", [
    "json://93.184.216.34/hook", "slack://TokenA/TokenB/TokenC", "ntfy://mytopic", "tgram://bot/chat", "line://token",
])
def test_allowed_targets(url: str) -> None:
    from mimamori.alerts.channels import refused_target

    assert refused_target(url, resolve=lambda h: ["93.184.216.34"]) is None


def test_operator_may_allow_a_private_network() -> None:
    from mimamori.alerts.channels import private_target_nets, refused_target

    nets = private_target_nets("10.1.2.3/32, 192.168.0.0/16")
    assert refused_target("ntfy://10.1.2.3/alerts", nets, resolve=lambda h: [h]) is None
    assert refused_target("ntfy://10.1.2.4/alerts", nets, resolve=lambda h: [h]) is not None
