"""E-mail channels by address (kind ``email``): the operator's mail server sends, a volunteer types
only an address. A real PostgreSQL, a real SMTP server (aiosmtpd), the alert and safety workers
in-process.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from mimamori.alerts import models, service
from mimamori.alerts.channels import AlertSettings
from mimamori.alerts.worker import run_alert_worker
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.config import Settings
from support.town import SmtpSink, actions, notices, open_incident, seed_town
from support.waiting import wait_for
from test_alerts_integration import who

pytestmark = pytest.mark.integration


def _server(smtp: SmtpSink) -> str:
    """The operator's mail server as an Apprise URL without a recipient."""
    return f"mailto://127.0.0.1:{smtp.port}?from=alerts@city.example.jp&mode=insecure"


def _worker(pg_url: str, clock: ManualClock, smtp_url: str | None) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    t = threading.Thread(target=run_alert_worker, args=(Settings(),), daemon=True, kwargs={
        "database_url": pg_url, "mqtt_url": None, "clock": clock, "stop": stop, "worker_id": "mail",
        "alert_settings": AlertSettings(poll_s=0.05, delivery_threads=1, smtp_url=smtp_url)})
    t.start()
    return t, stop


def test_an_address_is_enough(conn: psycopg.Connection, pg_url: str, smtp: SmtpSink) -> None:
    clock = ManualClock()
    town = seed_town(conn, None, tier1=1, tier2=0)
    watcher = town.tier1[0]
    for bad in ("", "taro", "taro@", "taro@example", "mailto://taro@example.jp", "taro @example.jp", "a@b.jp\nBcc: x@y.jp"):
        with pytest.raises(models.InvalidInput):
            service.add_channel(conn, who(conn, watcher), watcher, "email", bad)
    cid = service.add_channel(conn, who(conn, watcher), watcher, "email", " Taro.Yamada+mimamori@Example.JP ")
    assert service.list_channels(conn, who(conn, watcher), watcher)[0]["target"] == "Taro.Yamada+mimamori@example.jp"
    log = conn.execute("SELECT data FROM alert_admin_log WHERE subject = %s", (watcher,)).fetchone()[0]
    assert log == {"channel_id": cid, "kind": "email", "scheme": "email"}
    t, stop = _worker(pg_url, clock, _server(smtp))
    try:
        iid = open_incident(conn, town.household_id, clock.now())
        mails = wait_for(lambda: smtp.to("Taro.Yamada+mimamori@example.jp"), what="the alert by e-mail")
        assert "見守りアラート" in mails[0].subject
        # the same pinned Message-ID as any e-mail delivery, in the operator's sender domain
        assert mails[0].message_id.startswith(f"<alert.{iid}.") and mails[0].message_id.endswith("@city.example.jp>")
        wait_for(lambda: "delivered" in actions(conn, iid), what="delivery on the timeline")
        channel = conn.execute("SELECT channel FROM incident_timeline WHERE incident_id = %s AND action = 'delivered'",
                               (iid,)).fetchone()[0]
        assert channel == "email"
    finally:
        stop.set()
        t.join(10)


def test_without_a_mail_server_the_watcher_is_reported_unreachable(conn: psycopg.Connection, pg_url: str) -> None:
    clock = ManualClock()
    town = seed_town(conn, None, tier1=1, tier2=0)
    watcher = town.tier1[0]
    service.add_channel(conn, who(conn, watcher), watcher, "email", "hanako@example.jp")
    t, stop = _worker(pg_url, clock, None)
    try:
        open_incident(conn, town.household_id, clock.now())
        wait_for(lambda: "unreachable" in notices(conn, town.coordinator), what="unreachable report")
        row = conn.execute("SELECT status, last_error FROM alert_deliveries WHERE recipient = %s AND channel LIKE 'email:%%'",
                           (watcher,)).fetchone()
        assert row[0] == "failed" and "MIMAMORI_ALERTS_SMTP_URL" in row[1]
    finally:
        stop.set()
        t.join(10)


def test_a_coordinator_manages_the_channels_of_residents_in_their_area(conn: psycopg.Connection) -> None:
    town, other = seed_town(conn, None), seed_town(conn, None)
    conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES ('res-a', '山田', 'resident', %s)",
                 (town.household_id,))
    service.add_channel(conn, who(conn, town.coordinator), "res-a", "email", "yamada@example.jp")
    assert [c["kind"] for c in service.list_channels(conn, who(conn, town.coordinator), "res-a")] == ["email"]
    with pytest.raises(models.NotFound):  # another area's coordinator
        service.list_channels(conn, who(conn, other.coordinator), "res-a")
    with pytest.raises(models.NotFound):  # a watcher of the home
        service.add_channel(conn, who(conn, town.tier1[0]), "res-a", "email", "x@example.jp")


def test_a_safety_check_reaches_a_resident_by_address(conn: psycopg.Connection, smtp: SmtpSink, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mimamori.alerts.channels import AppriseSender, WebPushSender
    from mimamori.kernel.signing import signer
    from mimamori.safety import flows as safety_flows
    from mimamori.safety import records as safety_records
    from mimamori.safety import service as safety_service
    from mimamori.safety.models import Actor
    from mimamori.safety.throttle import Throttle

    clock = ManualClock()
    town = seed_town(conn, None)
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('oper', 'op', 'operator')")
    conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES ('res-m', '山田', 'resident', %s)",
                 (town.household_id,))
    service.add_channel(conn, who(conn, town.coordinator), "res-m", "email", "yamada@example.jp")
    links = safety_records.Links(signer(Settings(secret_key="k", data_dir=tmp_path), "safety-answer"), "https://m.example.jp")
    cid = safety_service.start_check(conn, Actor("oper", "operator"), message="地震がありました。無事ですか？",
                                     household_ids=[town.household_id], clock=clock, links=links)
    key = conn.execute("SELECT throttle_key FROM safety_deliveries WHERE check_id = %s AND person_id = 'res-m'",
                       (cid,)).fetchone()[0]
    assert key == "email"  # throttled with the other e-mail
    senders = safety_flows.Senders(AppriseSender(), WebPushSender(None, "mailto:x@y.jp"), smtp_url=_server(smtp),
                                   sealer=links.sealer)
    while safety_flows.deliver_one(conn, clock, senders, Throttle({"default": 100.0}), ["email", "mqtt", "webpush"]):
        pass
    mail = wait_for(lambda: smtp.to("yamada@example.jp"), what="the safety message by e-mail")[0]
    assert "無事ですか" in mail.body and "https://m.example.jp/safety/a/" in mail.body
