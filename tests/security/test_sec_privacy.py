"""Issue 17, medium: deleting a household leaves nothing that names it.

Before: notifications, safety outbox rows, admin-log rows and the continuous aggregate's counts stayed
behind after "delete on request".
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from support.web import app_client, bearer, cookie_login

pytestmark = [pytest.mark.integration, pytest.mark.security]


def _timescale_cagg(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('timescaledb_information.continuous_aggregates') IS NOT NULL").fetchone()
    return bool(row and row[0]) and conn.execute(
        "SELECT 1 FROM timescaledb_information.continuous_aggregates WHERE view_name = 'activity_15m'").fetchone() is not None


def test_deleting_a_household_leaves_nothing_that_names_it(world) -> None:
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        check = conn.execute("INSERT INTO safety_checks (message, started_by, started_at) VALUES ('地震', 'coord_a', now())"
                             " RETURNING check_id").fetchone()[0]
        conn.execute("INSERT INTO notifications (person_id, notice, urgent, title, body, data, created_at)"
                     " VALUES ('watcher_a', 'safety_needs_help', true, '田中 一郎さん', 'x', %s, now())",
                     (Jsonb({"household_id": "h1", "safety_check_id": check}),))
        conn.execute("INSERT INTO safety_deliveries (check_id, recipient, person_id, channel, throttle_key, payload,"
                     " created_at, next_attempt_at) VALUES (%s, 'watcher_a#needs_help:h1', 'watcher_a', 'apprise:1',"
                     " 'email', %s, now(), now())", (check, Jsonb({"title": "田中 一郎さん", "household_id": "h1"})))
        conn.execute("INSERT INTO alert_admin_log (at, actor, action, subject, data) VALUES (now(), 'coord_a', 'chain_set', 'h1', '{}')")
        conn.execute("INSERT INTO alert_admin_log (at, actor, action, subject, data) VALUES (now(), 'coord_a', 'channel_added',"
                     " 'resident_1', '{}')")
        cagg = _timescale_cagg(conn)
        if cagg:
            conn.execute("CALL refresh_continuous_aggregate('activity_15m', NULL, NULL)")
            assert conn.execute("SELECT count(*) FROM activity_15m WHERE household_id = 'h1'").fetchone()[0] > 0
    with app_client(url, clock) as c:
        r = c.post("/api/households/h1/delete", headers=bearer(c, "coord_a"), json={"confirm_name": "田中 一郎"})
        assert r.status_code == 200, r.text
    with psycopg.connect(url) as conn:
        left = {
            "notifications": conn.execute("SELECT count(*) FROM notifications WHERE data->>'household_id' = 'h1'"
                                          " OR title LIKE '%田中%'").fetchone()[0],
            "safety_deliveries": conn.execute("SELECT count(*) FROM safety_deliveries WHERE payload::text LIKE '%h1%'").fetchone()[0],
            "alert_admin_log": conn.execute("SELECT count(*) FROM alert_admin_log WHERE subject IN ('h1', 'resident_1')").fetchone()[0],
            "events": conn.execute("SELECT count(*) FROM events WHERE household_id = 'h1'").fetchone()[0],
            "activity_15m": conn.execute("SELECT count(*) FROM activity_15m WHERE household_id = 'h1'").fetchone()[0],
        }
        if cagg:
            # the materialized part alone (the view also adds real-time buckets from events)
            mat = conn.execute("""SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name)
                                  FROM timescaledb_information.continuous_aggregates WHERE view_name = 'activity_15m'""").fetchone()[0]
            left["materialized"] = conn.execute(f"SELECT count(*) FROM {mat} WHERE household_id = 'h1'").fetchone()[0]
    assert left == dict.fromkeys(left, 0), left


def test_every_read_of_a_households_data_is_in_its_view_log(world) -> None:
    """Before: 6 of 24 per-household reads were logged (the alerts API, the safety pages and more were
    not). Each read below by the area's coordinator adds a row to h1's view log.
    """
    url, clock, ids = world
    inc = ids["h1"]
    with psycopg.connect(url, autocommit=True) as conn:
        check = conn.execute("INSERT INTO safety_checks (area, message, started_by, started_at)"
                             " VALUES ('north', '地震', 'coord_a', now()) RETURNING check_id").fetchone()[0]
        conn.execute("INSERT INTO safety_answers (check_id, household_id, updated_at) VALUES (%s, 'h1', now())", (check,))
    reads = [
        "/api/households/h1", "/api/households/h1/team", "/api/households/h1/consents", "/api/alerts/chains/h1",
        f"/api/alerts/{inc}", f"/api/alerts/{inc}/timeline",
        f"/api/safety/checks/{check}/households/h1",
    ]
    missing = []
    with app_client(url, clock) as c:
        coord = bearer(c, "coord_a")
        for path in reads:
            with psycopg.connect(url) as conn:
                before = conn.execute("SELECT count(*) FROM household_views WHERE household_id = 'h1'").fetchone()[0]
            r = c.get(path, headers=coord)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            with psycopg.connect(url) as conn:
                after = conn.execute("SELECT count(*) FROM household_views WHERE household_id = 'h1'").fetchone()[0]
            if after - before != 1:
                missing.append((path, after - before))
    assert not missing, missing


def test_the_export_holds_the_teams_comments_and_safety_answers(world) -> None:
    url, clock, ids = world
    with psycopg.connect(url, autocommit=True) as conn:
        check = conn.execute("INSERT INTO safety_checks (area, message, started_by, started_at)"
                             " VALUES ('north', '地震の安否確認', 'coord_a', now()) RETURNING check_id").fetchone()[0]
        conn.execute("INSERT INTO safety_answers (check_id, household_id, state, how, answered_by, note, updated_at)"
                     " VALUES (%s, 'h1', 'safe', 'on_behalf', 'watcher_a', '電話で無事を確認', now())", (check,))
    with app_client(url, clock) as c:
        r = c.post(f"/api/alerts/{ids['h1']}/comment", json={"text": "玄関の鍵が開いていた"}, headers=bearer(c, "watcher_a"))
        assert r.status_code in (200, 201, 204), r.text
        export = c.get("/api/households/h1/export", headers=bearer(c, "resident_1"))
        assert export.status_code == 200, export.text
    text = export.text
    assert "玄関の鍵が開いていた" in text  # the team's comment
    assert "電話で無事を確認" in text and "地震の安否確認" in text  # the safety answer and its note


def test_lists_log_every_household_they_show(world) -> None:
    """Issue 17: the view log missed lists — the households list, the coordinator's overview and the safety
    board show every household's name and state. Each shown is logged once per (viewer, list) in ten
    minutes; another area's households are neither shown nor logged.
    """
    url, clock, _ = world

    def logged(person: str, what_like: str) -> set[str]:
        with psycopg.connect(url) as conn:
            return {r[0] for r in conn.execute("SELECT household_id FROM household_views WHERE person_id = %s AND what LIKE %s",
                                               (person, what_like))}

    with app_client(url, clock) as c:
        h = bearer(c, "coord_a")
        assert {x["household_id"] for x in c.get("/api/households", headers=h).json()} == {"h1", "h2"}
        assert logged("coord_a", "api /api/households%") == {"h1", "h2"}
        c.get("/api/households", headers=h)  # a refresh within ten minutes writes nothing new
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM household_views WHERE person_id = 'coord_a'").fetchone()[0] == 2
        check = c.post("/api/safety/checks", headers=h, json={"message": "地震がありました。ご無事ですか？", "area": "north"})
        assert check.status_code in (200, 201), check.text
        board = c.get(f"/api/safety/checks/{check.json()['check_id']}/board", headers=h)
        assert board.status_code == 200, board.text
        assert logged("coord_a", "safety board%") == {x["household_id"] for x in board.json()["households"]} == {"h1", "h2"}
        # A watcher's home page lists their team's households only.
        cookie_login(c, "watcher_a")
        assert c.get("/").status_code == 200
    assert logged("watcher_a", "page / (list)") == {"h1"}
