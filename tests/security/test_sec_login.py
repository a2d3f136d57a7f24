"""Issue 17, medium: sign-in throttling and HTTPS behind the documented TLS reverse proxy.

Before: failures counted per login (anyone could lock anyone out); behind the proxy every user shared
the proxy's address (one bucket for all), while X-Forwarded-For rotation from a loopback peer (which
uvicorn believed) escaped it; the session cookie never got ``Secure`` and no HSTS was sent.

The app runs here under uvicorn with the settings ``mimamori app`` uses (``app.main.run_app``); the
"proxy" is a connection from 127.0.0.2 and the "people" connect from other loopback addresses.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mimamori.kernel.config import Settings
from support.web import PASSWORD, login_name

pytestmark = [pytest.mark.integration, pytest.mark.security]

PROXY = "127.0.0.2"


@contextmanager
def app_server(url: str, clock, **settings: str) -> Iterator[int]:
    import uvicorn

    from mimamori.app import main

    app = main.create_app(Settings(**settings), database_url=url, clock=clock)  # type: ignore[arg-type]
    sock = socket.socket()  # bound here and handed to uvicorn: no window for another process to take the port
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))  # noqa: S104 - loopback aliases
    port = sock.getsockname()[1]
    make = getattr(main, "uvicorn_config", None)
    config = make(app, host="0.0.0.0", port=port) if make else uvicorn.Config(  # noqa: S104 - loopback aliases
        app, host="0.0.0.0", port=port, log_level="warning", timeout_graceful_shutdown=1, proxy_headers=True)  # noqa: S104
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "app did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def login(port: int, who: str, password: str, *, source: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    c.request("POST", "/api/auth/login", json.dumps({"login": login_name(who), "password": password}),
              {"content-type": "application/json", **(headers or {})})
    r = c.getresponse()
    r.read()
    c.close()
    return r


def page_login(port: int, *, source: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    c.request("GET", "/login", headers=headers)
    r = c.getresponse()
    r.read()
    c.close()
    return r


def _loopback_aliases_work() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 9), timeout=0.2, source_address=(PROXY, 0)):
            pass
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return True


needs_aliases = pytest.mark.skipif(not _loopback_aliases_work(), reason="needs 127.0.0.0/8 source addresses")


@needs_aliases
def test_someone_elses_failures_do_not_lock_me_out(world) -> None:
    url, clock, _ = world
    with app_server(url, clock) as port:
        for _ in range(8):
            assert login(port, "watcher_a", "wrong", source="127.0.0.9").status in (401, 429)
        assert login(port, "watcher_a", PASSWORD, source="127.0.0.9").status == 429  # the guesser is throttled
        assert login(port, "watcher_a", PASSWORD, source="127.0.0.7").status == 200  # the owner is not


@needs_aliases
def test_behind_the_proxy_each_person_has_their_own_bucket_and_rotation_does_not_escape(world) -> None:
    url, clock, _ = world
    with app_server(url, clock, trusted_proxies=PROXY) as port:
        # the proxy appends the address it saw; an attacker writes whatever it likes to the left
        for i in range(8):
            r = login(port, "watcher_a", "wrong", source=PROXY, headers={"x-forwarded-for": f"10.9.9.{i}, 203.0.113.66"})
            assert r.status in (401, 429)
        assert login(port, "watcher_a", PASSWORD, source=PROXY,
                     headers={"x-forwarded-for": "10.9.9.99, 203.0.113.66"}).status == 429
        # another person behind the same proxy is not in that bucket
        assert login(port, "watcher_a", PASSWORD, source=PROXY, headers={"x-forwarded-for": "203.0.113.7"}).status == 200
    with app_server(url, clock) as port:
        # no trusted proxy configured: a header from a peer proves nothing (rotation does not help)
        for i in range(8):
            login(port, "coord_a", "wrong", source="127.0.0.1", headers={"x-forwarded-for": f"198.51.100.{i}"})
        assert login(port, "coord_a", PASSWORD, source="127.0.0.1", headers={"x-forwarded-for": "198.51.100.200"}).status == 429


@needs_aliases
def test_behind_the_tls_proxy_the_cookie_is_secure_and_hsts_is_sent(world) -> None:
    url, clock, _ = world
    with app_server(url, clock, trusted_proxies=PROXY) as port:
        r = page_login(port, source=PROXY, headers={"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.7"})
        assert r.status == 200
        cookies = r.headers.get_all("set-cookie") or []
        assert cookies and all("secure" in c.lower() for c in cookies), cookies
        assert r.headers.get("strict-transport-security", "").startswith("max-age=")
        # a client that is not the proxy cannot claim HTTPS for a plain connection
        r = page_login(port, source="127.0.0.9", headers={"x-forwarded-proto": "https"})
        assert not any("secure" in c.lower() for c in r.headers.get_all("set-cookie") or [])
        assert r.headers.get("strict-transport-security") is None
