"""The contacts page (連絡先): a person adds and removes their e-mail addresses; the area's
coordinator does it for a resident; nobody else sees them. Real PostgreSQL, the app in-process,
and one check in Chromium on a phone."""

from __future__ import annotations

import psycopg
import pytest

from support.waiting import wait_for
from support.web import app_client, cookie_login, served


@pytest.mark.integration
def test_a_watcher_adds_and_removes_an_address(world, monkeypatch: pytest.MonkeyPatch) -> None:
    url, clock, _ = world
    monkeypatch.delenv("MIMAMORI_ALERTS_SMTP_URL", raising=False)
    with app_client(url, clock) as app:
        csrf = cookie_login(app, "watcher_a")
        page = app.get("/contacts")
        assert page.status_code == 200 and 'id="contacts-none"' in page.text and 'href="/contacts"' in page.text
        assert 'id="mail-not-configured"' in page.text and 'id="push-enable"' in page.text
        bad = app.post("/contacts/watcher_a/email", data={"csrf_token": csrf, "address": "tanaka@example"})
        assert bad.status_code == 422 and 'id="email-error"' in bad.text and 'value="tanaka@example"' in bad.text
        assert app.post("/contacts/watcher_a/email", data={"address": "x@example.jp"}).status_code == 403  # no CSRF token
        ok = app.post("/contacts/watcher_a/email", data={"csrf_token": csrf, "address": "Tanaka@Example.jp"},
                      follow_redirects=False)
        assert ok.status_code == 303
        page = app.get("/contacts")
        assert "Tanaka@example.jp" in page.text and 'id="contacts-none"' not in page.text
        with psycopg.connect(url) as conn:
            cid = conn.execute("SELECT channel_id FROM person_channels WHERE person_id = 'watcher_a' AND kind = 'email'"
                               " AND enabled").fetchone()[0]
        assert app.post(f"/contacts/watcher_a/{cid}/remove", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
        assert 'id="contacts-none"' in app.get("/contacts").text
        # nobody else's page: another watcher's, a resident's
        assert app.get("/contacts/watcher_b").status_code == 404
        assert app.get("/contacts/resident_1").status_code == 404
    monkeypatch.setenv("MIMAMORI_ALERTS_SMTP_URL", "mailtos://u:p@smtp.example.jp?from=m@example.jp")
    with app_client(url, clock) as app:
        cookie_login(app, "watcher_a")
        assert 'id="mail-not-configured"' not in app.get("/contacts").text


@pytest.mark.integration
def test_the_coordinator_registers_a_residents_address(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as app:
        csrf = cookie_login(app, "coord_a")
        household = app.get("/households/h1").text
        assert 'href="/contacts/resident_1"' in household and "連絡先を登録する" in household
        page = app.get("/contacts/resident_1")
        assert page.status_code == 200 and "name-resident_1さんの連絡先" in page.text
        assert 'id="push-enable"' not in page.text  # a phone subscribes itself, not on someone else's page
        r = app.post("/contacts/resident_1/email", data={"csrf_token": csrf, "address": "ichiro@example.jp"},
                     follow_redirects=False)
        assert r.status_code == 303
        assert "連絡先 1件" in app.get("/households/h1").text
    with app_client(url, clock) as other:
        cookie_login(other, "coord_b")  # another area
        assert other.get("/contacts/resident_1").status_code == 404
    with app_client(url, clock) as resident:
        cookie_login(resident, "resident_1")
        page = resident.get("/contacts")
        assert "ichiro@example.jp" in page.text and "まずご本人に" in page.text
    with psycopg.connect(url) as conn:
        log = conn.execute("SELECT actor, action FROM alert_admin_log WHERE subject = 'resident_1'").fetchall()
        assert ("coord_a", "channel_added") in log


@pytest.mark.browser
def test_the_contacts_page_on_a_phone(world) -> None:
    from test_app_browser import check_a11y, phone, shot, sign_in

    url, clock, _ = world
    with served(url, clock) as base, phone() as page:
        sign_in(page, base, "watcher_a")
        page.goto(f"{base}/contacts")  # type: ignore[attr-defined]
        check_a11y(page, "contacts")
        page.fill("#email-address", "tanaka@example.jp")  # type: ignore[attr-defined]
        page.click("#email-add")  # type: ignore[attr-defined]
        page.wait_for_selector("text=tanaka@example.jp")  # type: ignore[attr-defined]
        check_a11y(page, "contacts with an address")
        shot(page, "contacts")


@pytest.mark.integration
def test_quiet_hours_from_the_contacts_page(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as app:
        csrf = cookie_login(app, "watcher_a")
        assert app.post("/contacts/watcher_a/quiet", data={"csrf_token": csrf, "start": "22:00", "end": ""}).status_code == 422
        assert app.post("/contacts/watcher_a/quiet", data={"csrf_token": csrf, "start": "25:00", "end": "07:00"}).status_code == 422
        r = app.post("/contacts/watcher_a/quiet", data={"csrf_token": csrf, "start": "22:00", "end": "07:00"},
                     follow_redirects=False)
        assert r.status_code == 303
        page = app.get("/contacts").text
        assert 'value="22:00"' in page and 'value="07:00"' in page and 'id="quiet-clear"' in page
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT quiet_start::text, quiet_end::text FROM person_alert_rules"
                                " WHERE person_id = 'watcher_a'").fetchone() == ("22:00:00", "07:00:00")
        app.post("/contacts/watcher_a/quiet", data={"csrf_token": csrf, "clear": "1"})
        assert 'id="quiet-clear"' not in app.get("/contacts").text


@pytest.mark.integration
def test_a_test_message_reaches_the_address(world, smtp, monkeypatch: pytest.MonkeyPatch) -> None:
    url, clock, _ = world
    monkeypatch.setenv("MIMAMORI_ALERTS_SMTP_URL", f"mailto://127.0.0.1:{smtp.port}?from=alerts@city.example.jp&mode=insecure")
    with app_client(url, clock) as app:
        csrf = cookie_login(app, "watcher_a")
        app.post("/contacts/watcher_a/email", data={"csrf_token": csrf, "address": "tanaka@example.jp"})
        with psycopg.connect(url) as conn:
            cid = conn.execute("SELECT channel_id FROM person_channels WHERE person_id = 'watcher_a'").fetchone()[0]
        page = app.get("/contacts").text
        assert f'id="test-{cid}"' in page
        sent = app.post(f"/contacts/watcher_a/{cid}/test", data={"csrf_token": csrf})
        assert sent.status_code == 200 and "テストを送りました" in sent.text
        mail = wait_for(lambda: smtp.to("tanaka@example.jp"), what="the test mail")[0]
        assert mail.subject == "見守り: テスト送信"
        again = app.post(f"/contacts/watcher_a/{cid}/test", data={"csrf_token": csrf})
        assert again.status_code == 429 and len(smtp.to("tanaka@example.jp")) == 1  # once a minute
        clock.advance(61)
        monkeypatch.setenv("MIMAMORI_ALERTS_SMTP_URL", "mailto://127.0.0.1:9?from=a@b.jp&mode=insecure")  # nothing listens
        failed = app.post(f"/contacts/watcher_a/{cid}/test", data={"csrf_token": csrf})
        assert failed.status_code == 200 and "テストを送れませんでした" in failed.text
        assert app.post(f"/contacts/watcher_b/{cid}/test", data={"csrf_token": csrf}).status_code == 404
    with psycopg.connect(url) as conn:
        outcomes = [r[0] for r in conn.execute("SELECT data->>'ok' FROM alert_admin_log WHERE action = 'channel_tested'"
                                                " ORDER BY entry_id")]
    assert outcomes == ["true", "false"]
