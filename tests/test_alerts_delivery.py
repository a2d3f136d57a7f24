"""The send protocol on a real PostgreSQL and a real SMTP server: an attempt is committed before the
network call, a live sender's in-doubt row is never taken over, a dead sender's is re-sent with the
same Message-ID, and a stale attempt cannot record an outcome.
"""

from __future__ import annotations

import psycopg
import pytest

from mimamori.alerts import engine, flows
from mimamori.alerts.channels import AppriseSender
from mimamori.kernel import outbox
from mimamori.kernel.clock import ManualClock
from support.town import SmtpSink, open_incident, seed_town
from support.waiting import wait_for

pytestmark = pytest.mark.integration


def test_apprise_email_carries_the_pinned_message_id(smtp: SmtpSink) -> None:
    sender = AppriseSender()
    assert sender.send(smtp.url("a@example.org"), "件名", "本文", message_id="<alert.1.2.3@mimamori.test>").ok
    assert sender.send(smtp.url("a@example.org"), "件名", "本文", message_id="<alert.1.2.3@mimamori.test>").ok
    assert sender.send(smtp.url("a@example.org"), "other", "body").ok  # without: Apprise's own, random
    wait_for(lambda: smtp.count() == 3, what="three mails")
    ids = [m.message_id for m in smtp.mails]
    assert ids[0] == ids[1] == "<alert.1.2.3@mimamori.test>"
    assert ids[2] and ids[2] != ids[0]
    assert smtp.mails[0].subject == "件名" and smtp.mails[0].body.strip() == "本文"


def test_in_doubt_row_is_taken_over_only_when_its_sender_is_gone(pg_url: str, conn: psycopg.Connection,
                                                                  smtp: SmtpSink) -> None:
    clock = ManualClock()
    town = seed_town(conn, smtp, tier1=1, tier2=0)  # nothing is sent here: the test plays the sender
    conn.execute("DELETE FROM person_channels WHERE person_id <> %s", (town.tier1[0],))
    iid = open_incident(conn, town.household_id, clock.now())
    engine.adopt_new(conn, clock, "t")
    assert conn.execute("SELECT count(*) FROM alert_deliveries WHERE status = 'pending'").fetchone() == (1,)
    first = psycopg.connect(pg_url, autocommit=True)
    other = psycopg.connect(pg_url, autocommit=True)
    try:
        row = outbox.claim(first, flows.SOURCES, clock.now(), "w1", message_id=flows.message_id)
        assert row is not None and not row["resend"] and row["message_id"].startswith(f"<alert.{iid}.{row['delivery_id']}.")
        # committed before any network call: everyone sees the attempt
        state = conn.execute("SELECT status, attempt_id, sending_by FROM alert_deliveries WHERE delivery_id = %s",
                             (row["delivery_id"],)).fetchone()
        assert state == ("sending", row["attempt_id"], "w1")
        # the sender is alive (holds the advisory lock): another worker leaves its row alone
        assert outbox.claim(other, flows.SOURCES, clock.now(), "w2", message_id=flows.message_id) is None
        # the sender dies (its connection goes, and the lock with it)
        first.close()
        taken = wait_for(lambda: outbox.claim(other, flows.SOURCES, clock.now(), "w2", message_id=flows.message_id),
                         what="the in-doubt row taken over")
        assert taken["delivery_id"] == row["delivery_id"] and taken["resend"] is True
        assert taken["message_id"] == row["message_id"] and taken["attempt_id"] != row["attempt_id"]
        # the dead sender's attempt can no longer record anything; the current one can
        assert outbox.finish(other, flows.SOURCES, row, ok=True, error=None, now=clock.now()) is None
        assert outbox.finish(other, flows.SOURCES, taken, ok=True, error=None, now=clock.now()) == "sent"
        outbox.release(other, taken)
        final = conn.execute("SELECT status, resends, attempts FROM alert_deliveries WHERE delivery_id = %s",
                             (row["delivery_id"],)).fetchone()
        assert final == ("sent", 1, 1)
        trail = [r[0] for r in conn.execute("SELECT action FROM incident_timeline WHERE incident_id = %s ORDER BY entry_id",
                                            (iid,))]
        assert trail[-2:] == ["resend_in_doubt", "delivered"]
        # nothing left, and no advisory lock left behind
        assert outbox.claim(other, flows.SOURCES, clock.now(), "w2") is None
        assert other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                             ).fetchone() == (0,)
    finally:
        first.close()
        other.close()


def test_alert_for_a_claimed_incident_is_skipped_not_sent(pg_url: str, conn: psycopg.Connection, smtp: SmtpSink) -> None:
    clock = ManualClock()
    town = seed_town(conn, smtp, tier1=1, tier2=0)
    iid = open_incident(conn, town.household_id, clock.now())
    engine.adopt_new(conn, clock, "t")
    conn.execute("UPDATE incidents SET status = 'claimed' WHERE incident_id = %s", (iid,))
    with psycopg.connect(pg_url, autocommit=True) as c:
        row = outbox.claim(c, flows.SOURCES, clock.now(), "w")
        assert row is not None and row["skipped"] and row["notice"] == "alert"
        assert c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()").fetchone() == (0,)
    assert conn.execute("SELECT status FROM alert_deliveries WHERE delivery_id = %s", (row["delivery_id"],)).fetchone() == ("skipped",)
