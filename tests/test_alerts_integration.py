"""The alert engine on a real PostgreSQL, a real SMTP server and a real broker; worker in-process,
time from a ManualClock (15-minute waits take no time).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import time as dt_time

import psycopg
import pytest

from mimamori.alerts import models, records, service
from mimamori.alerts.channels import AlertSettings
from mimamori.alerts.models import Actor
from mimamori.alerts.worker import run_alert_worker
from mimamori.kernel import mqtt, protocol
from mimamori.kernel.clock import ManualClock, as_datetime
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl
from support.town import SmtpSink, Town, actions, notices, open_incident, seed_town
from support.waiting import wait_for

pytestmark = pytest.mark.integration



class Worker:
    def __init__(self, pg_url: str, clock: ManualClock, mqtt_url: MqttUrl | None = None, worker_id: str = "t1",
                 settings: Settings | None = None) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

        def run() -> None:
            try:
                run_alert_worker(settings or Settings(), database_url=pg_url, mqtt_url=mqtt_url, clock=clock, stop=self.stop,
                                 worker_id=worker_id, alert_settings=AlertSettings(poll_s=0.05, delivery_threads=2))
            except BaseException as exc:  # noqa: BLE001 - whatever ends the worker is surfaced by the test
                self.errors.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def worker(pg_url: str, clock: ManualClock) -> Iterator[Worker]:
    w = Worker(pg_url, clock)
    yield w
    w.close()


def who(conn: psycopg.Connection, person_id: str) -> Actor:
    row = conn.execute("SELECT role, area FROM people WHERE person_id = %s", (person_id,)).fetchone()
    assert row is not None
    return Actor(person_id, row[0], row[1])


def mail_subjects(smtp: SmtpSink, town: Town, person: str) -> list[str]:
    return [m.subject for m in smtp.to(town.emails[person])]


def test_lifecycle_tiers_claim_resolve_and_audit(conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock,
                                                 worker: Worker) -> None:
    town = seed_town(conn, smtp)
    t1a, t1b = town.tier1
    t2 = town.tier2[0]
    iid = open_incident(conn, town.household_id, clock.now())
    # tier 1 gets it in the app and by e-mail; tier 2 not yet
    wait_for(lambda: len(smtp.to(town.emails[t1a])) == 1 and len(smtp.to(town.emails[t1b])) == 1, what="tier-1 mail")
    assert notices(conn, t1a) == ["alert"] and notices(conn, t1b) == ["alert"]
    assert "見守りアラート" in mail_subjects(smtp, town, t1a)[0]
    assert smtp.to(town.emails[t2]) == [] and notices(conn, t2) == []
    # nobody claims: after the 15-minute wait tier 2 is alerted
    clock.advance(14 * 60)
    assert not wait_for_quiet(lambda: notices(conn, t2))
    clock.advance(61)
    wait_for(lambda: len(smtp.to(town.emails[t2])) == 1, what="tier-2 mail")
    assert notices(conn, t2) == ["alert"]
    # tier 2 claims: the others are told, escalation stops
    view = service.claim(conn, who(conn, t2), iid, clock=clock)
    assert view.status == "claimed" and view.claimed_by == t2 and view.escalation_status == "paused"
    wait_for(lambda: len(smtp.to(town.emails[t1a])) == 2 and len(smtp.to(town.emails[t1b])) == 2, what="claimed mail")
    assert notices(conn, t1a) == ["alert", "claimed"]
    with pytest.raises(models.Conflict):
        service.claim(conn, who(conn, t1a), iid, clock=clock)
    clock.advance(80 * 60)  # the coordinator step would have come by now (the claim expires at 90 min)
    assert not wait_for_quiet(lambda: smtp.to(town.emails[town.coordinator]) or notices(conn, town.coordinator))
    # a comment reaches the team in the app
    service.comment(conn, who(conn, t2), iid, "着きました。お元気です", clock=clock)
    assert notices(conn, t1a)[-1] == "comment"
    view = service.resolve(conn, who(conn, t2), iid, "fine", "ご本人は元気でした", clock=clock)
    assert view.status == "resolved" and view.outcome == "fine" and view.escalation_status == "done"
    wait_for(lambda: len(smtp.to(town.emails[t1a])) == 3 and len(smtp.to(town.emails[t1b])) == 3, what="resolved mail")
    wait_for(lambda: conn.execute("SELECT count(*) FROM alert_deliveries WHERE status IN ('pending', 'sending')").fetchone() == (0,),
             what="outbox drained")
    # the complete audit trail, in order, with who and through which channel
    trail = service.timeline(conn, who(conn, t1a), iid)
    assert [e.action for e in trail if e.action != "delivered"] == [
        "escalation_started", "notified", "notified", "claimed", "comment", "resolved"]
    assert sum(e.action == "delivered" and e.channel == "email" for e in trail) == 2 + 1 + 2 + 2
    claimed = next(e for e in trail if e.action == "claimed")
    assert (claimed.actor, claimed.channel, claimed.actor_name) == (t2, "app", f"見守り {t2}")
    resolved = next(e for e in trail if e.action == "resolved")
    assert resolved.data == {"outcome": "fine"} and resolved.body == "ご本人は元気でした"
    # every outbox row sent exactly once
    rows = conn.execute("SELECT status, count(*) FROM alert_deliveries WHERE incident_id = %s GROUP BY 1", (iid,)).fetchall()
    # alert (3 in-app + 3 mail), claimed (2 + 2), comment (2 in-app), resolved (2 + 2)
    assert dict(rows) == {"sent": 6 + 4 + 2 + 4}
    # the outcome is a label for the detector
    assert conn.execute("SELECT label FROM incident_labels WHERE incident_id = %s", (iid,)).fetchone() == ("false_positive",)


def wait_for_quiet(predicate, seconds: float = 0.3):  # type: ignore[no-untyped-def]
    """Give the worker time to (wrongly) act; returns what the predicate saw at the end."""
    import time

    time.sleep(seconds)
    return predicate()


def test_only_the_team_area_coordinator_or_operator_may_act(conn: psycopg.Connection, clock: ManualClock) -> None:
    town = seed_town(conn, None)
    other = seed_town(conn, None)
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('op', 'Operator', 'operator')")
    conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES ('res', '山田', 'resident', %s)",
                 (town.household_id,))
    iid = open_incident(conn, town.household_id, clock.now())
    for outsider in (other.tier1[0], other.coordinator, "res"):
        with pytest.raises(models.NotFound):
            service.claim(conn, who(conn, outsider), iid, clock=clock)
        with pytest.raises(models.NotFound):
            service.comment(conn, who(conn, outsider), iid, "hi", clock=clock)
        assert service.list_my_alerts(conn, who(conn, outsider)) == []
    assert [v.incident_id for v in service.list_my_alerts(conn, who(conn, town.tier1[0]))] == [iid]
    assert [v.incident_id for v in service.list_my_alerts(conn, who(conn, town.coordinator))] == [iid]
    assert [v.incident_id for v in service.list_my_alerts(conn, who(conn, "op"))] == [iid]
    service.comment(conn, who(conn, town.coordinator), iid, "確認します", clock=clock)
    service.claim(conn, who(conn, "op"), iid, clock=clock)
    # chains: the area's coordinator and operators edit; watchers may only read
    with pytest.raises(models.Forbidden):
        service.set_chain(conn, who(conn, town.tier1[0]), town.household_id, [{"type": "notify", "tiers": [1]}], clock=clock)
    with pytest.raises(models.NotFound):
        service.set_chain(conn, who(conn, other.coordinator), town.household_id, [{"type": "notify", "tiers": [1]}], clock=clock)
    with pytest.raises(models.InvalidInput):
        service.set_chain(conn, who(conn, town.coordinator), town.household_id, [{"type": "boom"}], clock=clock)
    service.set_chain(conn, who(conn, town.coordinator), town.household_id, [{"type": "notify", "tiers": [2]}], clock=clock)
    assert service.get_chain(conn, who(conn, town.tier1[0]), town.household_id) == ([{"type": "notify", "tiers": [2]}], "household")
    service.reset_chain(conn, who(conn, "op"), town.household_id)
    assert service.get_chain(conn, who(conn, town.tier1[0]), town.household_id)[1] == "default"


def test_chain_is_snapshotted_when_the_incident_opens(conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock,
                                                      worker: Worker) -> None:
    town = seed_town(conn, smtp)
    coord = who(conn, town.coordinator)
    service.set_chain(conn, coord, town.household_id,
                      [{"type": "notify", "tiers": [2]}, {"type": "wait", "minutes": 5}, {"type": "notify", "tiers": [1]}],
                      clock=clock)
    iid = open_incident(conn, town.household_id, clock.now())
    wait_for(lambda: notices(conn, town.tier2[0]) == ["alert"], what="tier 2 first")
    # the coordinator changes the chain while the incident is in flight: no effect on it
    service.set_chain(conn, coord, town.household_id, [{"type": "notify", "coordinator": True}], clock=clock)
    clock.advance(5 * 60)
    wait_for(lambda: notices(conn, town.tier1[0]) == ["alert"], what="tier 1 after the wait")
    assert notices(conn, town.coordinator) == []
    snap = conn.execute("SELECT chain, chain_source FROM alert_escalations WHERE incident_id = %s", (iid,)).fetchone()
    assert snap is not None and snap[1] == "household" and snap[0][0] == {"type": "notify", "tiers": [2]}


def test_resident_check_blinks_the_bulb_and_a_toggle_cancels(conn: psycopg.Connection, pg_url: str, smtp: SmtpSink,
                                                            clock: ManualClock, mqtt_url: MqttUrl) -> None:
    town = seed_town(conn, smtp)
    service.set_chain(conn, who(conn, town.coordinator), town.household_id,
                      [{"type": "resident_check", "minutes": 5, "blinks": 3}, {"type": "notify", "tiers": [1]}], clock=clock)
    received: list[tuple[str, bytes]] = []
    sub = mqtt.make_client(mqtt_url, f"test-bulb-{town.bulb_id}", protocol=mqtt.negotiate_protocol(mqtt_url))
    subscribed = threading.Event()
    sub.on_message = lambda c, u, m: received.append((m.topic, m.payload))
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe(protocol.command_topic(town.gateway_id, town.bulb_id), qos=1)
    mqtt.connect(sub, mqtt_url)
    sub.loop_start()
    w = Worker(pg_url, clock, mqtt_url=mqtt_url)
    try:
        assert subscribed.wait(5)
        iid = open_incident(conn, town.household_id, clock.now())
        wait_for(lambda: received, what="blink command on the bulb's command topic")
        command = protocol.decode_command(received[0][1])
        assert received[0][0] == protocol.command_topic(town.gateway_id, town.bulb_id)
        assert command.cmd == "blink" and command.args["times"] == 3
        wait_for(lambda: "blinked" in actions(conn, iid), what="blink recorded as sent")
        # the resident toggles the bulb two minutes later (ingest writes the event row)
        clock.advance(120)
        conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind) VALUES (%s, %s, %s, 1, 'on')",
                     (as_datetime(clock.now()), town.household_id, town.bulb_id))
        clock.advance(30)
        wait_for(lambda: conn.execute("SELECT status, outcome FROM incidents WHERE incident_id = %s", (iid,)).fetchone()
                 == ("cancelled", "resident_responded"), what="cancelled as resident responded")
        clock.advance(3600)
        assert not wait_for_quiet(lambda: notices(conn, town.tier1[0]) or smtp.count())  # nobody was bothered
        assert conn.execute("SELECT label FROM incident_labels WHERE incident_id = %s", (iid,)).fetchone() == ("false_positive",)
        # without a toggle the check times out and tier 1 is alerted
        iid2 = open_incident(conn, town.household_id, clock.now())
        wait_for(lambda: len(received) == 2, what="second blink")
        clock.advance(5 * 60)
        wait_for(lambda: notices(conn, town.tier1[0]) == ["alert"], what="tier 1 after no response")
        assert "resident_did_not_respond" in actions(conn, iid2)
    finally:
        w.close()
        sub.loop_stop()
        sub.disconnect()


def test_failed_channel_retries_with_backoff_then_reports_to_coordinator(conn: psycopg.Connection, smtp: SmtpSink,
                                                                         clock: ManualClock, worker: Worker) -> None:
    town = seed_town(conn, smtp, tier1=2, tier2=0)
    broken, no_channel = town.tier1
    conn.execute("UPDATE person_channels SET target = 'mailto://127.0.0.1:9?from=a@b.test&to=x@y.test&mode=insecure' "
                 "WHERE person_id = %s", (broken,))
    conn.execute("DELETE FROM person_channels WHERE person_id = %s", (no_channel,))
    service.set_chain(conn, who(conn, town.coordinator), town.household_id, [{"type": "notify", "tiers": [1]}], clock=clock)
    iid = open_incident(conn, town.household_id, clock.now())
    # the person with no channel besides the app is reported at once
    wait_for(lambda: notices(conn, town.coordinator) == ["unreachable"], what="unreachable report")
    wait_for(lambda: len(smtp.to(town.emails[town.coordinator])) == 1, what="coordinator mail")
    assert no_channel.split("-")[0] in smtp.to(town.emails[town.coordinator])[0].body
    wait_for(lambda: conn.execute("SELECT attempts FROM alert_deliveries WHERE recipient = %s AND channel <> 'inapp'",
                                  (broken,)).fetchone() == (1,), what="first failed attempt")
    for _ in range(8):  # walk through the backoff schedule
        clock.advance(901)
        wait_for_quiet(lambda: None, 0.15)
    row = conn.execute("SELECT status, attempts, last_error FROM alert_deliveries WHERE recipient = %s AND channel <> 'inapp'",
                       (broken,)).fetchone()
    assert row is not None and row[0] == "failed" and row[1] == 6 and row[2]
    wait_for(lambda: notices(conn, town.coordinator).count("unreachable") == 2, what="second unreachable report")
    trail = actions(conn, iid)
    assert trail.count("unreachable") == 2 and "delivery_failed" in trail
    # Each report carries its reason as a code the app translates (not only an English note).
    reasons = conn.execute("""SELECT data->>'reason', data->>'person_id' FROM incident_timeline
                              WHERE incident_id = %s AND action = 'unreachable' ORDER BY entry_id""", (iid,)).fetchall()
    assert reasons == [("no_channel", no_channel), ("all_failed", broken)]


def test_outcomes_feed_back(conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock, worker: Worker) -> None:
    town = seed_town(conn, smtp)
    me = who(conn, town.tier1[0])
    iid = open_incident(conn, town.household_id, clock.now())
    with pytest.raises(models.InvalidInput):
        service.resolve(conn, me, iid, "away", clock=clock)  # needs an end date
    with pytest.raises(models.InvalidInput):
        service.resolve(conn, me, iid, "nonsense", clock=clock)
    service.resolve(conn, me, iid, "away", "娘さんの家に一週間", clock=clock, away_until=clock.now() + 7 * 86400)
    away = conn.execute("SELECT source, set_by, until FROM away_periods WHERE household_id = %s", (town.household_id,)).fetchone()
    assert away is not None and away[:2] == ("alert_outcome", me.person_id)
    # while away, a new incident is cancelled at once and nobody is alerted
    iid2 = open_incident(conn, town.household_id, clock.now() + 60)
    wait_for(lambda: conn.execute("SELECT status, outcome FROM incidents WHERE incident_id = %s", (iid2,)).fetchone()
             == ("cancelled", "away"), what="away cancels")
    clock.advance(8 * 86400)
    iid3 = open_incident(conn, town.household_id, clock.now())
    service.resolve(conn, me, iid3, "device_problem", "電球が切れていた", clock=clock)
    task = conn.execute("SELECT household_id, area, status, note FROM device_tasks WHERE incident_id = %s", (iid3,)).fetchone()
    assert task == (town.household_id, town.area, "open", "電球が切れていた")
    wait_for(lambda: "device_task" in notices(conn, town.coordinator), what="coordinator told of the device task")
    iid4 = open_incident(conn, town.household_id, clock.now())
    service.resolve(conn, me, iid4, "false_alarm", clock=clock)
    labels = dict(conn.execute("SELECT incident_id, outcome FROM incident_labels WHERE household_id = %s", (town.household_id,)))
    assert labels == {iid4: "false_alarm"}


def test_quiet_hours_hold_back_non_urgent_notices_only(conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock,
                                                     worker: Worker) -> None:
    town = seed_town(conn, smtp)
    sleeper, other = town.tier1
    # the ManualClock starts at 2026-01-01 09:00 in Tokyo: inside 08:00-10:00
    service.set_quiet_hours(conn, who(conn, sleeper), sleeper, dt_time(8), dt_time(10), "Asia/Tokyo")
    iid = open_incident(conn, town.household_id, clock.now())
    wait_for(lambda: len(smtp.to(town.emails[sleeper])) == 1, what="welfare alert despite quiet hours")
    service.resolve(conn, who(conn, other), iid, "fine", clock=clock)
    assert notices(conn, sleeper) == ["alert", "resolved"]  # in the app at once
    assert wait_for_quiet(lambda: len(smtp.to(town.emails[sleeper]))) == 1  # the e-mail waits
    clock.advance(3600 + 1)  # 10:00 in Tokyo
    wait_for(lambda: len(smtp.to(town.emails[sleeper])) == 2, what="held-back notice after quiet hours")


def test_incident_closed_by_the_detector_stops_escalation(conn: psycopg.Connection, smtp: SmtpSink, clock: ManualClock,
                                                          worker: Worker) -> None:
    town = seed_town(conn, smtp)
    iid = open_incident(conn, town.household_id, clock.now())
    wait_for(lambda: notices(conn, town.tier1[0]) == ["alert"], what="alert")
    conn.execute("""UPDATE incidents SET status = 'resolved', outcome = 'activity_resumed', closed_at = %s, updated_at = %s
                    WHERE incident_id = %s""", (as_datetime(clock.now()), as_datetime(clock.now()), iid))
    wait_for(lambda: notices(conn, town.tier1[0]) == ["alert", "cancelled"], what="team told")
    clock.advance(3600)
    assert wait_for_quiet(lambda: notices(conn, town.tier2[0])) == []
    assert conn.execute("SELECT status, next_step_at FROM alert_escalations WHERE incident_id = %s", (iid,)).fetchone() == ("done", None)


async def test_notification_stream_backlog_then_live(pg_url: str, conn: psycopg.Connection, clock: ManualClock) -> None:
    from mimamori.alerts.channels import notification_stream

    town = seed_town(conn, None)
    me = town.tier1[0]
    iid = open_incident(conn, town.household_id, clock.now())
    inc = records.incident_row(conn, iid)
    assert inc is not None
    records.enqueue_notice(conn, inc, [me], "t1", "alert", urgent=True, now=clock.now())
    stream = notification_stream(pg_url, me, idle_timeout_s=5)
    first = await stream.__anext__()
    assert first["notice"] == "alert" and first["incident_id"] == iid and first["urgent"] is True
    json.dumps(first)  # ready for SSE

    def later() -> None:
        with psycopg.connect(pg_url, autocommit=True) as c:
            records.enqueue_notice(c, inc, [town.tier1[1]], "t2", "alert", urgent=True, now=clock.now())  # someone else
            records.enqueue_notice(c, inc, [me], "t3", "claimed", urgent=True, now=clock.now(), by="x")

    threading.Timer(0.2, later).start()
    second = await stream.__anext__()
    assert second["notice"] == "claimed" and second["person_id"] == me
    await stream.aclose()
    assert [n.notice for n in service.list_notifications(conn, Actor(me, "watcher"))] == ["alert", "claimed"]
    assert service.mark_read(conn, Actor(me, "watcher"), [first["notification_id"]], clock=clock) == 1
    assert len(service.list_notifications(conn, Actor(me, "watcher"), unread_only=True)) == 1


def test_web_push_with_vapid_reaches_the_push_service(pg_url: str, conn: psycopg.Connection, clock: ManualClock) -> None:
    import base64
    import http.server
    import os

    import http_ece
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from py_vapid import Vapid02

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    got: list[tuple[str, dict[str, str], bytes]] = []

    class PushService(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, dict(self.headers), body))
            self.send_response(410 if self.path.endswith("/gone") else 201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PushService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser_key = ec.generate_private_key(ec.SECP256R1())
    auth = os.urandom(16)
    public = browser_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

    def subscription(path: str) -> str:
        return json.dumps({"endpoint": f"http://127.0.0.1:{server.server_port}{path}",
                           "keys": {"p256dh": b64(public), "auth": b64(auth)}})

    vapid = Vapid02()
    vapid.generate_keys()
    pem = vapid.private_pem().decode()
    town = seed_town(conn, None, tier2=0)
    phone, gone = town.tier1
    service.add_channel(conn, who(conn, phone), phone, "webpush", subscription("/push/phone"))
    service.add_channel(conn, who(conn, gone), gone, "webpush", subscription("/push/gone"))
    with pytest.raises(models.InvalidInput):
        service.add_channel(conn, who(conn, phone), phone, "webpush", "{}")
    stop = threading.Event()
    t = threading.Thread(target=run_alert_worker, args=(Settings(),), daemon=True, kwargs={
        "database_url": pg_url, "mqtt_url": None, "clock": clock, "stop": stop, "worker_id": "wp",
        "alert_settings": AlertSettings(poll_s=0.05, delivery_threads=1, vapid_private_key=pem,
                                        vapid_subject="mailto:ops@mimamori.test")})
    t.start()
    try:
        iid = open_incident(conn, town.household_id, clock.now())
        wait_for(lambda: len(got) == 2, what="two pushes")
        _path, headers, body = next(g for g in got if g[0] == "/push/phone")
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers["authorization"].startswith(("vapid t=", "WebPush ")), headers
        assert headers["urgency"] == "high"
        assert headers["content-encoding"] == "aes128gcm"
        payload = json.loads(http_ece.decrypt(body, private_key=browser_key, auth_secret=auth, version="aes128gcm"))
        assert payload["incident_id"] == iid and payload["notice"] == "alert" and "見守りアラート" in payload["title"]
        # the dropped subscription (410) fails at once and its owner is reported unreachable
        wait_for(lambda: "unreachable" in notices(conn, town.coordinator), what="unreachable report")
        assert conn.execute("SELECT status, attempts FROM alert_deliveries WHERE recipient = %s AND channel <> 'inapp'",
                            (gone,)).fetchone() == ("failed", 1)
    finally:
        stop.set()
        t.join(10)
        server.shutdown()
        server.server_close()
