"""The one outbox (migration 0061, ``mimamori/kernel/outbox.py``) on a real PostgreSQL and a real SMTP server:

- answer links are stored only sealed (issue 17): after real messages went out (a resident check of
  the alert engine and a safety check), no text or JSON column of any table holds a token, and the
  links in the received mails still work through the app;
- a worker killed between claim and send (a real process, SIGKILL) loses nothing and sends nothing
  twice: while it lives its claimed row is left alone; once it is dead a second worker takes the row
  over as in doubt and sends it, once;
- a safety worker and an alert worker share the table without taking each other's rows;
- throttling per channel kind; the rows of the two old outboxes carried over by the migration.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from mimamori.alerts import engine, service
from mimamori.kernel import outbox
from mimamori.kernel.clock import ManualClock, SystemClock
from mimamori.kernel.config import Settings
from mimamori.kernel.signing import signer
from mimamori.safety import records as safety_records
from mimamori.safety import service as safety_service
from mimamori.safety.models import Actor, SafetySettings
from mimamori.safety.worker import run_safety_worker
from support.town import SmtpSink, open_incident, seed_town
from support.waiting import wait_for
from support.web import served
from test_alerts_integration import Worker, who

pytestmark = pytest.mark.integration
PUBLIC = "https://mimamori.example.jp"
ASK_FIRST = [{"type": "resident_check", "minutes": 10}, {"type": "wait", "minutes": 15}, {"type": "notify", "tiers": [1]}]
ROOT = Path(__file__).resolve().parents[1]


def _columns_holding(conn: psycopg.Connection, needle: str) -> list[str]:
    """Every text, varchar, json and jsonb column (and text array) of every table in the public schema
    whose value contains ``needle``: ``table.column`` names.
    """
    found = []
    cols = conn.execute("""SELECT c.table_name, c.column_name FROM information_schema.columns c
                           JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
                           WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
                             AND (c.data_type IN ('text', 'character varying', 'json', 'jsonb', 'character')
                                  OR c.udt_name IN ('_text', '_varchar'))""").fetchall()
    assert len(cols) > 50  # the scan covers the schema, not a handful of tables
    for table, column in cols:
        hit = conn.execute(f'SELECT 1 FROM "{table}" WHERE strpos("{column}"::text, %s) > 0 LIMIT 1', (needle,)).fetchone()
        if hit:
            found.append(f"{table}.{column}")
    return found


@pytest.fixture
def safety_worker(pg_url: str) -> Iterator[None]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_safety_worker(Settings(), database_url=pg_url, mqtt_url=None, clock=SystemClock(), stop=stop,
                              safety_settings=SafetySettings(poll_s=0.05))
        except BaseException as exc:  # noqa: BLE001 - whatever ends the worker is surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(20)
    assert not thread.is_alive() and not errors, errors


def _safety_home(conn: psycopg.Connection, smtp: SmtpSink) -> tuple[str, str]:
    """A home whose resident is reachable by e-mail (an Apprise mailto URL to the sink)."""
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('oper', 'op', 'operator')")
    conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('hs', '安否の家', 'north')")
    conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES ('res-s', '田中', 'resident', 'hs')")
    conn.execute("INSERT INTO person_channels (person_id, kind, target) VALUES ('res-s', 'apprise', %s)",
                 (smtp.url("res-s@example.org"),))
    return "hs", "res-s@example.org"


def _links(base: str) -> safety_records.Links:
    return safety_records.Links(signer(Settings(), "safety-answer"), base)


def test_answer_links_are_never_stored_in_clear_and_still_work(pg_url: str, conn: psycopg.Connection, smtp: SmtpSink,
                                                                safety_worker: None) -> None:
    clock = ManualClock()
    # the alert engine asks a resident first (their answer link by e-mail)
    town = seed_town(conn, smtp)
    resident_id = f"res-{town.household_id}"
    conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES (%s, '山田', 'resident', %s)",
                 (resident_id, town.household_id))
    conn.execute("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)",
                 (resident_id, smtp.url(f"{resident_id}@example.org")))
    service.set_chain(conn, who(conn, town.coordinator), town.household_id, ASK_FIRST, clock=clock)
    worker = Worker(pg_url, clock, settings=Settings(public_url=PUBLIC))
    try:
        iid = open_incident(conn, town.household_id, clock.now())
        mail = wait_for(lambda: smtp.to(f"{resident_id}@example.org"), what="the resident check by e-mail")[0]
    finally:
        worker.close()
    match = re.search(re.escape(PUBLIC) + r"/r/([A-Za-z0-9_-]+)", mail.body)
    assert match, mail.body
    alert_token = match.group(1)
    # a safety check: the resident's signed single-use link by e-mail
    with served(pg_url, clock) as base:
        hid, address = _safety_home(conn, smtp)
        check_id = safety_service.start_check(conn, Actor("oper", "operator"), message="地震がありました",
                                              household_ids=[hid], clock=clock, links=_links(base))
        mail = wait_for(lambda: smtp.to(address), what="the safety check by e-mail")[0]
        match = re.search(re.escape(base) + r"/safety/a/([A-Za-z0-9_.-]+)", mail.body)
        assert match, mail.body
        safety_token = match.group(1)

        # the tokens went out, and nothing in the database holds them (nor their distinctive halves)
        for token in (alert_token, safety_token, safety_token.split(".")[0]):
            assert len(token) >= 20
            assert _columns_holding(conn, token) == []
        # the sealed forms are there instead (what the senders opened): the resident check's in-app record
        # and mail, the safety check's mail; and in the in-app notification
        assert conn.execute("SELECT count(*) FROM outbox WHERE payload ? 'sealed_link'").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM notifications WHERE data ? 'sealed_link'").fetchone()[0] == 1
        # and the links work: the resident's "fine" cancels the alert, the safety answer is recorded
        assert requests.post(f"{base}/r/{alert_token}", data={"answer": "fine"}, timeout=30).status_code == 200
        assert conn.execute("SELECT status FROM incidents WHERE incident_id = %s", (iid,)).fetchone() == ("cancelled",)
        answered = requests.post(f"{base}/api/safety/answer", json={"token": safety_token, "answer": "safe"}, timeout=30)
        assert answered.status_code == 200, answered.text
        assert conn.execute("SELECT state, how FROM safety_answers WHERE check_id = %s", (check_id,)).fetchone() == ("safe", "link")
        assert requests.post(f"{base}/api/safety/answer", json={"token": safety_token, "answer": "safe"},
                             timeout=30).status_code == 409  # still single use


_CLAIMER = """
import sys, time, psycopg
from mimamori.kernel import outbox
from mimamori.kernel.clock import SystemClock
from mimamori.safety.flows import SOURCES
conn = psycopg.connect(sys.argv[1], autocommit=True)
row = outbox.claim(conn, SOURCES, SystemClock().now(), "doomed")
print(row["delivery_id"] if row else "none", flush=True)
time.sleep(600)  # killed here: after the claim committed, before any send
"""


def test_a_worker_killed_between_claim_and_send_loses_nothing_and_sends_once(pg_url: str, conn: psycopg.Connection,
                                                                             smtp: SmtpSink) -> None:
    """What it proves: the claim is committed before the network call and guarded by the claimer's
    session advisory lock. (1) While the claimer lives, no other worker sends its row (no double
    send). (2) SIGKILLed, its lock dies with its connection; the row, left 'sending', is found in
    doubt and sent by the next worker: not lost. (3) Sent once: one mail at the sink, ``resends`` = 1,
    an audit row saying so. Here the dead worker had not sent anything yet; had it sent, the same mail
    would go again with the same Message-ID (the only duplicate the protocol allows).
    """
    hid, address = _safety_home(conn, smtp)
    check_id = safety_service.start_check(conn, Actor("oper", "operator"), message="台風です", household_ids=[hid],
                                          clock=SystemClock(), links=_links(PUBLIC))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    claimer = subprocess.Popen([sys.executable, "-c", _CLAIMER, pg_url], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert claimer.stdout is not None
        delivery_id = int(claimer.stdout.readline())
        row = conn.execute("SELECT status, sending_by, source, check_id FROM outbox WHERE delivery_id = %s",
                           (delivery_id,)).fetchone()
        assert row == ("sending", "doomed", "safety", check_id)
        stop = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                run_safety_worker(Settings(), database_url=pg_url, mqtt_url=None, clock=SystemClock(), stop=stop,
                                  safety_settings=SafetySettings(poll_s=0.05))
            except BaseException as exc:  # noqa: BLE001 - whatever ends the worker is surfaced by the test
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            time.sleep(2.5)  # a second worker, several recovery passes: the live claimer's row is left alone
            assert conn.execute("SELECT status, resends FROM outbox WHERE delivery_id = %s", (delivery_id,)).fetchone() == (
                "sending", 0)
            assert smtp.to(address) == []
            claimer.send_signal(signal.SIGKILL)
            claimer.wait(10)
            wait_for(lambda: conn.execute("SELECT status FROM outbox WHERE delivery_id = %s",
                                          (delivery_id,)).fetchone() == ("sent",), timeout=20, what="the row taken over")
            assert conn.execute("SELECT resends, attempts, sending_by FROM outbox WHERE delivery_id = %s",
                                (delivery_id,)).fetchone()[:2] == (1, 1)
            wait_for(lambda: len(smtp.to(address)) >= 1, what="the mail")
            time.sleep(1.0)
            assert len(smtp.to(address)) == 1  # once
            audit = conn.execute("SELECT data FROM safety_audit WHERE check_id = %s AND action = 'resend_in_doubt'",
                                 (check_id,)).fetchall()
            assert len(audit) == 1 and audit[0][0]["previous_worker"] == "doomed"
        finally:
            stop.set()
            thread.join(20)
        assert not errors, errors
    finally:
        if claimer.poll() is None:
            claimer.kill()
            claimer.wait(10)
        if claimer.stdout is not None:
            claimer.stdout.close()


def test_each_worker_takes_only_its_own_sources_rows(conn: psycopg.Connection, smtp: SmtpSink) -> None:
    from mimamori.alerts import flows as alert_flows
    from mimamori.safety import flows as safety_flows

    clock = ManualClock()
    town = seed_town(conn, smtp, tier1=1, tier2=0)
    open_incident(conn, town.household_id, clock.now())
    engine.adopt_new(conn, clock, "t")
    hid, _address = _safety_home(conn, smtp)
    safety_service.start_check(conn, Actor("oper", "operator"), message="m", household_ids=[hid], clock=clock,
                               links=_links(PUBLIC))
    alert_row = outbox.claim(conn, alert_flows.SOURCES, clock.now(), "a")
    safety_row = outbox.claim(conn, safety_flows.SOURCES, clock.now(), "s")
    assert alert_row is not None and alert_row["source"] == "alert"
    assert safety_row is not None and safety_row["source"] == "safety"
    for row in (alert_row, safety_row):
        outbox.release(conn, row)


def test_throttle_per_channel_kind_holds_back_one_kind_only(conn: psycopg.Connection, smtp: SmtpSink) -> None:
    from mimamori.safety import flows as safety_flows

    clock = ManualClock()
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('oper', 'op', 'operator')")
    for i in range(3):
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, 'x', 'north')", (f"t{i}",))
        conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES (%s, 'r', 'resident', %s)",
                     (f"r{i}", f"t{i}"))
        conn.execute("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'email', %s)",
                     (f"r{i}", f"r{i}@example.org"))
        conn.execute("INSERT INTO gateways (gateway_id, household_id, status) VALUES (%s, %s, 'online')", (f"g{i}", f"t{i}"))
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'bulb')",
                     (f"b{i}", f"g{i}", f"t{i}"))
    safety_service.start_check(conn, Actor("oper", "operator"), message="m", area="north", clock=clock, links=_links(PUBLIC))
    throttle = outbox.Throttle.per_minute({"email": 60.0, "mqtt": 6000.0})  # 1/s for mail
    keys = ["email", "mqtt"]
    taken = []
    while (row := outbox.claim(conn, safety_flows.SOURCES, clock.now(), "w", throttle=throttle, throttle_keys=keys)) is not None:
        taken.append(row["throttle_key"])
        outbox.finish(conn, safety_flows.SOURCES, row, ok=True, error=None, now=clock.now())
    assert sorted(taken) == ["email", "mqtt", "mqtt", "mqtt"]  # one mail now, every blink, the other mails wait
    clock.advance(1.0)
    row = outbox.claim(conn, safety_flows.SOURCES, clock.now(), "w", throttle=throttle, throttle_keys=keys)
    assert row is not None and row["throttle_key"] == "email"
    outbox.release(conn, row)


def test_the_migration_carries_both_old_outboxes_over(pg_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """0061 on a database holding rows of both old outboxes (built by the migrations before it): every
    row moves, alert rows keep their ids (Message-IDs and blink command ids derive from them), an
    in-doubt alert row stays in doubt, and the old names still read (views) for their outside readers.
    """
    import shutil
    import uuid

    from mimamori.kernel import db, embedded

    migrations = Path(db.__file__).parent / "migrations"
    before = tmp_path / "before"
    before.mkdir()
    for f in migrations.glob("*.sql"):
        if f.name < "0061":
            shutil.copy(f, before / f.name)
    name = f"mimamori_mig_{uuid.uuid4().hex[:8]}"
    embedded.create_database(pg_server.admin_url, name)
    pg_server.created.append(name)
    url = pg_server.url_for(name)
    db.migrate(url, before)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO households (household_id, display_name, area) VALUES ('h1', 'x', 'north')")
        c.execute("INSERT INTO people (person_id, display_name, role) VALUES ('p1', 'p', 'watcher')")
        iid = c.execute("""INSERT INTO incidents (household_id, kind, status, opened_at, updated_at)
                           VALUES ('h1', 'inactivity', 'open', now(), now()) RETURNING incident_id""").fetchone()[0]
        cid = c.execute("""INSERT INTO safety_checks (area, message, started_by, started_at)
                           VALUES ('north', 'm', 'p1', now()) RETURNING check_id""").fetchone()[0]
        for n in range(3):
            c.execute("""INSERT INTO alert_deliveries (delivery_id, incident_id, step_key, recipient, person_id, channel,
                                notice, urgent, payload, status, created_at, next_attempt_at, attempt_id, message_id)
                         OVERRIDING SYSTEM VALUE VALUES (%s, %s, 'r0.s0', 'p1', 'p1', %s, 'alert', true, '{}', %s, now(), now(),
                                %s, %s)""",
                      (40 + n, iid, ["inapp", "apprise:1", "mqtt"][n], ["sent", "sending", "pending"][n],
                       "att" if n == 1 else None, "<alert.x@y>" if n == 1 else None))
        for n in range(2):
            c.execute("""INSERT INTO safety_deliveries (check_id, recipient, channel, throttle_key, payload, status,
                                created_at, next_attempt_at) VALUES (%s, %s, 'mqtt', 'mqtt', '{"household_id": "h1"}', %s, now(), now())""",
                      (cid, f"device:b{n}", ["pending", "failed"][n]))
    db.migrate(url)
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute("""SELECT delivery_id, source, channel, status, attempt_id, message_id, throttle_key, notice
                            FROM outbox ORDER BY delivery_id""").fetchall()
        assert [r[:4] for r in rows[:3]] == [(40, "alert", "inapp", "sent"), (41, "alert", "apprise:1", "sending"),
                                             (42, "alert", "mqtt", "pending")]
        assert rows[1][4:7] == ("att", "<alert.x@y>", "apprise")
        assert [(r[1], r[3], r[6], r[7]) for r in rows[3:]] == [("safety", "pending", "mqtt", "blink"),
                                                               ("safety", "failed", "mqtt", "blink")]
        assert all(r[0] > 42 for r in rows[3:])  # new ids after the alert rows'
        # the old names read (and write) the same rows
        assert c.execute("SELECT count(*) FROM alert_deliveries").fetchone() == (3,)
        assert c.execute("SELECT count(*) FROM safety_deliveries WHERE check_id = %s", (cid,)).fetchone() == (2,)
        c.execute("DELETE FROM safety_deliveries WHERE payload->>'household_id' = 'h1'")
        assert c.execute("SELECT count(*) FROM outbox WHERE source = 'safety'").fetchone() == (0,)
        # new rows get ids beyond the carried-over ones
        new = c.execute("""INSERT INTO outbox (source, check_id, recipient, channel, payload, created_at, next_attempt_at)
                           VALUES ('safety', %s, 'x', 'mqtt', '{}', now(), now()) RETURNING delivery_id""", (cid,)).fetchone()[0]
        assert new > max(r[0] for r in rows)


def test_the_alert_worker_can_throttle_a_channel_kind(conn: psycopg.Connection, smtp: SmtpSink,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mimamori.alerts import flows as alert_flows
    from mimamori.alerts.channels import AlertSettings, AppriseSender, WebPushSender

    monkeypatch.setenv("MIMAMORI_ALERTS_RATES_PER_MINUTE", '{"email": 60}')
    throttle = outbox.Throttle.per_minute(AlertSettings().rates_per_minute)  # as the worker builds it: 1 mail/s
    clock = ManualClock()
    town = seed_town(conn, smtp, tier1=2, tier2=0)
    open_incident(conn, town.household_id, clock.now())
    engine.adopt_new(conn, clock, "t")
    keys = {r[0] for r in conn.execute("SELECT throttle_key FROM outbox WHERE channel <> 'inapp'")}
    assert keys == {"email"}  # an Apprise mailto:// channel counts as e-mail
    senders = alert_flows.Senders(AppriseSender(), WebPushSender(None, "mailto:x@y.jp"))
    assert alert_flows.deliver_one(conn, clock, senders, "t", throttle=throttle)
    assert not alert_flows.deliver_one(conn, clock, senders, "t", throttle=throttle)  # the second waits
    clock.advance(1.0)
    assert alert_flows.deliver_one(conn, clock, senders, "t", throttle=throttle)
    wait_for(lambda: len(smtp.mails) == 2, what="both mails, a second apart")
