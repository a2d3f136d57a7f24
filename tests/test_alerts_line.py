"""LINE, both ways: the postback codec (pure) and the real client against a local LINE Platform (issue 16)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.webhooks import MessageEvent, PostbackEvent

from mimamori.alerts.line import (
    LineClient,
    LineError,
    LineSettings,
    Postback,
    PostbackError,
    alert_message,
    parse_postback,
    parse_webhook,
    resident_check_message,
    retry_key,
    safety_check_message,
    text_message,
)
from support.line import LinePlatform

ALERT = "佐藤さんのお宅で、いつもより長く動きがありません（最後の動き: 朝7時10分）。"


# -- pure ------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_every_button_carries_data_that_reads_back_to_its_action() -> None:
    messages = [alert_message(ALERT, 42), resident_check_message(ALERT, 42), safety_check_message("安否確認です", 7, "h-1")]
    read = [[parse_postback(a.data) for a in m.template.actions] for m in messages]
    assert [[p.action for p in row] for row in read] == [
        ["claim", "fine", "help"], ["resident_fine", "resident_help"], ["safety_safe", "safety_help"]]
    assert read[0][0].int_id("incident") == 42 and read[2][0].ids == {"check": "7", "household": "h-1"}
    assert [a.label for a in messages[0].template.actions] == ["私が行きます", "無事でした", "助けが必要"]


@pytest.mark.unit
@pytest.mark.parametrize(("data", "reason"), [
    ("do=claim&incident=1", "version"), ("v=1&do=delete_all&incident=1", "unknown action"),
    ("v=1&do=claim", "names incident"), ("v=1&do=claim&incident=1&household=h", "names incident"),
    ("v=1&do=claim&incident=1%3BDROP", "is a number"), ("v=1&do=claim&incident=" + "9" * 400, "too long"),
])
def test_postback_data_we_did_not_write_is_refused(data: str, reason: str) -> None:
    with pytest.raises(PostbackError, match=reason):
        parse_postback(data)


@pytest.mark.unit
def test_long_words_are_clipped_to_lines_limits() -> None:
    m = alert_message("長" * 500, 1)
    assert len(m.template.text) == 160 and m.template.text.endswith("…") and len(m.alt_text) == 400
    with pytest.raises(PostbackError):
        Postback("safety_safe", {"check": "1", "household": "h" * 300}).encode()


@pytest.mark.unit
def test_one_attempt_one_retry_key() -> None:
    assert retry_key(17) == retry_key("17") != retry_key(18)


# -- against the local LINE Platform -------------------------------------------------------------------------


@pytest.fixture
def platform() -> Iterator[LinePlatform]:
    p = LinePlatform(users={"U-sato": "佐藤花子"}).start()
    yield p
    p.stop()


@pytest.fixture
def client(platform: LinePlatform) -> Iterator[LineClient]:
    with LineClient(LineSettings(platform.token, platform.secret, api_base=platform.url)) as c:
        yield c


@pytest.mark.integration
def test_a_push_arrives_with_its_buttons(platform: LinePlatform, client: LineClient) -> None:
    assert client.push("U-sato", [alert_message(ALERT, 42)], attempt_id=1) == "sent"
    [pushed] = platform.pushed
    assert pushed.to == "U-sato" and pushed.retry_key == retry_key(1)
    template = pushed.messages[0]["template"]
    assert [a["label"] for a in template["actions"]] == ["私が行きます", "無事でした", "助けが必要"]
    assert parse_postback(template["actions"][0]["data"]) == Postback("claim", {"incident": "42"})


@pytest.mark.integration
def test_a_retry_after_an_unclear_failure_is_not_a_second_message(platform: LinePlatform, client: LineClient) -> None:
    platform.fail_next_push_after_accepting = 1  # LINE took it, then the answer was lost (500)
    with pytest.raises(LineError) as failed:
        client.push("U-sato", [text_message("テスト")], attempt_id=7)
    assert failed.value.retryable
    assert client.push("U-sato", [text_message("テスト")], attempt_id=7) == "already_sent"
    assert len(platform.pushed) == 1


@pytest.mark.integration
def test_a_wrong_token_is_a_failure_not_worth_retrying(platform: LinePlatform) -> None:
    with LineClient(LineSettings("revoked", platform.secret, api_base=platform.url)) as bad, pytest.raises(LineError) as failed:
        bad.push("U-sato", [text_message("テスト")], attempt_id=1)
    assert failed.value.status == 401 and not failed.value.retryable
    assert platform.pushed == []


@pytest.mark.integration
def test_the_monthly_allowance_is_read_and_a_push_over_it_is_refused(platform: LinePlatform, client: LineClient) -> None:
    platform.monthly_limit = 2
    for i in range(2):
        client.push("U-sato", [text_message(f"{i}")], attempt_id=i)
    assert client.quota() == (2, 2)
    with pytest.raises(LineError) as failed:
        client.push("U-sato", [text_message("3")], attempt_id=3)
    assert failed.value.status == 429


@pytest.mark.integration
def test_profile_and_a_reply_token_good_once(platform: LinePlatform, client: LineClient) -> None:
    assert client.display_name("U-sato") == "佐藤花子" and client.display_name("U-nobody") is None
    event = platform.event("U-sato", "message", text="123456")
    client.reply(event["replyToken"], [text_message("連携しました")])
    with pytest.raises(LineError, match="Invalid reply token"):
        client.reply(event["replyToken"], [text_message("二度目")])
    assert [m[0]["text"] for _, m in platform.replied] == ["連携しました"]


@pytest.mark.integration
def test_the_webhook_signature_is_checked(platform: LinePlatform) -> None:
    events = [platform.event("U-sato", "postback", data="v=1&do=claim&incident=42", redelivery=True),
              platform.event("U-sato", "message", text="123456")]
    body, signature = platform.signed(events)
    postback, message = parse_webhook(body.decode(), signature, platform.secret)
    assert isinstance(postback, PostbackEvent) and isinstance(message, MessageEvent)
    assert postback.source.user_id == "U-sato" and postback.delivery_context.is_redelivery
    assert postback.webhook_event_id == events[0]["webhookEventId"]
    forged_body, forged_signature = platform.signed(events, secret="someone-else")
    for sig in (forged_signature, "", signature + "x"):
        with pytest.raises(InvalidSignatureError):
            parse_webhook(forged_body.decode() if sig == forged_signature else body.decode() + " ", sig, platform.secret)


# -- accounts, redeliveries and the allowance in the database ------------------------------------------------

NOW = 1_780_000_000.0


def _person(conn, person_id: str = "p-sato") -> str:
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES (%s, '佐藤', 'watcher')", (person_id,))
    return person_id


@pytest.mark.integration
def test_a_code_from_the_app_links_the_line_account_once(conn) -> None:
    from mimamori.alerts import line_accounts as acc

    code = acc.issue_link_code(conn, _person(conn), NOW)
    assert acc.redeem_link_code(conn, "U-sato", f" {code} ", NOW + 60) == acc.LinkResult("linked", "p-sato")
    assert acc.person_for(conn, "U-sato") == "p-sato" and acc.line_user_for(conn, "p-sato") == "U-sato"
    assert acc.redeem_link_code(conn, "U-other", code, NOW + 61).outcome == "wrong_code"  # used up
    assert acc.redeem_link_code(conn, "U-sato", "こんにちは", NOW).outcome == "not_a_code"
    # only the hash of a code is stored
    assert conn.execute("SELECT count(*) FROM line_link_codes WHERE code_hash = %s", (code.encode(),)).fetchone()[0] == 0


@pytest.mark.integration
def test_an_expired_or_replaced_code_does_not_link(conn) -> None:
    from mimamori.alerts import line_accounts as acc

    first = acc.issue_link_code(conn, _person(conn), NOW)
    second = acc.issue_link_code(conn, "p-sato", NOW + 1)
    assert acc.redeem_link_code(conn, "U-sato", first, NOW + 2).outcome == "wrong_code"
    assert acc.redeem_link_code(conn, "U-sato", second, NOW + 11 * 60).outcome == "wrong_code"
    assert acc.person_for(conn, "U-sato") is None


@pytest.mark.integration
def test_guessing_codes_is_throttled(conn) -> None:
    from mimamori.alerts import line_accounts as acc

    code = acc.issue_link_code(conn, _person(conn), NOW)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    outcomes = [acc.redeem_link_code(conn, "U-guess", wrong, NOW + i).outcome for i in range(6)]
    assert outcomes == ["wrong_code"] * 5 + ["throttled"]
    assert acc.redeem_link_code(conn, "U-guess", code, NOW + 10).outcome == "throttled"  # even the right one, for an hour
    assert acc.redeem_link_code(conn, "U-guess", code, NOW + 3700).outcome == "wrong_code"  # expired by then


@pytest.mark.integration
def test_a_redelivered_event_is_acted_on_once(conn) -> None:
    from mimamori.alerts import line_accounts as acc

    assert acc.first_delivery(conn, "01HZEVENT", NOW)
    assert not acc.first_delivery(conn, "01HZEVENT", NOW + 5)
    assert acc.first_delivery(conn, "01HZEVENT", NOW + 40 * 86400)  # a month later the record is swept


@pytest.mark.integration
def test_the_allowance_warns_once_a_month(conn) -> None:
    from mimamori.alerts import line_accounts as acc

    warnings = [acc.count_push(conn, NOW, allowance=10).warn_now for _ in range(10)]
    assert warnings == [False] * 7 + [True, False, False]
    assert acc.count_push(conn, NOW, allowance=10).left == 0
    assert acc.count_push(conn, NOW + 40 * 86400, allowance=10).used == 1  # a new month


# -- the webhook in the app: link, act with the person's rights, once ----------------------------------------


@pytest.fixture
def line_app(world, platform: LinePlatform):
    from fastapi.testclient import TestClient

    from mimamori.app.main import create_app
    from mimamori.kernel.config import Settings
    from support.web import bearer

    url, clock, ids = world
    settings = Settings(line_channel_secret=platform.secret, line_access_token=platform.token, line_api_base=platform.url)
    with TestClient(create_app(settings, database_url=url, clock=clock), client=("127.0.0.1", 50000)) as client:

        def post(events: list[dict], *, forged: bool = False) -> int:
            body, signature = platform.signed(events, secret="someone-else" if forged else None)
            return client.post("/line/webhook", content=body, headers={"x-line-signature": signature,
                                                                        "content-type": "application/json"}).status_code

        def link(person_id: str, line_user: str) -> None:
            code = client.post("/api/me/line/code", headers=bearer(client, person_id)).json()["code"]
            assert post([platform.event(line_user, "message", text=code)]) == 200

        yield client, post, link, url, ids


def _timeline(url: str, incident_id: int) -> list[tuple[str, str, str]]:
    import psycopg

    with psycopg.connect(url) as c:
        return c.execute("SELECT action, channel, coalesce(actor, '') FROM incident_timeline WHERE incident_id = %s"
                         " ORDER BY at, entry_id", (incident_id,)).fetchall()


@pytest.mark.integration
def test_a_watcher_claims_from_line_once_and_a_stranger_cannot(line_app, platform: LinePlatform) -> None:
    _client, post, link, url, ids = line_app
    link("watcher_a", "U-watcher-a")
    assert platform.replied[-1][1][0]["text"].startswith("連携しました")
    press = platform.event("U-watcher-a", "postback", data=f"v=1&do=claim&incident={ids['h1']}")
    assert post([press]) == 200
    answered = len(platform.replied)
    again = platform.event("U-watcher-a", "postback", data=press["postback"]["data"], event_id=press["webhookEventId"],
                           redelivery=True)  # LINE redelivers it (with a reply token that would work)
    assert post([again]) == 200
    assert len(platform.replied) == answered  # not acted on again: not even refused as "already claimed"
    claims = [t for t in _timeline(url, ids["h1"]) if t[0] == "claimed"]
    assert claims == [("claimed", "line", "watcher_a")]
    assert [m[0]["text"] for _, m in platform.replied].count("ありがとうございます。向かうことをチームに伝えました。") == 1

    link("watcher_b", "U-watcher-b")  # on another household's team
    assert post([platform.event("U-watcher-b", "postback", data=f"v=1&do=fine&incident={ids['h1']}")]) == 200
    assert platform.replied[-1][1][0]["text"].startswith("この操作はできませんでした")
    assert [t for t in _timeline(url, ids["h1"]) if t[0] == "resolved"] == []


@pytest.mark.integration
def test_a_forged_webhook_and_an_unlinked_account_do_nothing(line_app, platform: LinePlatform) -> None:
    _client, post, _link, url, ids = line_app
    before = _timeline(url, ids["h1"])
    assert post([platform.event("U-watcher-a", "postback", data=f"v=1&do=claim&incident={ids['h1']}")], forged=True) == 400
    assert post([platform.event("U-nobody", "postback", data=f"v=1&do=claim&incident={ids['h1']}")]) == 200
    assert platform.replied[-1][1][0]["text"].startswith("このLINEアカウントはまだ連携されていません")
    assert _timeline(url, ids["h1"]) == before


@pytest.mark.integration
def test_the_resident_answers_their_check_from_line(line_app, platform: LinePlatform) -> None:
    import os
    from datetime import timedelta

    import psycopg

    from mimamori.alerts.engine import resident_token_hash

    _client, post, link, url, ids = line_app
    with psycopg.connect(url, autocommit=True) as c:  # the check the chain sent to the resident
        now = c.execute("SELECT opened_at FROM incidents WHERE incident_id = %s", (ids["h1"],)).fetchone()[0]
        c.execute("INSERT INTO resident_check_links (token_hash, incident_id, household_id, person_id, step_key, created_at,"
                  " expires_at) VALUES (%s, %s, 'h1', 'resident_1', 'ask', %s, %s)",
                  (resident_token_hash(os.urandom(16).hex()), ids["h1"], now, now + timedelta(hours=1)))
    link("resident_1", "U-resident-1")
    assert post([platform.event("U-resident-1", "postback", data=f"v=1&do=resident_fine&incident={ids['h1']}")]) == 200
    assert ("resident_answered", "line", "resident_1") in _timeline(url, ids["h1"])
    with psycopg.connect(url) as c:
        status, outcome = c.execute("SELECT status, outcome FROM incidents WHERE incident_id = %s", (ids["h1"],)).fetchone()
    assert (status, outcome) == ("cancelled", "resident_responded"), (status, outcome)


@pytest.mark.e2e
def test_an_alert_reaches_line_with_buttons_and_the_button_claims_it(line_app, platform: LinePlatform) -> None:
    """The whole path: the alert engine queues the alert on watcher_a's linked LINE account, the outbox sends
    it through the real client, and the button in the message LINE received claims the alert."""
    import psycopg

    from mimamori.alerts import flows
    from mimamori.alerts import service as alerts_service
    from mimamori.alerts.channels import AppriseSender, WebPushSender
    from mimamori.alerts.line import LineSender, LineSettings
    from mimamori.kernel.clock import ManualClock

    _client, post, link, url, ids = line_app
    link("watcher_a", "U-watcher-a")
    clock = ManualClock(1_767_225_600.0 + 20 * 86400 + 3 * 3600)  # the world's time
    senders = flows.Senders(AppriseSender(), WebPushSender(None, "mailto:x@y.jp"),
                            line=LineSender(LineSettings(platform.token, platform.secret, api_base=platform.url),
                                            database_url=url, clock=clock))
    with psycopg.connect(url, autocommit=True) as conn:
        while alerts_service.adopt_one(conn, clock, "test-worker") is not None:
            pass
        queued = conn.execute("SELECT count(*) FROM outbox WHERE channel LIKE 'line:%%' AND incident_id = %s",
                              (ids["h1"],)).fetchone()[0]
        assert queued == 1
        while flows.deliver_one(conn, clock, senders, "test-worker"):
            pass
        assert conn.execute("SELECT status FROM outbox WHERE channel LIKE 'line:%%'").fetchone() == ("sent",)
        assert conn.execute("SELECT pushes FROM line_push_usage").fetchone() == (1,)  # counted against the allowance
    [pushed] = [p for p in platform.pushed if p.to == "U-watcher-a"]
    buttons = next(m for m in pushed.messages if m["type"] == "template")
    claim = next(a for a in buttons["template"]["actions"] if a["label"] == "私が行きます")
    assert post([platform.event("U-watcher-a", "postback", data=claim["data"])]) == 200
    assert [t for t in _timeline(url, ids["h1"]) if t[0] == "claimed"] == [("claimed", "line", "watcher_a")]
