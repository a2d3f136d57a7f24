"""The authorization matrix: every route of the app (taken from its route table, so a new route without
an entry here fails) × every role × its object, for the JSON API, the pages and the live streams.
The rule it checks is ``mimamori.kernel.access`` (its docstring says who may see what, and why).

World (``support.web.seed``): h1 and h2 in area north, h3 in south; watcher_a on h1's team,
watcher_b on h3's; coord_a coordinates north, coord_b south; resident_1 lives in h1, resident_2 in h2.
Objects: household h1, h1's open inactivity incident, a safety check of the north, device bulb-h1,
person watcher_a. "Passes" means any status but 401/403/404 (and, for pages, no sign-in redirect);
everyone else must be refused, anonymous with 401 (API) or the sign-in redirect (pages).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import BaseRoute, Mount

from mimamori.app.live.service import Changes, touches
from mimamori.app.people import Person
from mimamori.kernel import access
from support.web import PASSWORD, PEOPLE, app_client, bearer, cookie_login, served

pytestmark = pytest.mark.integration

ROLES = ("anon", *PEOPLE)
ALL = frozenset(PEOPLE)
SEES_H1 = frozenset({"oper", "coord_a", "watcher_a", "resident_1"})  # the household: team, area, its resident
TEAM_H1 = frozenset({"oper", "coord_a", "watcher_a"})  # its alerts and chain: not its resident
MANAGES_H1 = frozenset({"oper", "coord_a"})  # devices, team, deletion: the area's coordinator
PRIVACY_H1 = frozenset({"oper", "coord_a", "resident_1"})  # view log, export: the resident and their managers
MANAGERS = frozenset({"oper", "coord_a", "coord_b"})
SELF_WATCHER_A = frozenset({"oper", "coord_a", "watcher_a"})  # a person's channels: themselves, their coordinator
SEES_CHECK = frozenset({"oper", "coord_a", "watcher_a", "resident_1", "resident_2"})  # the north's check: h1, h2
RESIDENTS = frozenset({"resident_1", "resident_2"})
OPERATOR = frozenset({"oper"})
PUBLIC = None  # no sign-in: the path's own token (or nothing) is the credential

# (method, route template) -> (path to request, JSON body or form, who passes)
# {incident} and {check} are filled in from the world.
MATRIX: dict[tuple[str, str], tuple[str, Any, frozenset[str] | None]] = {
    # --- operations and documentation (the operator's network; this client is on it)
    ("GET", "/healthz"): ("/healthz", None, PUBLIC),
    ("GET", "/readyz"): ("/readyz", None, PUBLIC),
    ("GET", "/metrics"): ("/metrics", None, PUBLIC),
    ("GET", "/openapi.json"): ("/openapi.json", None, PUBLIC),
    ("GET", "/docs"): ("/docs", None, PUBLIC),
    ("GET", "/docs/oauth2-redirect"): ("/docs/oauth2-redirect", None, PUBLIC),
    ("GET", "/redoc"): ("/redoc", None, PUBLIC),
    ("GET", "/manifest.webmanifest"): ("/manifest.webmanifest", None, PUBLIC),
    ("GET", "/sw.js"): ("/sw.js", None, PUBLIC),
    # --- accounts
    ("POST", "/api/auth/login"): ("/api/auth/login", {"login": "watcher-b", "password": PASSWORD}, PUBLIC),
    ("GET", "/login"): ("/login", None, PUBLIC),
    ("POST", "/login"): ("/login", {"login": "nobody", "password": "x"}, PUBLIC),
    ("GET", "/lang/{code}"): ("/lang/en", None, PUBLIC),
    ("GET", "/invite/{token}"): ("/invite/not-a-token", None, PUBLIC),
    ("POST", "/invite/{token}"): ("/invite/not-a-token", {}, PUBLIC),
    ("POST", "/api/invitations/{token}/accept"): ("/api/invitations/not-a-token/accept", {}, PUBLIC),
    ("GET", "/api/me"): ("/api/me", None, ALL),
    ("POST", "/api/invitations"): ("/api/invitations", {"role": "watcher", "display_name": "近所", "household_id": "h1"},
                                   MANAGES_H1),
    # --- households
    ("GET", "/api/households"): ("/api/households", None, ALL),
    ("POST", "/api/households"): ("/api/households", {"display_name": "新しい家", "area": "north"}, MANAGES_H1),
    ("GET", "/api/households/{household_id}"): ("/api/households/h1", None, SEES_H1),
    ("GET", "/api/households/{household_id}/team"): ("/api/households/h1/team", None, SEES_H1),
    ("POST", "/api/households/{household_id}/team"): ("/api/households/h1/team", {"person_id": "watcher_a", "tier": 2},
                                                       MANAGES_H1),
    ("DELETE", "/api/households/{household_id}/team/{person_id}"): ("/api/households/h1/team/watcher_b", None, MANAGES_H1),
    ("POST", "/api/households/{household_id}/away"): ("/api/households/h1/away", {"until": "2026-01-25"}, SEES_H1),
    ("DELETE", "/api/households/{household_id}/away"): ("/api/households/h1/away", None, SEES_H1),
    ("GET", "/"): ("/", None, ALL),
    ("GET", "/partials/home"): ("/partials/home", None, ALL),
    ("GET", "/households/{household_id}"): ("/households/h1", None, SEES_H1),
    ("POST", "/households/{household_id}/team"): ("/households/h1/team", {"person_id": "watcher_a", "tier": "2"}, MANAGES_H1),
    ("POST", "/households/{household_id}/team/{member_id}/remove"): ("/households/h1/team/watcher_b/remove", {}, MANAGES_H1),
    ("POST", "/households/{household_id}/chain"): ("/households/h1/chain", {"op": "add", "new_kind": "wait"}, MANAGES_H1),
    ("POST", "/households/{household_id}/away"): ("/households/h1/away", {"until": "2026-01-25"}, SEES_H1),
    ("POST", "/households/{household_id}/away/end"): ("/households/h1/away/end", {}, SEES_H1),
    ("POST", "/households/{household_id}/invite"): ("/households/h1/invite", {"role": "watcher", "display_name": "近所"},
                                                    MANAGES_H1),
    ("GET", "/coord"): ("/coord", None, MANAGERS),
    ("POST", "/coord/households"): ("/coord/households", {"display_name": "北の家", "area": "north"}, MANAGES_H1),
    ("POST", "/coord/invite"): ("/coord/invite", {"role": "coordinator", "display_name": "市", "area": "north"}, OPERATOR),
    # --- privacy
    ("GET", "/api/households/{household_id}/views"): ("/api/households/h1/views", None, PRIVACY_H1),
    ("GET", "/api/households/{household_id}/consents"): ("/api/households/h1/consents", None, SEES_H1),
    ("GET", "/api/households/{household_id}/export"): ("/api/households/h1/export?request_note=asked+by+phone", None,
                                                       PRIVACY_H1),
    ("GET", "/api/households/{household_id}/export.csv"): ("/api/households/h1/export.csv?request_note=asked+by+phone",
                                                           None, PRIVACY_H1),
    ("POST", "/api/households/{household_id}/delete"): ("/api/households/h1/delete", {"confirm_name": "not the name"},
                                                        MANAGES_H1),
    ("GET", "/households/{household_id}/export.json"): ("/households/h1/export.json?request_note=asked+by+phone", None,
                                                        PRIVACY_H1),
    ("GET", "/households/{household_id}/export.csv"): ("/households/h1/export.csv?request_note=asked+by+phone", None,
                                                       PRIVACY_H1),
    ("GET", "/households/{household_id}/views"): ("/households/h1/views", None, PRIVACY_H1),
    ("POST", "/households/{household_id}/delete"): ("/households/h1/delete", {"confirm_name": "not the name"}, MANAGES_H1),
    ("GET", "/me"): ("/me", None, RESIDENTS),
    # --- alerts: the engine's JSON API (one API per action) and the app's pages
    ("GET", "/api/alerts"): ("/api/alerts", None, ALL),
    ("GET", "/api/alerts/{incident_id}"): ("/api/alerts/{incident}", None, TEAM_H1),
    ("GET", "/api/alerts/{incident_id}/timeline"): ("/api/alerts/{incident}/timeline", None, TEAM_H1),
    ("POST", "/api/alerts/{incident_id}/comment"): ("/api/alerts/{incident}/comment", {"text": "見に行きます"}, TEAM_H1),
    ("POST", "/api/alerts/{incident_id}/claim"): ("/api/alerts/{incident}/claim", None, TEAM_H1),
    ("POST", "/api/alerts/{incident_id}/resolve"): ("/api/alerts/{incident}/resolve", {"outcome": "fine"}, TEAM_H1),
    ("GET", "/api/alerts/chains/{household_id}"): ("/api/alerts/chains/h1", None, TEAM_H1),
    ("PUT", "/api/alerts/chains/{household_id}"): ("/api/alerts/chains/h1", [{"type": "notify", "tiers": [1]}], MANAGES_H1),
    ("DELETE", "/api/alerts/chains/{household_id}"): ("/api/alerts/chains/h1", None, MANAGES_H1),
    ("GET", "/api/alerts/audit/{subject}"): ("/api/alerts/audit/h1", None, MANAGES_H1),
    ("GET", "/api/alerts/people/{person_id}/channels"): ("/api/alerts/people/watcher_a/channels", None, SELF_WATCHER_A),
    ("POST", "/api/alerts/people/{person_id}/channels"): ("/api/alerts/people/watcher_a/channels",
                                                         {"kind": "email", "target": "wa@example.jp"}, SELF_WATCHER_A),
    ("DELETE", "/api/alerts/people/{person_id}/channels/{channel_id}"): ("/api/alerts/people/watcher_a/channels/999999",
                                                                         None, SELF_WATCHER_A),
    ("PUT", "/api/alerts/people/{person_id}/quiet-hours"): ("/api/alerts/people/watcher_a/quiet-hours",
                                                           {"start": "22:00", "end": "06:00"}, SELF_WATCHER_A),
    ("GET", "/api/alerts/notifications"): ("/api/alerts/notifications", None, ALL),
    ("POST", "/api/alerts/notifications/read"): ("/api/alerts/notifications/read", {}, ALL),
    ("GET", "/alerts/{incident_id}"): ("/alerts/{incident}", None, TEAM_H1),
    ("GET", "/partials/alerts/{incident_id}"): ("/partials/alerts/{incident}", None, TEAM_H1),
    ("POST", "/alerts/{incident_id}/claim"): ("/alerts/{incident}/claim", {}, TEAM_H1),
    ("POST", "/alerts/{incident_id}/comment"): ("/alerts/{incident}/comment", {"body": "向かいます"}, TEAM_H1),
    ("POST", "/alerts/{incident_id}/resolve"): ("/alerts/{incident}/resolve", {"outcome": "fine"}, TEAM_H1),
    ("POST", "/notifications/read"): ("/notifications/read", {}, ALL),
    ("GET", "/r/{token}"): ("/r/not-a-token", None, PUBLIC),
    ("POST", "/r/{token}"): ("/r/not-a-token", {"answer": "fine"}, PUBLIC),
    # --- contacts (a person's channels as a page)
    ("GET", "/contacts"): ("/contacts", None, ALL),
    ("GET", "/contacts/{person_id}"): ("/contacts/watcher_a", None, SELF_WATCHER_A),
    ("POST", "/contacts/{person_id}/email"): ("/contacts/watcher_a/email", {"address": "wa2@example.jp"}, SELF_WATCHER_A),
    ("POST", "/contacts/{person_id}/quiet"): ("/contacts/watcher_a/quiet", {"start": "", "end": ""}, SELF_WATCHER_A),
    ("POST", "/contacts/{person_id}/{channel_id}/test"): ("/contacts/watcher_a/{channel}/test", {}, SELF_WATCHER_A),
    ("POST", "/contacts/{person_id}/{channel_id}/remove"): ("/contacts/watcher_a/999999/remove", {}, SELF_WATCHER_A),
    ("POST", "/api/push/subscriptions"): ("/api/push/subscriptions", {"endpoint": "https://push.example.com/x",
                                                                      "keys": {"p256dh": "a" * 20, "auth": "b" * 8}}, ALL),
    # --- LINE (issue 16): the webhook's credential is LINE's signature; the link is the person's own
    ("POST", "/line/webhook"): ("/line/webhook", {"events": []}, PUBLIC),
    ("GET", "/api/me/line"): ("/api/me/line", None, ALL),
    ("POST", "/api/me/line/code"): ("/api/me/line/code", None, ALL),
    ("DELETE", "/api/me/line"): ("/api/me/line", None, ALL),
    # --- the daily note (issue 16): about a home whose team one is on, or one's own home; one's own choice
    ("GET", "/api/me/daily-notes"): ("/api/me/daily-notes", None, ALL),
    # the daily note about a home: whoever may see the home (mimamori.kernel.access), for themselves
    ("PUT", "/api/me/daily-notes/{household_id}"): ("/api/me/daily-notes/h1", {"local_hour": 12}, SEES_H1),
    ("DELETE", "/api/me/daily-notes/{household_id}"): ("/api/me/daily-notes/h1", None, ALL),
    # --- devices
    ("GET", "/api/devices/unpaired"): ("/api/devices/unpaired", None, MANAGERS),
    ("GET", "/api/devices/problems"): ("/api/devices/problems", None, MANAGERS),
    ("GET", "/api/devices/outages"): ("/api/devices/outages", None, ALL),
    ("POST", "/api/devices/pair"): ("/api/devices/pair", {"device_id": "bulb-h1", "household_id": "h1"}, MANAGES_H1),
    ("POST", "/api/devices/{device_id}/gateway"): ("/api/devices/bulb-h1/gateway", {"gateway_id": "gw-h1"}, MANAGES_H1),
    ("PUT", "/api/devices/{device_id}/blink"): ("/api/devices/bulb-h1/blink", {"allowed": True}, MANAGES_H1),
    ("GET", "/coord/devices"): ("/coord/devices", None, MANAGERS),
    ("POST", "/coord/devices/pair"): ("/coord/devices/pair", {"device_id": "bulb-h1", "household_id": "h1"}, MANAGES_H1),
    ("POST", "/coord/devices/{device_id}/blink"): ("/coord/devices/bulb-h1/blink", {"allowed": "yes"}, MANAGES_H1),
    # --- safety check (安否確認): the stage's JSON API and the app's pages
    ("GET", "/api/safety/checks"): ("/api/safety/checks", None, ALL),
    ("POST", "/api/safety/checks"): ("/api/safety/checks", {"message": "ご無事ですか", "area": "north"}, MANAGES_H1),
    ("GET", "/api/safety/checks/{check_id}"): ("/api/safety/checks/{check}", None, SEES_CHECK),
    ("GET", "/api/safety/checks/{check_id}/board"): ("/api/safety/checks/{check}/board", None, SEES_CHECK),
    ("GET", "/api/safety/checks/{check_id}/households/{household_id}"): ("/api/safety/checks/{check}/households/h1", None,
                                                                        SEES_H1),
    ("POST", "/api/safety/checks/{check_id}/households/{household_id}/answer"): (
        "/api/safety/checks/{check}/households/h1/answer", {"answer": "safe"}, SEES_H1),
    ("POST", "/api/safety/checks/{check_id}/households/{household_id}/claim"): (
        "/api/safety/checks/{check}/households/h1/claim", None, TEAM_H1),
    ("POST", "/api/safety/checks/{check_id}/households/{household_id}/comment"): (
        "/api/safety/checks/{check}/households/h1/comment", {"text": "見てきます"}, TEAM_H1),
    ("POST", "/api/safety/checks/{check_id}/households/{household_id}/escalate"): (
        "/api/safety/checks/{check}/households/h1/escalate", None, MANAGES_H1),
    ("POST", "/api/safety/checks/{check_id}/households/{household_id}/link"): (
        "/api/safety/checks/{check}/households/h1/link", None, MANAGES_H1),
    ("GET", "/api/safety/checks/{check_id}/export.csv"): ("/api/safety/checks/{check}/export.csv", None, MANAGES_H1),
    ("PUT", "/api/safety/households/{household_id}/lives-alone"): ("/api/safety/households/h1/lives-alone",
                                                                   {"lives_alone": True}, MANAGES_H1),
    ("POST", "/api/safety/answer"): ("/api/safety/answer", {"token": "not-a-token", "answer": "safe"}, PUBLIC),
    ("GET", "/safety/static/safety.js"): ("/safety/static/safety.js", None, PUBLIC),
    ("GET", "/safety/static/safety.css"): ("/safety/static/safety.css", None, PUBLIC),
    ("GET", "/safety"): ("/safety", None, ALL),
    ("POST", "/safety/start"): ("/safety/start", {"message": "ご無事ですか", "area": "north"}, MANAGES_H1),
    ("GET", "/safety/{check_id}"): ("/safety/{check}", None, SEES_CHECK),
    ("GET", "/partials/safety/{check_id}"): ("/partials/safety/{check}", None, SEES_CHECK),
    ("GET", "/safety/{check_id}/h/{household_id}"): ("/safety/{check}/h/h1", None, SEES_H1),
    ("POST", "/safety/{check_id}/h/{household_id}/claim"): ("/safety/{check}/h/h1/claim", {}, TEAM_H1),
    ("POST", "/safety/{check_id}/h/{household_id}/escalate"): ("/safety/{check}/h/h1/escalate", {}, MANAGES_H1),
    ("POST", "/safety/{check_id}/h/{household_id}/answer"): ("/safety/{check}/h/h1/answer", {"answer": "safe"}, SEES_H1),
    ("GET", "/safety/a/{token}"): ("/safety/a/not-a-token", None, PUBLIC),
    ("POST", "/safety/a/{token}"): ("/safety/a/not-a-token", {"answer": "safe"}, PUBLIC),
    # --- live streams (opened over a real socket: they never end)
    ("GET", "/live"): ("/live", None, ALL),
    ("GET", "/api/alerts/notifications/stream"): ("/api/alerts/notifications/stream", None, ALL),
    # --- sign out (each ends the session it was asked with: last, and signed in again after)
    ("POST", "/api/auth/logout"): ("/api/auth/logout", None, ALL),
    ("POST", "/api/auth/logout-all"): ("/api/auth/logout-all", None, ALL),
    ("POST", "/logout"): ("/logout", {}, ALL),
    ("POST", "/logout-all"): ("/logout-all", {}, ALL),
}
# Closing ends the check's actions (later ones answer 409/410, still past authorization): asked near the end.
CLOSING = {
    ("POST", "/api/safety/checks/{check_id}/close"): ("/api/safety/checks/{check}/close", None, MANAGES_H1),
    ("POST", "/safety/{check_id}/close"): ("/safety/{check}/close", {}, MANAGES_H1),
}
MATRIX.update(CLOSING)
STREAMS = {("GET", "/live"), ("GET", "/api/alerts/notifications/stream")}
SIGN_OUT = {("POST", "/api/auth/logout"), ("POST", "/api/auth/logout-all"), ("POST", "/logout"), ("POST", "/logout-all")}


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI >= 0.120 keeps included routers as such
            yield from _routes(route.original_router.routes)
        elif not isinstance(route, Mount):
            yield route


def route_table() -> set[tuple[str, str]]:
    from mimamori.app.main import create_app
    from mimamori.kernel.config import Settings

    app = create_app(Settings(), database_url="postgresql://unused")
    table = set()
    for route in _routes(app.routes):
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                table.add((method, route.path))  # type: ignore[attr-defined]
    return table


def test_every_route_has_a_matrix_entry() -> None:
    """A new route (or a removed one) must be placed in the matrix: who may reach it is a decision."""
    table = route_table()
    assert sorted(table - MATRIX.keys()) == [], "routes without a matrix entry"
    assert sorted(MATRIX.keys() - table) == [], "matrix entries for routes the app does not have"


def _fill(path: str, ids: dict[str, int]) -> str:
    return path.replace("{incident}", str(ids["h1"])).replace("{check}", str(ids["check"])).replace(
        "{channel}", str(ids["channel"]))


def _is_page(path: str) -> bool:
    return not path.startswith("/api/")


def _request(client: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    if _is_page(path) and method == "POST":
        return client.request(method, path, data=body or {}, headers=headers, follow_redirects=False)
    return client.request(method, path, json=body, headers=headers, follow_redirects=False)


def _verdict(role: str, allowed: frozenset[str] | None, status: int, location: str) -> str | None:
    """None when the answer is right, else what is wrong."""
    if status >= 500:
        return "server error"
    signed_out = status == 401 or (status in (302, 303, 307) and location.startswith("/login"))
    refused = signed_out or status in (403, 404)
    if allowed is PUBLIC:  # its own credential may be refused (a wrong password: 401), never sent to sign in
        return "sent to sign in" if status in (302, 303, 307) and location.startswith("/login") else None
    if role == "anon":
        return None if signed_out else "anonymous not sent to sign in"
    if (role in allowed) == refused:
        return "refused" if refused else "let through"
    return None


def _objects(client: Any) -> dict[str, int]:
    """The objects the world lacks: a safety check of the north and an e-mail channel of watcher_a."""
    oper = bearer(client, "oper")
    r = client.post("/api/safety/checks", json={"message": "地震がありました。ご無事ですか", "area": "north"}, headers=oper)
    assert r.status_code == 201, r.text
    channel = client.post("/api/alerts/people/watcher_a/channels", json={"kind": "email", "target": "a@example.jp"},
                          headers=oper)
    assert channel.status_code == 201, channel.text
    return {"check": int(r.json()["check_id"]), "channel": int(channel.json()["channel_id"])}


def _stream_status(base: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={**headers, "accept": "text/event-stream"})
        r = conn.getresponse()
        return r.status, r.getheader("location") or ""
    finally:
        conn.close()


def test_matrix(world) -> None:
    """Every route × every role: passes exactly for those the rule lets through."""
    url, clock, ids = world
    failures: list[str] = []
    with app_client(url, clock) as c:
        ids = {**ids, **_objects(c)}
        headers = {role: ({} if role == "anon" else bearer(c, role)) for role in ROLES}
        ordered = [key for key in MATRIX if key not in STREAMS | SIGN_OUT | CLOSING.keys()]
        for key in [*ordered, *CLOSING, *SIGN_OUT]:
            path, body, allowed = MATRIX[key]
            method = key[0]
            for role in ROLES:
                r = _request(c, method, _fill(path, ids), body, headers[role])
                c.cookies.clear()  # a sign-in (the public login route) must not carry over to the next role
                if key in SIGN_OUT:
                    # Passing is ending one's session (the answer is a redirect to sign in either way).
                    wrong = "server error" if r.status_code >= 500 else None
                    if role != "anon" and c.get("/api/me", headers=headers[role]).status_code != 401:
                        wrong = "session not ended"
                        failures.append(f"{role:10} {method} {key[1]} -> {r.status_code} session not ended")
                    if role != "anon":
                        headers[role] = bearer(c, role)
                else:
                    wrong = _verdict(role, allowed, r.status_code, r.headers.get("location", ""))
                if wrong:
                    failures.append(f"{role:10} {method} {key[1]} -> {r.status_code} {wrong}: {r.text[:80]}")
    with served(url, clock) as base, app_client(url, clock) as c:
        for key in sorted(STREAMS):
            path, _body, allowed = MATRIX[key]
            for role in ROLES:
                status, location = _stream_status(base, path, {} if role == "anon" else bearer(c, role))
                wrong = _verdict(role, allowed, status, location)
                if wrong:
                    failures.append(f"{role:10} GET {key[1]} -> {status} {wrong}")
    assert not failures, f"{len(failures)} wrong answers:\n" + "\n".join(failures)


def _person(pid: str) -> Person:
    role, area, household_id, _teams = PEOPLE[pid]
    return Person(pid, f"name-{pid}", role, area, household_id, "ja")


def test_streams_tell_only_those_who_may_see(world) -> None:
    """What a stream passes on follows the same rule: a change of h1's alert reaches h1's team only; a
    change of the household (away, a safety answer) reaches whoever may see h1, its resident too.
    """
    import psycopg

    url, _clock, ids = world
    incident = Changes()
    incident.add(json.dumps({"t": "incident", "id": ids["h1"], "h": "h1", "a": None}))
    away = Changes()
    away.add(json.dumps({"t": "away", "h": "h1"}))
    with psycopg.connect(url, autocommit=True) as conn:
        for pid in PEOPLE:
            person = _person(pid)
            assert touches(conn, person, incident) == (pid in TEAM_H1), pid
            assert touches(conn, person, away) == (pid in SEES_H1), pid
            # ... and the stream's rule is the access module's, asked about one object
            assert access.may_see_incident(conn, person, ids["h1"]) == (pid in TEAM_H1), pid
            assert access.may_see_household(conn, person, "h1") == (pid in SEES_H1), pid


def test_watcher_never_sees_another_team(world) -> None:
    url, clock, ids = world
    with app_client(url, clock) as c:
        a = bearer(c, "watcher_a")
        b = bearer(c, "watcher_b")
        assert [h["household_id"] for h in c.get("/api/households", headers=a).json()] == ["h1"]
        assert [h["household_id"] for h in c.get("/api/households", headers=b).json()] == ["h3"]
        assert [i["incident_id"] for i in c.get("/api/alerts", headers=a).json()] == [ids["h1"]]
        for path in ("/api/households/h3", "/api/households/h3/team", f"/api/alerts/{ids['h3']}",
                     "/api/households/h3/export", "/api/alerts/chains/h3"):
            assert c.get(path, headers=a).status_code == 404, path
        cookie_login(c, "watcher_a")
        home = c.get("/").text
        assert "田中 一郎" in home and "鈴木 次郎" not in home
        for path in ("/households/h3", f"/alerts/{ids['h3']}", f"/partials/alerts/{ids['h3']}"):
            r = c.get(path)
            assert r.status_code == 404 and "鈴木" not in r.text, path


def test_coordinator_limited_to_area(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        south = bearer(c, "coord_b")
        assert [h["household_id"] for h in c.get("/api/households", headers=south).json()] == ["h3"]
        assert c.get("/api/households/h1", headers=south).status_code == 404
        r = c.post("/api/households", headers=south, json={"display_name": "南の家"})
        assert r.status_code == 201
        created = r.json()["household_id"]
        assert created in [h["household_id"] for h in c.get("/api/households", headers=south).json()]
        assert c.get(f"/api/households/{created}", headers=bearer(c, "coord_a")).status_code == 404


# Field-level rule: address and phone numbers (household_contacts, people.phone) are for the
# household's team and its own resident; others who may view the household see only "registered".
CONTACT_VALUES = ("north 1-2-3", "076-000-0000", "090-7777-0001", "090-7777-0002")
SEES_CONTACT_H1 = {"watcher_a", "resident_1"}
CONTACT_API = ["/api/households/h1", "/api/households/h1/team"]
CONTACT_PAGES = ["/households/h1"]


def _give_people_phones(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE people SET phone = '090-7777-0001' WHERE person_id = 'watcher_a'")
        conn.execute("UPDATE people SET phone = '090-7777-0002' WHERE person_id = 'resident_1'")


def _leaked(text: str) -> list[str]:
    return [v for v in CONTACT_VALUES if v in text]


def test_contact_details_field_matrix(world) -> None:
    """Every role × every API and page read of h1: the team and the resident get the values, the area
    coordinator and the operator get "registered" only, everyone else gets nothing at all.
    """
    url, clock, _ = world
    _give_people_phones(url)
    failures = []
    with app_client(url, clock) as c:
        for role in PEOPLE:
            h = bearer(c, role)
            for path in CONTACT_API:
                r = c.get(path, headers=h)
                if role not in SEES_H1:
                    if r.status_code != 404 or _leaked(r.text):
                        failures.append(f"{role} GET {path} -> {r.status_code} {_leaked(r.text)}")
                    continue
                assert r.status_code == 200, (role, path, r.text)
                leaked = _leaked(r.text)
                if role in SEES_CONTACT_H1 and "076-000-0000" not in r.text and path.endswith("h1"):
                    failures.append(f"{role} GET {path} lacks the household's phone")
                if role not in SEES_CONTACT_H1 and leaked:
                    failures.append(f"{role} GET {path} received {leaked}")
            detail = c.get("/api/households/h1", headers=h).json()
            if role in SEES_H1:
                contact = detail["contact"]
                expect_visible = role in SEES_CONTACT_H1
                if contact["registered"] is not True or contact["has_phone"] is not True or contact["has_address"] is not True:
                    failures.append(f"{role}: contact not marked registered: {contact}")
                if contact["visible"] != expect_visible or (contact["phone"] is None) == expect_visible:
                    failures.append(f"{role}: contact visibility wrong: {contact}")
                member = next(m for m in detail["team"] if m["person_id"] == "watcher_a")
                if member["phone_registered"] is not True or (member["phone"] is None) == expect_visible:
                    failures.append(f"{role}: team phone visibility wrong: {member}")
    for role in PEOPLE:
        with app_client(url, clock) as c:
            cookie_login(c, role)
            for path in CONTACT_PAGES:
                r = c.get(path)
                leaked = _leaked(r.text)
                if role in SEES_CONTACT_H1:
                    if r.status_code != 200 or "076-000-0000" not in r.text or "north 1-2-3" not in r.text:
                        failures.append(f"{role} GET {path} page lacks the contact details")
                elif leaked:
                    failures.append(f"{role} GET {path} page showed {leaked}")
                elif role in SEES_H1 and "登録済み" not in r.text:
                    failures.append(f"{role} GET {path} page does not say the contact is registered")
    assert not failures, "\n".join(failures)


def test_coordinator_on_the_team_sees_contact(world) -> None:
    """It is team membership that grants the values, not the role."""
    url, clock, _ = world
    with app_client(url, clock) as c:
        oper = bearer(c, "oper")
        assert "076-000-0000" not in c.get("/api/households/h1", headers=oper).text
        r = c.post("/api/households/h1/team", headers=oper, json={"person_id": "coord_a", "tier": 2})
        assert r.status_code == 204, r.text
        assert c.get("/api/households/h1", headers=bearer(c, "coord_a")).json()["contact"]["phone"] == "076-000-0000"
        assert "076-000-0000" not in c.get("/api/households/h1", headers=oper).text


def test_export_is_the_residents_complete_copy_and_is_logged(world) -> None:
    """Decision (mimamori/app/README.md, "Export"): an export is the resident's copy of their data, complete
    with contact values. The resident takes it as is; a coordinator or operator acting for them must
    say which request it answers, and the export shows in the resident's view log with that note.
    """
    url, clock, _ = world
    _give_people_phones(url)
    with app_client(url, clock) as c:
        coord = bearer(c, "coord_a")
        for path in ("/api/households/h1/export", "/api/households/h1/export.csv"):
            r = c.get(path, headers=coord)  # no request named: refused, nothing exported
            assert r.status_code == 422 and not _leaked(r.text), (path, r.text)
            assert c.get(path + "?request_note=%20%20", headers=coord).status_code == 422
        note = "1月21日 ご本人から電話で依頼"
        for role in ("resident_1", "oper", "coord_a"):
            query = "" if role == "resident_1" else f"?request_note={note}"
            exported = c.get(f"/api/households/h1/export{query}", headers=bearer(c, role)).json()
            assert exported["contact"][0]["phone"] == "076-000-0000", role
            assert exported["contact"][0]["address"] == "north 1-2-3", role
            assert exported["residents"][0]["phone"] == "090-7777-0002", role
            assert "(registered)" not in json.dumps(exported, ensure_ascii=False)
            assert exported["resident_contacts"] == [] and exported["resident_check_answers"] == []  # present, empty here
        csv_text = c.get(f"/api/households/h1/export.csv?request_note={note}", headers=coord).text
        assert "076-000-0000" in csv_text and "north 1-2-3" in csv_text
        # ... while the coordinator's ordinary reads keep the team-only rule
        assert not _leaked(c.get("/api/households/h1", headers=coord).text)
        views = c.get("/api/households/h1/views", headers=bearer(c, "resident_1")).json()
        exports = [(v["viewer_name"], v["what"], v["purpose"]) for v in views if v["what"].startswith("export")]
        assert exports == [("name-coord_a", "export_csv", note), ("name-coord_a", "export_json", note),
                           ("name-oper", "export_json", note)]  # the resident's own export is no "view"
        # a watcher of the team may not export at all
        assert c.get(f"/api/households/h1/export?request_note={note}", headers=bearer(c, "watcher_a")).status_code == 403
    with app_client(url, clock) as c:
        cookie_login(c, "resident_1")
        me = c.get("/me").text
        assert note in me and "書き出し（CSV）" in me
    with app_client(url, clock) as c:
        cookie_login(c, "coord_a")
        page = c.get("/households/h1").text
        assert 'id="request-note"' in page and "required" in page.split('id="request-note"')[1].split(">")[0]


# --- the differences between the four copies, each decided once (mimamori/kernel/access.py) ---------------


def test_a_coordinator_on_another_areas_team_sees_it_as_a_team_member_but_does_not_manage_it(world) -> None:
    """Before, the app hid the household from such a coordinator while alerts let them act on its alerts
    and even edit its chain. Now they see it and act on its alerts like a watcher; managing it (chain,
    devices, team) stays with its area's coordinator.
    """
    import psycopg

    url, clock, ids = world
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO household_watchers (household_id, person_id, tier) VALUES ('h3', 'coord_a', 2)")
    with app_client(url, clock) as c:
        coord_a = bearer(c, "coord_a")
        assert c.get("/api/households/h3", headers=coord_a).status_code == 200
        assert "h3" in [h["household_id"] for h in c.get("/api/households", headers=coord_a).json()]
        assert ids["h3"] in [a["incident_id"] for a in c.get("/api/alerts", headers=coord_a).json()]
        assert c.post(f"/api/alerts/{ids['h3']}/comment", json={"text": "向かいます"}, headers=coord_a).status_code == 201
        assert c.get("/api/alerts/chains/h3", headers=coord_a).status_code == 200
        for method, path, body in (("PUT", "/api/alerts/chains/h3", [{"type": "notify", "tiers": [1]}]),
                                   ("DELETE", "/api/alerts/chains/h3", None),
                                   ("POST", "/api/households/h3/team", {"person_id": "watcher_a"}),
                                   ("POST", "/api/devices/bulb-h3/gateway", {"gateway_id": "gw-h3"}),
                                   ("GET", "/api/households/h3/views", None)):
            r = c.request(method, path, json=body, headers=coord_a)
            assert r.status_code == 403 and r.json()["code"] == "forbidden", (path, r.text)
        # ... while coord_b, the area's coordinator, still manages it
        assert c.put("/api/alerts/chains/h3", json=[{"type": "notify", "tiers": [1]}],
                     headers=bearer(c, "coord_b")).status_code == 200
    for who, manages in (("coord_a", False), ("coord_b", True)):  # the page offers manage controls accordingly
        with app_client(url, clock) as c:
            cookie_login(c, who)
            page = c.get("/households/h3")
            assert page.status_code == 200
            assert ('id="chain-form"' in page.text) == manages, who
            assert ("/households/h3/team/" in page.text) == manages, who


def test_technical_alerts_are_the_coordinators_not_the_teams(world) -> None:
    """Before, the alert engine let a household's watchers see and act on its device_offline incidents,
    which the app hid (and the technical chain never sends them).
    """
    import psycopg

    url, clock, _ids = world
    with psycopg.connect(url, autocommit=True) as conn:
        offline = conn.execute("INSERT INTO incidents (household_id, kind, opened_at, updated_at, rule)"
                               " VALUES ('h1', 'device_offline', now(), now(), 'test') RETURNING incident_id").fetchone()[0]
    with app_client(url, clock) as c:
        for role, sees in (("watcher_a", False), ("resident_1", False), ("coord_a", True), ("oper", True), ("coord_b", False)):
            h = bearer(c, role)
            assert (offline in [a["incident_id"] for a in c.get("/api/alerts", headers=h).json()]) == sees, role
            assert (c.post(f"/api/alerts/{offline}/claim", headers=h).status_code not in (403, 404)) == sees, role  # 409: claimed


def test_the_resident_sees_their_home_but_not_the_teams_business(world) -> None:
    """Their household, its view log and its safety checks yes; the team's alerts and chain no (before,
    the app and safety let residents see their home, the alert engine's chain API decided on its own).
    """
    url, clock, ids = world
    with app_client(url, clock) as c:
        r1 = bearer(c, "resident_1")
        assert c.get("/api/households/h1", headers=r1).status_code == 200
        assert c.get("/api/households/h1/views", headers=r1).status_code == 200
        assert c.get("/api/alerts", headers=r1).json() == []
        for path in (f"/api/alerts/{ids['h1']}", f"/api/alerts/{ids['h1']}/timeline", "/api/alerts/chains/h1"):
            assert c.get(path, headers=r1).status_code == 404, path


def test_the_matrix_fails_when_the_rule_breaks(world, monkeypatch) -> None:
    """The matrix can fail: let residents see the team's alerts and it says so."""
    url, clock, ids = world
    real = access.incident_sql

    def leaky(viewer, alias="i"):
        return ("TRUE", {}) if viewer.role == "resident" else real(viewer, alias)

    monkeypatch.setattr(access, "incident_sql", leaky)
    with app_client(url, clock) as c:
        r = c.get(f"/api/alerts/{ids['h1']}", headers=bearer(c, "resident_2"))
        assert _verdict("resident_2", MATRIX[("GET", "/api/alerts/{incident_id}")][2], r.status_code, "") == "let through"
