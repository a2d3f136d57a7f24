"""The daily note's words for the kinds of home a family meets (pure core, issue 16)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from mimamori.alerts.daily_note import SLOTS_PER_DAY, clock_words, clock_words_at, daily_note, weekly_note
from support.town import SmtpSink
from support.waiting import wait_for

TODAY = date(2026, 7, 20)


def day(active: dict[int, int]) -> list[int]:
    counts = [0] * SLOTS_PER_DAY
    for slot, n in active.items():
        counts[slot] = n
    return counts


def routine(first_slot: int = 28, per_slot: int = 3, last_slot: int = 88) -> list[int]:
    """Up at 7:00 (slot 28), a few events every quarter hour until 22:00."""
    return day(dict.fromkeys(range(first_slot, last_slot), per_slot))


def history(n_days: int, make=routine) -> dict[date, list[int]]:
    return {TODAY - timedelta(days=i): make() for i in range(1, n_days + 1)}


@pytest.mark.parametrize(("hour", "minute", "words"), [
    (7, 10, "朝7時10分"), (12, 0, "昼12時"), (13, 5, "午後1時5分"), (20, 0, "夜8時"), (2, 30, "深夜2時30分"),
])
@pytest.mark.unit
def test_times_are_said_as_people_say_them(hour: int, minute: int, words: str) -> None:
    assert clock_words_at(hour, minute) == words


@pytest.mark.unit
def test_a_slot_is_said_by_its_start() -> None:
    assert clock_words(29) == "朝7時15分"


@pytest.mark.unit
def test_a_usual_morning() -> None:
    days = {**history(14), TODAY: routine()}
    note = daily_note("佐藤", TODAY, now_slot=48, days=days, first_activity=(7, 10))
    assert (note.kind, note.text) == ("usual", "佐藤さん: いつも通りです（朝7時10分から動きがあります）")


@pytest.mark.unit
def test_a_quieter_day_says_so_without_alarm() -> None:
    days = {**history(14), TODAY: day(dict.fromkeys(range(30, 48, 4), 1))}
    note = daily_note("鈴木", TODAY, now_slot=48, days=days)
    assert note.kind == "quieter"
    assert note.text == "鈴木さん: いつもより静かです（朝7時30分から動きがあります）"


@pytest.mark.unit
def test_no_movement_yet_today() -> None:
    note = daily_note("高橋", TODAY, now_slot=40, days={**history(14), TODAY: day({})})
    assert (note.kind, note.text) == ("none_yet", "高橋さん: 今日はまだ動きがありません")


@pytest.mark.unit
def test_a_trip_to_the_toilet_at_night_is_not_the_start_of_the_day() -> None:
    # measured on real homes (mimamori/bench/notes.py, UCI ADL): the day's first event is often at 1 a.m.
    today = routine()
    today[5] = 1  # 1:15
    note = daily_note("佐藤", TODAY, now_slot=48, days={**history(14), TODAY: today})
    assert note.text == "佐藤さん: いつも通りです（朝7時から動きがあります）"


@pytest.mark.unit
def test_a_day_that_stopped_says_so_before_it_is_quieter_in_total() -> None:
    stopped = day(dict.fromkeys(range(28, 40), 3))  # up at 7:00, nothing since 10:00
    note = daily_note("佐藤", TODAY, now_slot=48, days={**history(14), TODAY: stopped})
    assert (note.kind, note.text) == ("quiet_lately", "佐藤さん: 朝7時から動きがありましたが、ここ2時間ほど動きがありません")


@pytest.mark.unit
def test_a_late_start_with_usual_activity_afterwards() -> None:
    late = day(dict.fromkeys(range(38, 48), 12))  # up at 9:30, busy since
    note = daily_note("田中", TODAY, now_slot=48, days={**history(14), TODAY: late})
    assert note.kind == "late_start" and "朝9時30分から" in note.text


@pytest.mark.unit
def test_a_new_home_is_still_being_learned() -> None:
    note = daily_note("伊藤", TODAY, now_slot=40, days={**history(2), TODAY: routine()})
    assert note.kind == "learning" and note.text.endswith("（ふだんの様子はまだ学習中です）")


@pytest.mark.unit
def test_silent_devices_are_not_called_a_quiet_home() -> None:
    note = daily_note("渡辺", TODAY, now_slot=40, days={**history(14), TODAY: day({})}, reporting=False)
    assert note.kind == "not_reporting"


@pytest.mark.unit
def test_an_open_alert_is_named_not_guessed_about() -> None:
    note = daily_note("山本", TODAY, now_slot=40, days={**history(14), TODAY: day({})}, being_checked=True)
    assert note.kind == "being_checked" and "見守りチームが確認しています" in note.text


@pytest.mark.unit
def test_the_week_is_compared_with_the_weeks_before() -> None:
    days = {TODAY - timedelta(days=i): routine() for i in range(7, 28)}
    days.update({TODAY - timedelta(days=i): routine(per_slot=2) for i in range(7)})  # a third less
    assert weekly_note("佐藤", TODAY, days).text == "佐藤さん（今週）: いつもより動きが少なめでした（33%減）"


@pytest.mark.unit
def test_more_nights_up_are_mentioned() -> None:
    days = {TODAY - timedelta(days=i): routine() for i in range(7, 28)}
    nightly = routine()
    nightly[8] = 2  # 2 a.m.
    days.update({TODAY - timedelta(days=i): (nightly if i < 4 else routine()) for i in range(7)})
    note = weekly_note("佐藤", TODAY, days)
    assert note.text == "佐藤さん（今週）: いつもと同じくらい動いていました。夜中に起きた日が増えています（7日中4日、ふだんは0日）"


@pytest.mark.unit
def test_a_first_week_says_what_comes_next() -> None:
    days = {TODAY - timedelta(days=i): routine() for i in range(7)}
    assert "来週から" in weekly_note("佐藤", TODAY, days).text


# -- from the database: three homes on the real store ---------------------------------------------------------


@pytest.mark.integration
def test_three_homes_read_from_the_database(conn) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from mimamori.alerts.daily_note import read_home

    tokyo = ZoneInfo("Asia/Tokyo")
    now = datetime(2026, 7, 20, 12, 0, tzinfo=tokyo)  # the note is written at noon, Tokyo time
    rows = []
    for hid, name, today_from in (("h-usual", "佐藤", 7), ("h-quiet", "鈴木", 11), ("h-alert", "高橋", None)):
        conn.execute("INSERT INTO households (household_id, display_name) VALUES (%s, %s)", (hid, name))
        conn.execute("INSERT INTO devices (device_id, household_id, kind) VALUES (%s, %s, 'motion')", (f"{hid}-m", hid))
        conn.execute("INSERT INTO device_state (device_id, last_seen_at) VALUES (%s, %s)", (f"{hid}-m", now))
        seq = 0
        for back in range(14, -1, -1):
            d = now.date() - timedelta(days=back)
            start_hour = 7 if back else today_from
            if start_hour is None:
                continue
            for minute in range(start_hour * 60 + 10, (22 if back else 12) * 60, 20):
                t = datetime(d.year, d.month, d.day, minute // 60, minute % 60, tzinfo=tokyo)
                if t < now:
                    seq += 1
                    rows.append((t.astimezone(UTC), hid, f"{hid}-m", seq))
    with conn.cursor().copy("COPY events (time, household_id, device_id, seq, kind) FROM STDIN") as copy:
        for r in rows:
            copy.write_row((*r, "motion"))
    conn.execute("INSERT INTO incidents (household_id, kind, opened_at, updated_at) VALUES ('h-alert', 'inactivity', %s, %s)",
                 (now, now))
    notes = {hid: read_home(conn, hid, now.timestamp()).note() for hid in ("h-usual", "h-quiet", "h-alert")}
    assert notes["h-usual"].text == "佐藤さん: いつも通りです（朝7時10分から動きがあります）"
    assert notes["h-quiet"].text == "鈴木さん: いつもより静かです（昼11時10分から動きがあります）"
    assert notes["h-alert"].kind == "being_checked"


# -- who gets it, when --------------------------------------------------------------------------------------


@pytest.mark.integration
def test_opt_in_at_the_home_hour_once_a_day_and_only_on_the_team(conn) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from mimamori.alerts import daily_notes
    from mimamori.alerts.models import Forbidden

    tokyo = ZoneInfo("Asia/Tokyo")
    conn.execute("INSERT INTO households (household_id, display_name) VALUES ('h1', '佐藤')")
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('daughter', '娘', 'watcher'),"
                 " ('stranger', '他人', 'watcher')")
    conn.execute("INSERT INTO household_watchers (household_id, person_id, tier) VALUES ('h1', 'daughter', 1)")
    monday_7 = datetime(2026, 7, 20, 7, 0, tzinfo=tokyo).timestamp()  # a Monday
    daughter = daily_notes.Subscriber("daughter", "watcher", None, None)
    stranger = daily_notes.Subscriber("stranger", "watcher", None, None)
    with pytest.raises(Forbidden):
        daily_notes.subscribe(conn, stranger, "h1", local_hour=8, weekly_isodow=None, channel_id=None, now=monday_7)
    daily_notes.subscribe(conn, daughter, "h1", local_hour=8, weekly_isodow=1, channel_id=None, now=monday_7)
    consent = conn.execute("SELECT consented_at FROM daily_note_subscriptions").fetchone()[0]
    assert consent == datetime.fromtimestamp(monday_7, UTC)

    assert daily_notes.due(conn, monday_7) == []  # 7:00 in Tokyo: before the chosen hour
    [note] = daily_notes.due(conn, monday_7 + 3600)
    assert (note.person_id, note.household_id, note.weekly, str(note.local_date)) == ("daughter", "h1", True, "2026-07-20")
    assert daily_notes.mark_sent(conn, note) and not daily_notes.mark_sent(conn, note)  # a second worker loses
    assert daily_notes.due(conn, monday_7 + 5 * 3600) == []  # once a day
    [tuesday] = daily_notes.due(conn, monday_7 + 25 * 3600)
    assert not tuesday.weekly

    conn.execute("DELETE FROM household_watchers WHERE person_id = 'daughter'")  # left the team
    assert daily_notes.due(conn, monday_7 + 49 * 3600) == []


@pytest.mark.integration
def test_a_due_note_is_written_in_the_app_and_sent_once_by_email(conn, smtp: SmtpSink) -> None:
    """The worker's pass: the note in the app and through the outbox on the chosen channel, by real mail."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from mimamori.alerts import daily_notes, flows
    from mimamori.alerts.channels import AppriseSender, WebPushSender
    from mimamori.kernel.clock import ManualClock

    tokyo = ZoneInfo("Asia/Tokyo")
    conn.execute("INSERT INTO households (household_id, display_name) VALUES ('h1', '佐藤')")
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('daughter', '娘', 'watcher')")
    conn.execute("INSERT INTO household_watchers (household_id, person_id, tier) VALUES ('h1', 'daughter', 1)")
    channel_id = conn.execute("INSERT INTO person_channels (person_id, kind, target) VALUES ('daughter', 'email', %s)"
                              " RETURNING channel_id", ("daughter@example.jp",)).fetchone()[0]
    eight = datetime(2026, 7, 20, 8, 5, tzinfo=tokyo).timestamp()
    daily_notes.subscribe(conn, daily_notes.Subscriber("daughter", "watcher", None, None), "h1", local_hour=8,
                          weekly_isodow=None, channel_id=channel_id, now=eight)
    assert daily_notes.send_due(conn, eight) == 1
    assert daily_notes.send_due(conn, eight + 60) == 0  # the next pass: already sent today
    body = conn.execute("SELECT body FROM notifications WHERE notice = 'daily_note'").fetchone()[0]
    assert body.startswith("佐藤さん: センサーから連絡が届いていません")  # no device has reported: not called quiet
    clock = ManualClock(eight)
    server = f"mailto://127.0.0.1:{smtp.port}?from=notes@city.example.jp&mode=insecure"
    senders = flows.Senders(AppriseSender(), WebPushSender(None, "mailto:x@y.jp"), smtp_url=server)
    while flows.deliver_one(conn, clock, senders, "test"):
        pass
    assert conn.execute("SELECT status FROM outbox WHERE source = 'note'").fetchall() == [("sent",)]
    [mail] = wait_for(lambda: smtp.to("daughter@example.jp"), what="the note by e-mail")
    assert "今日の見守り" in mail.subject and "佐藤さん" in mail.body


@pytest.mark.integration
def test_opting_in_through_the_api(world) -> None:
    from support.web import app_client, bearer

    url, clock, _ids = world
    with app_client(url, clock) as c:
        watcher = bearer(c, "watcher_a")  # on h1's team
        r = c.put("/api/me/daily-notes/h1", json={"local_hour": 8, "weekly_isodow": 7}, headers=watcher)
        assert r.status_code == 200, r.text
        assert [(n["household_id"], n["local_hour"], n["weekly_isodow"]) for n in c.get("/api/me/daily-notes",
                                                                                        headers=watcher).json()] == [("h1", 8, 7)]
        assert c.put("/api/me/daily-notes/h3", json={"local_hour": 8}, headers=watcher).status_code == 403  # not their team
        assert c.put("/api/me/daily-notes/h1", json={"local_hour": 25}, headers=watcher).status_code == 422
        assert c.delete("/api/me/daily-notes/h1", headers=watcher).json() == {"removed": True}
        assert c.get("/api/me/daily-notes", headers=watcher).json() == []
