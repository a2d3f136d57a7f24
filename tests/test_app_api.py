"""The app's API and pages against a real PostgreSQL: accounts, CSRF, rate limiting, pairing,
alerts through the escalation engine's service, privacy, i18n.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from mimamori.app.i18n import MESSAGES
from support.web import PASSWORD, app_client, bearer, cookie_login

pytestmark = pytest.mark.integration


def test_every_message_has_japanese_and_english() -> None:
    for key, pair in MESSAGES.items():
        assert len(pair) == 2 and all(isinstance(s, str) for s in pair), key
        assert pair[0] and pair[1], key


def test_templates_use_only_known_message_keys() -> None:
    import importlib.util
    import re
    from pathlib import Path

    import mimamori.app.main  # noqa: F401  (the running app's messages: stages' routers merge theirs on import)

    if importlib.util.find_spec("mimamori.app.safety") is not None:
        importlib.import_module("mimamori.app.safety")

    used = set()
    for f in (Path(__file__).parent.parent / "mimamori" / "app" / "templates").glob("*.html"):
        used |= set(re.findall(r"\bt\('([a-z0-9_]+)'[,)]", f.read_text(encoding="utf-8")))
    assert used and not (used - set(MESSAGES)), used - set(MESSAGES)


def test_login_session_and_sign_out_everywhere(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        assert c.get("/api/me").status_code == 401
        r = c.post("/api/auth/login", json={"login": "watcher-a", "password": "wrong"})
        assert r.status_code == 401
        h1 = bearer(c, "watcher_a")
        h2 = bearer(c, "watcher_a")
        assert c.get("/api/me", headers=h1).json()["role"] == "watcher"
        assert c.post("/api/auth/logout-all", headers=h1).json() == {"sessions_ended": 2}
        assert c.get("/api/me", headers=h2).status_code == 401
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT password_hash FROM accounts WHERE person_id = 'watcher_a'").fetchone()[0]
        assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_login_is_rate_limited(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        for _ in range(5):
            assert c.post("/api/auth/login", json={"login": "coord-a", "password": "nope"}).status_code == 401
        # even the right password is refused while the window lasts
        assert c.post("/api/auth/login", json={"login": "coord-a", "password": PASSWORD}).status_code == 429
        clock.advance(16 * 60)
        assert c.post("/api/auth/login", json={"login": "coord-a", "password": PASSWORD}).status_code == 200


def test_cookie_session_needs_csrf_for_changes(world) -> None:
    url, clock, ids = world
    with app_client(url, clock) as c:
        csrf = cookie_login(c, "watcher_a")
        assert c.post(f"/alerts/{ids['h1']}/claim", follow_redirects=False).status_code == 403
        assert c.post(f"/alerts/{ids['h1']}/claim", data={"csrf_token": "forged"}, follow_redirects=False).status_code == 403
        r = c.post(f"/alerts/{ids['h1']}/claim", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
        assert c.post(f"/api/alerts/{ids['h1']}/comment", json={"text": "向かいます"},
                      headers={"x-csrf-token": csrf}).status_code == 201
        # a second "I'll go" (someone was quicker) lands back on the alert with a notice, not an error page
        r = c.post(f"/alerts/{ids['h1']}/claim", data={"csrf_token": csrf})
        assert r.status_code == 200 and "すでに他の操作がされています" in r.text and "向かいます" in r.text


def test_claim_and_resolve_through_alerts_engine(world) -> None:
    url, clock, ids = world
    with app_client(url, clock) as c:
        h = bearer(c, "watcher_a")
        listed = c.get("/api/alerts", headers=h).json()
        assert [i["incident_id"] for i in listed] == [ids["h1"]]
        assert c.post(f"/api/alerts/{ids['h1']}/claim", headers=h).status_code == 200
        r = c.post(f"/api/alerts/{ids['h1']}/claim", headers=h)  # the one error handler: status, code, reason
        assert r.status_code == 409 and r.json()["code"] == "conflict" and r.json()["detail"]
        assert c.post(f"/api/alerts/{ids['h1']}/resolve", headers=h, json={"outcome": "fine", "note": "元気"}).status_code == 200
        detail = c.get(f"/api/alerts/{ids['h1']}", headers=h).json()
        assert detail["status"] == "resolved" and detail["outcome"] == "fine"
        timeline = c.get(f"/api/alerts/{ids['h1']}/timeline", headers=h).json()
        assert [e["action"] for e in timeline] == ["claimed", "resolved"]
        # the other team's alert is not even visible
        r = c.post(f"/api/alerts/{ids['h3']}/claim", headers=h)
        assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_pairing_moves_past_events(world) -> None:
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO gateways (gateway_id) VALUES ('gw-new')")
        conn.execute("INSERT INTO devices (device_id, gateway_id, first_seen_at) VALUES ('bulb-new', 'gw-new', now())")
        conn.execute("INSERT INTO events (time, device_id, seq, kind) SELECT now() - g * interval '1 hour', 'bulb-new', g, 'on'"
                     " FROM generate_series(1, 7) g")
    with app_client(url, clock) as c:
        coord = bearer(c, "coord_a")
        assert [d["device_id"] for d in c.get("/api/devices/unpaired", headers=coord).json()] == ["bulb-new"]
        # not into another area's household
        assert c.post("/api/devices/pair", headers=coord, json={"device_id": "bulb-new", "household_id": "h3"}).status_code == 404
        r = c.post("/api/devices/pair", headers=coord, json={"device_id": "bulb-new", "household_id": "h2", "kind": "bulb"})
        assert r.status_code == 200 and r.json()["events_moved"] == 7
        assert c.get("/api/devices/unpaired", headers=coord).json() == []
        # a watcher cannot pair
        w = bearer(c, "watcher_a")
        assert c.post("/api/devices/pair", headers=w, json={"device_id": "x1", "household_id": "h1"}).status_code == 403
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE household_id = 'h2' AND device_id = 'bulb-new'").fetchone()[0] == 7


def test_view_log_export_and_delete(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        w = bearer(c, "watcher_a")
        detail = c.get("/api/households/h1", headers=w).json()
        assert detail["contact"]["phone"] and len(detail["heatmap"]["counts"]) == 14
        # 14 days × 5 events, less the two evening events of the day before the window
        assert sum(map(sum, detail["heatmap"]["counts"])) == 68
        res = bearer(c, "resident_1")
        views = c.get("/api/households/h1/views", headers=res).json()
        assert views[0]["viewer_name"] == "name-watcher_a" and views[0]["what"] == "api"
        assert c.get("/api/households/h1/views", headers=w).status_code == 403
        exported = c.get("/api/households/h1/export", headers=res)
        assert exported.status_code == 200 and len(json.loads(exported.text)["events"]) == 70
        csv_text = c.get("/api/households/h1/export.csv", headers=res).text
        assert "table,time,device_id,seq,kind,value" in csv_text
        coord = bearer(c, "coord_a")
        assert c.post("/api/households/h1/delete", headers=coord, json={"confirm_name": "wrong"}).status_code == 422
        assert c.post("/api/households/h1/delete", headers=res, json={"confirm_name": "田中 一郎"}).status_code == 403
        r = c.post("/api/households/h1/delete", headers=coord, json={"confirm_name": "田中 一郎"})
        assert r.status_code == 200 and r.json() == {"events": 70, "residents": 1}
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE device_id = 'bulb-h1'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM people WHERE person_id = 'resident_1'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM household_contacts WHERE household_id = 'h1'").fetchone()[0] == 0


def test_invitation_creates_resident_with_consent(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        coord = bearer(c, "coord_a")
        r = c.post("/api/invitations", headers=coord, json={"role": "resident", "display_name": "x", "household_id": "h3"})
        assert r.status_code == 404
        r = c.post("/api/invitations", headers=coord, json={"role": "resident", "display_name": "佐藤 花子", "household_id": "h2"})
        assert r.status_code == 201
        token = r.json()["token"]
        page = c.get(f"/invite/{token}")
        assert page.status_code == 200 and "佐藤 花子" in page.text
        body = {"login": "hanako", "password": "long enough 1", "consent": False}
        assert c.post(f"/api/invitations/{token}/accept", json=body).status_code == 422
        assert c.post(f"/api/invitations/{token}/accept", json={**body, "consent": True}).status_code == 201
        assert c.post(f"/api/invitations/{token}/accept", json={**body, "login": "other", "consent": True}).status_code == 404
        r = c.post("/api/auth/login", json={"login": "hanako", "password": "long enough 1"})
        h = {"authorization": f"Bearer {r.json()['token']}"}
        consents = c.get("/api/households/h2/consents", headers=h).json()
        assert consents[0]["notice_version"] and consents[0]["given_by_name"] == "佐藤 花子"
        # the resident pauses watching
        assert c.post("/api/households/h2/away", headers=h, json={"until": "2026-02-01"}).status_code == 201
        assert c.get("/api/households", headers=h).json()[0]["status"] == "away"


def test_pages_in_japanese_and_english(world) -> None:
    url, clock, ids = world
    with app_client(url, clock) as c:
        cookie_login(c, "watcher_a")
        home = c.get("/")
        assert "確認が必要" in home.text and 'lang="ja"' in home.text and '<meta charset="utf-8">' in home.text
        c.get("/lang/en", follow_redirects=False)
        home = c.get("/")
        assert "Check needed" in home.text and 'lang="en"' in home.text
        page = c.get("/households/h1")
        assert page.status_code == 200 and "<svg" in page.text and "076-000-0000" in page.text
        alert = c.get(f"/alerts/{ids['h1']}")
        assert "I&#39;ll go" in alert.text and "All fine" in alert.text and "Needs help" in alert.text


def test_engine_notifications_reach_the_watcher_in_app(world) -> None:
    from mimamori.alerts import service as alerts_service

    url, clock, ids = world
    with psycopg.connect(url, autocommit=True) as conn:
        while alerts_service.adopt_one(conn, clock, "test-worker") is not None:
            pass
        # an entry naming someone outside h1's team and area (the other area's coordinator)
        conn.execute("""INSERT INTO incident_timeline (incident_id, at, actor, action, channel, body, data)
                        VALUES (%s, now(), NULL, 'notified', 'system', NULL, '{"people": ["coord_b"]}')""", (ids["h1"],))
    with app_client(url, clock) as c:
        h = bearer(c, "watcher_a")
        unread = c.get("/api/alerts/notifications?unread_only=true", headers=h).json()
        assert [n["incident_id"] for n in unread] == [ids["h1"]]
        assert c.get("/api/alerts/notifications?unread_only=true", headers=bearer(c, "watcher_b")).json()[0]["incident_id"] == ids["h3"]
        csrf = cookie_login(c, "watcher_a")
        home = c.get("/").text
        assert unread[0]["title"] in home
        alert = c.get(f"/alerts/{ids['h1']}").text  # the engine's timeline, in words (mimamori/app/incidents/timeline.py)
        assert "チームへの連絡を始めました" in alert and "name-watcher_aさんに知らせました" in alert
        assert "name-watcher_aさんにはアプリ以外の連絡手段がありません" in alert
        # names only of the team, the area's coordinators and the reader; never the engine's codes or English
        assert "name-coord_b" not in alert and "担当の方に知らせました" in alert
        assert "no channel besides the app" not in alert and "unreachable" not in alert and "notified" not in alert
        assert all("data" not in e for e in c.get(f"/api/alerts/{ids['h1']}/timeline", headers=h).json())
        assert c.post("/notifications/read", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
        assert c.get("/api/alerts/notifications?unread_only=true", headers=h).json() == []
        c.get("/lang/en")
        alert = c.get(f"/alerts/{ids['h1']}").text
        assert "notified name-watcher_a" in alert and "name-watcher_a has no channel besides the app" in alert


def test_pages_show_friendly_errors(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        cookie_login(c, "watcher_a")
        missing = c.get("/no-such-page")
        assert missing.status_code == 404 and "見つかりません" in missing.text and "<html" in missing.text
        assert c.get("/api/no-such-thing").json() == {"detail": "Not Found"}
        bad = c.get("/alerts/not-a-number")
        assert bad.status_code == 422 and "入力を確かめてください" in bad.text


def test_coordinator_page_flows(world) -> None:
    """Register a household, invite its resident, put a watcher on its team — all through the forms."""
    url, clock, _ = world
    with app_client(url, clock) as c:
        csrf = cookie_login(c, "coord_a")
        r = c.post("/coord/households", data={"csrf_token": csrf, "display_name": "山田 ハル", "phone": "090-1",
                                              "paper_consent": "1"}, follow_redirects=False)
        assert r.status_code == 303
        hid = r.headers["location"].split("/households/")[1].split("?")[0]
        r = c.post(f"/households/{hid}/team", data={"csrf_token": csrf, "person_id": "watcher_a", "tier": "2",
                                                     "relation": "近所"}, follow_redirects=False)
        assert r.status_code == 303
        # the chain editor takes the claim_timeout option and shows the chain in words above its JSON
        steps = [{"type": "notify", "tiers": [1]}, {"type": "claim_timeout", "minutes": 45, "grace_minutes": 15}]
        r = c.post(f"/households/{hid}/chain", data={"csrf_token": csrf, "steps": json.dumps(steps)},
                   follow_redirects=False)
        assert r.status_code == 303
        page = c.get(f"/households/{hid}").text
        assert "45分で向かった方に状況を尋ね" in page and "15分たっても" in page and "&#34;claim_timeout&#34;" in page
        assert "name-watcher_a" in page and "2026-01" in page  # team, paper consent
        # the coordinator is not on the team: the phone is "registered", its number is not shown
        assert "090-1" not in page and "登録済み" in page
        r = c.post(f"/households/{hid}/invite", data={"csrf_token": csrf, "role": "resident", "display_name": "山田 ハル"})
        link = r.text.split('id="invitation-url">')[1].split("<")[0]
        token = link.rsplit("/", 1)[1]
    with app_client(url, clock) as resident:
        invite_form = resident.get(f"/invite/{token}").text
        form_csrf = invite_form.split('name="csrf_token" value="')[1].split('"')[0]
        form = {"login": "haru", "password": "haru-password", "locale": "en", "csrf_token": form_csrf}
        assert resident.post(f"/invite/{token}", data=form, follow_redirects=False).status_code == 422  # no consent
        r = resident.post(f"/invite/{token}", data={**form, "consent": "1"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/contacts?msg=welcome_contacts"
        assert "Welcome. Add where you want to receive notices" in resident.get(r.headers["location"]).text
        me = resident.get("/me")
        assert me.status_code == 200 and "My home" in me.text and "name-coord_a" in me.text  # who viewed
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM consents WHERE household_id = %s", (hid,)).fetchone()[0] == 1
        assert conn.execute("SELECT tier FROM household_watchers WHERE household_id = %s", (hid,)).fetchone()[0] == 2


def test_login_form_refuses_cross_site_post_without_token(world) -> None:
    """Login CSRF: a form posted from another site carries neither the login-CSRF cookie nor its
    token, and is refused with 403 before the password is checked; no session is started.
    """
    url, clock, _ = world
    with app_client(url, clock) as c:
        creds = {"login": "watcher-a", "password": PASSWORD, "next": "/"}
        r = c.post("/login", data=creds, headers={"origin": "https://evil.example"}, follow_redirects=False)
        assert r.status_code == 403 and "mimamori_session" not in r.cookies
        assert "ログイン画面が古くなりました" in r.text
        # a token that does not match the cookie is refused too
        c.get("/login")
        r = c.post("/login", data={**creds, "csrf_token": "forged"}, follow_redirects=False)
        assert r.status_code == 403 and "mimamori_session" not in r.cookies
        assert c.get("/api/me").status_code == 401
        # the refused page carries a fresh token, with which the sign-in works
        token = r.text.split('name="csrf_token" value="')[1].split('"')[0]
        r = c.post("/login", data={**creds, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303 and "mimamori_session" in r.cookies
        # the JSON login (bearer tokens for API clients) is unchanged, and a cross-site "simple" form
        # post (text/plain) cannot reach it
        c.cookies.clear()
        assert c.post("/api/auth/login", json={"login": "watcher-a", "password": PASSWORD}).status_code == 200
        r = c.post("/api/auth/login", content='{"login": "watcher-a", "password": "' + PASSWORD + '"}',
                   headers={"content-type": "text/plain"})
        assert r.status_code == 422


def test_a_coordinator_decides_which_devices_we_may_blink(world) -> None:
    """Issue 13: a plug is never switched by us unless its area's coordinator allows it (it may power a
    heater or a fridge); a bulb can be excluded. Watchers and other areas' coordinators cannot.
    """
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind, room)"
                     " VALUES ('plug-h1', 'gw-h1', 'h1', 'plug', '台所')")
    with app_client(url, clock) as c:
        assert c.put("/api/devices/plug-h1/blink", json={"allowed": True}, headers=bearer(c, "watcher_a")).status_code == 403
        assert c.put("/api/devices/plug-h1/blink", json={"allowed": True}, headers=bearer(c, "coord_b")).status_code in (403, 404)
        assert c.put("/api/devices/plug-h1/blink", json={"allowed": "maybe"}, headers=bearer(c, "coord_a")).status_code == 422
        r = c.put("/api/devices/plug-h1/blink", json={"allowed": True}, headers=bearer(c, "coord_a"))
        assert r.status_code == 200 and r.json()["blinks"] is True
        assert c.put("/api/devices/bulb-h1/blink", json={"allowed": False}, headers=bearer(c, "coord_a")).json()["blinks"] is False
        # The household page says so and offers the switch back (a form with the session's CSRF token).
        csrf_token = cookie_login(c, "coord_a")
        page = c.get("/households/h1").text
        assert "/coord/devices/plug-h1/blink" in page and "/coord/devices/bulb-h1/blink" in page
        r = c.post("/coord/devices/bulb-h1/blink", data={"allowed": "default", "csrf_token": csrf_token}, follow_redirects=False)
        assert r.status_code == 303
    with psycopg.connect(url) as conn:
        got = dict(conn.execute("SELECT device_id, blink_allowed FROM devices WHERE household_id = 'h1'").fetchall())
    assert got == {"plug-h1": True, "bulb-h1": None}
