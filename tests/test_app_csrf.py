"""CSRF: tokens signed with the service secret and bound to the session (or, before signing in, to a
pre-session cookie on the sign-in and invitation forms). Missing, forged, expired and other-session
tokens are refused with 403 and a reason.
"""

from __future__ import annotations

import pytest
from itsdangerous import URLSafeTimedSerializer

from mimamori.app.auth import csrf
from mimamori.app.auth.csrf import CsrfFailed
from mimamori.kernel.config import Settings
from mimamori.kernel.signing import signer
from support.web import PASSWORD, app_client, bearer, cookie_login, login_name

pytestmark = pytest.mark.integration


def _field(html: str, name: str = "csrf_token") -> str:
    return html.split(f'name="{name}" value="')[1].split('"', maxsplit=1)[0]


def test_tokens_are_signed_and_bound(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = signer(Settings(data_dir=tmp_path), "csrf")
    token = csrf.issue(s, csrf.SESSION, "session-a")
    csrf.verify(s, csrf.SESSION, "session-a", token, max_age=60)
    cases = {
        "missing": (csrf.SESSION, "session-a", None, 60),
        "forged": (csrf.SESSION, "session-a", token[:-2] + ("AA" if not token.endswith("AA") else "BB"), 60),
        "other_session": (csrf.SESSION, "session-b", token, 60),
        "expired": (csrf.SESSION, "session-a", token, -1),
    }
    for reason, (kind, secret, sent, max_age) in cases.items():
        with pytest.raises(CsrfFailed) as err:
            csrf.verify(s, kind, secret, sent, max_age=max_age)
        assert err.value.detail["reason"] == reason
    # a pre-session token is no session token, even for the same secret
    with pytest.raises(CsrfFailed, match="other_session"):
        csrf.verify(s, csrf.SESSION, "x" * 30, csrf.issue(s, csrf.PRE_SESSION, "x" * 30), max_age=60)
    # signed with another key (another deployment, or a guess): forged
    other = signer(Settings(data_dir=tmp_path, secret_key="someone else's"), "csrf")
    with pytest.raises(CsrfFailed, match="forged"):
        csrf.verify(s, csrf.SESSION, "session-a", csrf.issue(other, csrf.SESSION, "session-a"), max_age=60)
    # the same key for another purpose: forged too
    plain = URLSafeTimedSerializer("k", salt="mimamori/safety-answer")
    with pytest.raises(CsrfFailed, match="forged"):
        csrf.verify(s, csrf.SESSION, "session-a", plain.dumps("x"), max_age=60)


def test_cookie_session_refuses_missing_forged_and_other_session_tokens(world) -> None:
    url, clock, ids = world
    with app_client(url, clock) as a, app_client(url, clock) as b:
        token_a = cookie_login(a, "watcher_a")
        token_b = cookie_login(b, "watcher_a")  # the same person, another session
        assert token_a != token_b
        path = f"/api/alerts/{ids['h1']}/comment"
        body = {"text": "向かいます"}
        for sent, reason in ((None, "missing"), ("forged." + token_a[7:], "forged"), (token_b, "other_session")):
            headers = {"x-csrf-token": sent} if sent else {}
            r = a.post(path, json=body, headers=headers)
            assert r.status_code == 403 and r.json() == {"detail": f"CSRF token refused: {reason}",
                                                         "code": "csrf_failed", "reason": reason}, r.text
        # the page form: 403 with the reason in words
        r = a.post(f"/alerts/{ids['h1']}/claim", data={"csrf_token": token_b}, follow_redirects=False)
        assert r.status_code == 403 and "別の画面の情報です" in r.text
        # each session's own token works
        assert a.post(path, json=body, headers={"x-csrf-token": token_a}).status_code == 201
        assert b.post(path, json=body, headers={"x-csrf-token": token_b}).status_code == 201
        # bearer clients need none
        assert a.post(path, json=body, headers=bearer(a, "watcher_a")).status_code == 201


def test_sign_in_form_needs_its_pre_session_token(world) -> None:
    url, clock, _ = world
    creds = {"login": login_name("watcher_a"), "password": PASSWORD, "next": "/"}
    with app_client(url, clock) as c, app_client(url, clock) as other:
        form_other = _field(other.get("/login").text)
        form = c.get("/login")
        assert csrf.PRE_SESSION_COOKIE in form.cookies
        token = _field(form.text)
        for sent, reason_text in ((None, "確認用の情報がありません"), ("x" + token, "確認用の情報が正しくありません"),
                                  (form_other, "別の画面の情報です")):
            data = {**creds, "csrf_token": sent} if sent else creds
            r = c.post("/login", data=data, follow_redirects=False)
            assert r.status_code == 403 and reason_text in r.text and "mimamori_session" not in r.cookies
        # without the pre-session cookie (a cross-site post from a fresh browser): missing
        stranger = {**creds, "csrf_token": token}
        other.cookies.clear()
        r = other.post("/login", data=stranger, follow_redirects=False)
        assert r.status_code == 403 and "確認用の情報がありません" in r.text
        # the cookie survives refusals, so the first form still works
        r = c.post("/login", data={**creds, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303 and "mimamori_session" in r.cookies


def test_invitation_form_needs_its_pre_session_token(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        r = c.post("/api/invitations", headers=bearer(c, "coord_a"),
                   json={"role": "watcher", "display_name": "近所の人", "household_id": "h1"})
        invite = r.json()["token"]
    with app_client(url, clock) as browser:
        form = {"login": "neighbour", "password": "long enough 1", "locale": "ja"}
        r = browser.post(f"/invite/{invite}", data=form, follow_redirects=False)
        assert r.status_code == 403 and "確認用の情報がありません" in r.text
        token = _field(browser.get(f"/invite/{invite}").text)
        r = browser.post(f"/invite/{invite}", data={**form, "csrf_token": "forged"}, follow_redirects=False)
        assert r.status_code == 403 and "確認用の情報が正しくありません" in r.text
        r = browser.post(f"/invite/{invite}", data={**form, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303 and "mimamori_session" in r.cookies
        assert browser.get("/api/me").json()["display_name"] == "近所の人"
