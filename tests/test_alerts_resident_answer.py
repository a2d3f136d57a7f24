"""A resident check asks the resident first: a real PostgreSQL, a real SMTP server (the resident's
mail with their answer link), the alert worker in-process on a ManualClock, and the app's answer
page under uvicorn.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
import requests

from mimamori.alerts import engine, resident, service
from mimamori.alerts.models import Conflict, InvalidInput, NotFound
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.config import Settings
from mimamori.kernel.outbox import LinkSealer
from mimamori.kernel.signing import secret_key
from support.town import SmtpSink, Town, actions, notices, open_incident, seed_town
from support.waiting import wait_for
from support.web import served
from test_alerts_integration import Worker, wait_for_quiet, who

PUBLIC = "https://mimamori.example.jp"
#: the key the app and the worker use in these tests (the default data dir's)
SEALER = LinkSealer(secret_key(Settings()))
ASK_FIRST = [{"type": "resident_check", "minutes": 10}, {"type": "wait", "minutes": 15}, {"type": "notify", "tiers": [1]}]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def worker(pg_url: str, clock: ManualClock) -> Iterator[Worker]:
    w = Worker(pg_url, clock, settings=Settings(public_url=PUBLIC))
    yield w
    w.close()


def _resident(conn: psycopg.Connection, smtp: SmtpSink, town: Town, chain: list[dict] = ASK_FIRST) -> str:
    """The home's resident, reachable by e-mail, and the household's chain."""
    pid = f"res-{town.household_id}"
    conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES (%s, '山田 花子', 'resident', %s)",
                 (pid, town.household_id))
    conn.execute("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)",
                 (pid, smtp.url(f"{pid}@example.org")))
    service.set_chain(conn, who(conn, town.coordinator), town.household_id, chain, clock=ManualClock())
    return pid


def _link_in_mail(smtp: SmtpSink, person: str) -> str:
    mails = wait_for(lambda: smtp.to(f"{person}@example.org"), what="the resident's mail")
    m = re.search(re.escape(PUBLIC) + r"/r/([A-Za-z0-9_-]+)", mails[0].body)
    assert m, mails[0].body
    return m.group(1)


def _asked(conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock,
           chain: list[dict] = ASK_FIRST) -> tuple[Town, str, int, str]:
    """A home whose resident has been asked: (town, resident, incident id, the token of their link)."""
    town = seed_town(conn, smtp)
    person = _resident(conn, smtp, town, chain)
    iid = open_incident(conn, town.household_id, clock.now())
    return town, person, iid, _link_in_mail(smtp, person)


def _status(conn: psycopg.Connection, iid: int) -> tuple[str, str | None]:
    row = conn.execute("SELECT status, outcome FROM incidents WHERE incident_id = %s", (iid,)).fetchone()
    assert row is not None
    return row


@pytest.mark.integration
def test_fine_from_the_link_cancels_before_the_team_hears(conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock,
                                                          worker: Worker) -> None:
    town, person, iid, token = _asked(conn, smtp, clock)
    assert "resident_check" in notices(conn, person)  # in the app as well, with the same link
    data = conn.execute("SELECT data FROM notifications WHERE person_id = %s", (person,)).fetchone()[0]
    assert data["url"] == f"{PUBLIC}/me" and SEALER.open(data["sealed_link"]) == f"{PUBLIC}/r/{token}"
    # a push on the resident's phone opens the same link (not the team's alert page): sealed in the outbox
    payloads = [r[0] for r in conn.execute("SELECT payload FROM alert_deliveries WHERE person_id = %s", (person,))]
    assert payloads and {SEALER.open(p["sealed_link"]) for p in payloads} == {f"{PUBLIC}/r/{token}"}
    assert not any(token in str(p) for p in payloads)
    # the database keeps only a hash: the token itself is nowhere in the links table
    assert conn.execute("SELECT count(*) FROM resident_check_links WHERE token_hash = %s",
                        (engine.resident_token_hash(token),)).fetchone()[0] == 1
    clock.advance(3 * 60)
    result = resident.answer(conn, token, "fine", clock=clock)
    assert result["effect"] == "cancelled"
    assert _status(conn, iid) == ("cancelled", "resident_responded")
    clock.advance(3600)
    assert not wait_for_quiet(lambda: notices(conn, town.tier1[0]) or smtp.to(town.emails[town.tier1[0]]))
    steps = actions(conn, iid)
    assert steps.index("resident_asked") < steps.index("resident_answered") < steps.index("cancelled")
    actor = conn.execute("SELECT actor, channel, data->>'answer' FROM incident_timeline WHERE incident_id = %s"
                         " AND action = 'resident_answered'", (iid,)).fetchone()
    assert actor == (person, "link", "fine")
    # the resident's copy of their data has the answer and how they are reached (not the link, not a URL's token)
    from mimamori.app.people import Person
    from mimamori.app.privacy.service import export_household
    exported = export_household(conn, clock, Person(person, "山田 花子", "resident", household_id=town.household_id),
                                town.household_id)
    assert [(a["person_id"], a["answer"]) for a in exported["resident_check_answers"]] == [(person, "fine")]
    assert exported["resident_contacts"][0]["kind"] == "apprise" and exported["resident_contacts"][0]["address"] is None
    assert token not in str(exported)
    with pytest.raises(Conflict):  # single use
        resident.answer(conn, token, "help", clock=clock)
    with pytest.raises(NotFound):
        resident.answer(conn, token[:-2] + "xx", "fine", clock=clock)


@pytest.mark.integration
def test_away_sets_away_mode_until_the_end_of_the_day_they_come_back(conn: psycopg.Connection, smtp: SmtpSink,
                                                                     clock: ManualClock, worker: Worker) -> None:
    town, person, iid, token = _asked(conn, smtp, clock)
    with pytest.raises(InvalidInput):  # the past
        resident.answer(conn, token, "away", clock=clock, back_on="2020-01-01")
    with pytest.raises(InvalidInput):
        resident.answer(conn, token, "away", clock=clock, back_on="tomorrow")
    tokyo = ZoneInfo("Asia/Tokyo")
    back = (datetime.fromtimestamp(clock.now(), tokyo) + timedelta(days=2)).date()
    result = resident.answer(conn, token, "away", clock=clock, back_on=back.isoformat())
    end_of_day = datetime.combine(back + timedelta(days=1), datetime.min.time(), tokyo).timestamp()
    assert result["away_until"] == end_of_day
    assert _status(conn, iid) == ("cancelled", "away")
    row = conn.execute("SELECT source, set_by, extract(epoch FROM until) FROM away_periods WHERE household_id = %s",
                       (town.household_id,)).fetchone()
    assert row is not None and row[:2] == ("resident", person) and float(row[2]) == end_of_day
    # away mode holds a new alert for the same home back from everyone
    clock.advance(3600)
    iid2 = open_incident(conn, town.household_id, clock.now())
    wait_for(lambda: _status(conn, iid2) == ("cancelled", "away"), what="second alert cancelled by away mode")
    assert notices(conn, town.tier1[0]) == []


@pytest.mark.integration
def test_help_ends_the_check_at_once_and_the_whole_team_hears(conn: psycopg.Connection, smtp: SmtpSink,
                                                              clock: ManualClock, worker: Worker) -> None:
    chain = [{"type": "resident_check", "minutes": 10}, {"type": "notify", "tiers": [1]}, {"type": "wait", "minutes": 15},
             {"type": "notify", "tiers": [2]}]
    town, _person, iid, token = _asked(conn, smtp, clock, chain)
    clock.advance(60)
    assert resident.answer(conn, token, "help", clock=clock)["effect"] == "escalated"
    # one minute in, not ten: tier 1 gets the alert from the chain; everyone on the team hears "help" now
    wait_for(lambda: "alert" in notices(conn, town.tier1[0]), what="tier 1 alerted at once")
    assert "resident_answered_help" in notices(conn, town.tier1[0])
    assert notices(conn, town.tier2[0]) == ["resident_answered_help"]
    assert "resident_asked_for_help" in actions(conn, iid)
    assert _status(conn, iid) == ("open", None)
    # marked for the detector: a switch used later does not close it (tests/test_detector_service.py)
    assert conn.execute("SELECT evidence ? 'help_asked_at' FROM incidents WHERE incident_id = %s", (iid,)).fetchone() == (True,)
    mails = wait_for(lambda: [m for m in smtp.to(town.emails[town.tier2[0]]) if "助け" in m.subject], what="tier 2 mail")
    assert "山田 花子" in mails[0].body


@pytest.mark.integration
def test_help_still_reaches_the_team_after_the_alert_closed_and_the_link_expired(conn: psycopg.Connection, smtp: SmtpSink,
                                                                                  clock: ManualClock, worker: Worker) -> None:
    town, _person, iid, token = _asked(conn, smtp, clock)
    # the resident switched a light (the detector closes the alert), then a day and a half passes
    conn.execute("UPDATE incidents SET status = 'resolved', closed_at = now(), outcome = 'activity_resumed' WHERE incident_id = %s",
                 (iid,))
    clock.advance(36 * 3600)
    with pytest.raises(resident.LinkGone):
        resident.answer(conn, token, "fine", clock=clock)
    assert resident.answer(conn, token, "help", clock=clock)["effect"] == "reopened"
    assert notices(conn, town.tier1[0])[-1] == "resident_answered_help"
    assert notices(conn, town.tier2[0])[-1] == "resident_answered_help"
    # the alert is open again for the team to claim, and its chain runs once more without asking the resident
    assert _status(conn, iid) == ("open", None) and "reopened_for_help" in actions(conn, iid)
    # round 1: the resident's question is skipped, the chain's 15-minute wait begins (then the clock moves)
    def reopened_and_waiting() -> bool:
        row = conn.execute("SELECT (state->>'round')::int, state->>'wait_until' FROM alert_escalations WHERE incident_id = %s",
                           (iid,)).fetchone()
        return row[0] == 1 and row[1] is not None

    wait_for(reopened_and_waiting, what="the reopened chain waiting")
    clock.advance(15 * 60)
    wait_for(lambda: notices(conn, town.tier1[0])[-1] == "alert", what="the chain's alert to tier 1 again")
    assert conn.execute("SELECT count(*) FROM resident_check_links WHERE incident_id = %s", (iid,)).fetchone() == (1,)


@pytest.mark.integration
def test_the_answer_page(conn: psycopg.Connection, pg_url: str, smtp: SmtpSink, clock: ManualClock, worker: Worker) -> None:
    town, _person, iid, token = _asked(conn, smtp, clock)
    with served(pg_url, clock) as base, requests.Session() as phone:
        page = phone.get(f"{base}/r/{token}", timeout=30)
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
        assert all(f'id="{b}"' in page.text for b in ("btn-fine", "btn-away", "btn-help", "back-on"))
        assert town.household_id.replace("h-", "山田 ") in page.text  # the household's name, nothing else about it
        bad = phone.post(f"{base}/r/{token}", data={"answer": "away", "back_on": "1999-01-01"}, timeout=30)
        assert bad.status_code == 422 and 'id="answer-error"' in bad.text and 'id="btn-away"' in bad.text  # the form again
        assert phone.post(f"{base}/r/{token}", data={"answer": "maybe"}, timeout=30).status_code == 422
        done = phone.post(f"{base}/r/{token}", data={"answer": "fine"}, timeout=30)
        assert done.status_code == 200 and 'data-answer="fine"' in done.text
        assert phone.get(f"{base}/r/{token}", timeout=30).status_code == 409
        assert phone.get(f"{base}/r/not-a-token", timeout=30).status_code == 404
        assert phone.post(f"{base}/r/not-a-token", data={"answer": "help"}, timeout=30).status_code == 404
    assert _status(conn, iid) == ("cancelled", "resident_responded")


@pytest.mark.browser
def test_the_answer_page_on_a_phone(conn: psycopg.Connection, pg_url: str, smtp: SmtpSink, clock: ManualClock,
                                    worker: Worker) -> None:
    from test_app_browser import check_a11y, phone, shot

    _town, _person, iid, token = _asked(conn, smtp, clock)
    with served(pg_url, clock) as base, phone() as page:
        page.goto(f"{base}/r/{token}")  # type: ignore[attr-defined]
        page.wait_for_selector("#btn-help")  # type: ignore[attr-defined]
        check_a11y(page, "resident answer page")
        # three big targets, each the width of the screen
        for button in ("#btn-fine", "#btn-away", "#btn-help"):
            box = page.locator(button).bounding_box()  # type: ignore[attr-defined]
            assert box["height"] >= 56 and box["width"] >= 300, (button, box)
        shot(page, "resident_answer")
        back_on = page.locator("#back-on")  # type: ignore[attr-defined]
        assert back_on.input_value() > back_on.get_attribute("min")  # offered: tomorrow, after today
        page.click("#btn-away")  # type: ignore[attr-defined]
        page.wait_for_selector("#answer-done")  # type: ignore[attr-defined]
        check_a11y(page, "resident answer done")
        shot(page, "resident_answer_done")
    assert _status(conn, iid) == ("cancelled", "away")


@pytest.mark.integration
def test_asked_and_answers_are_counted(conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock, worker: Worker) -> None:
    from mimamori.alerts import metrics

    asked = metrics.RESIDENTS_ASKED._value.get()
    fine = metrics.RESIDENT_ANSWERS.labels("fine")._value.get()
    _town, _person, _iid, token = _asked(conn, smtp, clock)
    resident.answer(conn, token, "fine", clock=clock)
    assert metrics.RESIDENTS_ASKED._value.get() == asked + 1
    assert metrics.RESIDENT_ANSWERS.labels("fine")._value.get() == fine + 1


@pytest.mark.integration
def test_without_a_chain_of_its_own_a_home_whose_resident_has_a_channel_asks_them_first(
        conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock, worker: Worker) -> None:
    town = seed_town(conn, smtp)
    person = _resident(conn, smtp, town)
    conn.execute("DELETE FROM escalation_chains WHERE household_id = %s", (town.household_id,))
    assert service.get_chain(conn, who(conn, town.coordinator), town.household_id) == (
        [dict(s) for s in service.policy.RESIDENT_FIRST_CHAIN], "default")
    iid = open_incident(conn, town.household_id, clock.now())
    _link_in_mail(smtp, person)
    assert not wait_for_quiet(lambda: notices(conn, town.tier1[0]))  # the team waits for the resident
    clock.advance(10 * 60)
    wait_for(lambda: notices(conn, town.tier1[0]) == ["alert"], what="tier 1 once the resident did not answer")
    assert "resident_did_not_respond" in actions(conn, iid)
    # a home whose resident has no channel of their own keeps the plain default: the team at once
    other = seed_town(conn, smtp)
    conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES (%s, '佐藤', 'resident', %s)",
                 (f"res-{other.household_id}", other.household_id))
    open_incident(conn, other.household_id, clock.now())
    wait_for(lambda: notices(conn, other.tier1[0]) == ["alert"], what="tier 1 of the other home at once")


@pytest.mark.integration
def test_a_signed_in_resident_sees_the_question_on_their_page(world: tuple[str, ManualClock, dict[str, int]]) -> None:
    from support.web import app_client, cookie_login

    url, clock, incidents = world
    with psycopg.connect(url, autocommit=True) as c:
        # h1's resident has a channel of their own (a push subscription), so h1's default chain asks them first
        c.execute("INSERT INTO person_channels (person_id, kind, target) VALUES ('resident_1', 'webpush', '{}')")
        assert engine.adopt_one(c, clock, "t", app_url=PUBLIC, sealer=SEALER) is not None
        assert engine.adopt_one(c, clock, "t", app_url=PUBLIC, sealer=SEALER) is not None
        data = c.execute("SELECT data FROM notifications WHERE person_id = 'resident_1'").fetchone()[0]
        assert data["url"] == f"{PUBLIC}/me"  # in the app the question points to the resident's own page
        link = SEALER.open(data["sealed_link"])  # which opens the sealed answer link (never stored in clear)
        assert link.startswith(f"{PUBLIC}/r/")
        assert "resident_asked" in actions(c, incidents["h1"]) and "resident_asked" not in actions(c, incidents["h3"])
    with app_client(url, clock) as app:
        csrf = cookie_login(app, "resident_1")
        me = app.get("/me")
        assert me.status_code == 200 and f'href="{link}"' in me.text and 'id="rc-answer-1"' in me.text
        # answered: the question is gone from the page once read (the link is used up either way)
        token = link.rsplit("/", 1)[1]
        assert app.post(f"/r/{token}", data={"answer": "fine"}).status_code == 200
        assert app.post("/notifications/read", data={"csrf_token": csrf}).status_code in (200, 303)
        assert 'id="rc-answer-1"' not in app.get("/me").text


@pytest.mark.integration
def test_the_answer_page_speaks_the_residents_language(conn: psycopg.Connection, pg_url: str, smtp: SmtpSink,
                                                       clock: ManualClock, worker: Worker) -> None:
    _town, person, _iid, token = _asked(conn, smtp, clock)
    conn.execute("UPDATE people SET locale = 'en' WHERE person_id = %s", (person,))
    with served(pg_url, clock) as base, requests.Session() as phone:
        assert "Please help" in phone.get(f"{base}/r/{token}", timeout=30).text
        phone.cookies.set("mimamori_lang", "ja")  # the language switch on the page wins
        assert "大丈夫です" in phone.get(f"{base}/r/{token}", timeout=30).text
        phone.cookies.clear()
        assert "Your watchers will know you are fine" in phone.post(f"{base}/r/{token}", data={"answer": "fine"}, timeout=30).text


@pytest.mark.integration
def test_a_question_about_an_alert_that_closed_meanwhile_is_not_sent(conn: psycopg.Connection, smtp: SmtpSink,
                                                                     clock: ManualClock) -> None:
    from mimamori.alerts import flows
    from mimamori.alerts.channels import AppriseSender, WebPushSender

    town = seed_town(conn, smtp)
    person = _resident(conn, smtp, town)
    iid = open_incident(conn, town.household_id, clock.now())
    assert engine.adopt_one(conn, clock, "t", app_url=PUBLIC, sealer=SEALER) == iid  # the question is queued for the resident
    # the resident switches a light before the mail goes out: the detector closes the alert
    conn.execute("UPDATE incidents SET status = 'resolved', closed_at = now(), outcome = 'activity_resumed'"
                 " WHERE incident_id = %s", (iid,))
    senders = flows.Senders(AppriseSender(), WebPushSender(None, "mailto:x@y.jp"), sealer=SEALER)
    while flows.deliver_one(conn, clock, senders, "t"):
        pass
    assert conn.execute("SELECT status FROM alert_deliveries WHERE person_id = %s AND channel <> 'inapp'",
                        (person,)).fetchone() == ("skipped",)
    assert not smtp.to(f"{person}@example.org")
