"""The whole path, nothing inserted by hand: a simulated home's events (30 days of routine, then a
fall) go through a real broker and the real ingest consumer into PostgreSQL; the real detector,
ticking on a ManualClock, opens the incident; the alert worker (same clock) alerts the first tier in
the app and by e-mail at a real SMTP server (aiosmtpd), then the second tier after the wait; one
claims, the others are told, it is resolved, and the audit trail is complete."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from mimamori.alerts import service
from mimamori.alerts.channels import AlertSettings
from mimamori.alerts.models import Actor
from mimamori.alerts.worker import run_alert_worker
from mimamori.bench.ingest_bench import publish_raw
from mimamori.detector.service import DetectorService
from mimamori.firmware_sim.incidents import IncidentPlan, IncidentSpec
from mimamori.firmware_sim.offline import DEFAULT_START, simulate_household
from mimamori.ingest.consumer import IngestService, IngestStats, run_ingest
from mimamori.kernel import protocol
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.config import Settings
from mimamori.kernel.embedded import EmbeddedBroker
from mimamori.kernel.mqtt import MqttUrl
from support.town import SmtpSink, actions, notices
from support.waiting import wait_for

pytestmark = pytest.mark.e2e
H, DAY = 3600.0, 86400.0
KINDS = ("on", "off", "motion", "open", "close", "heartbeat", "boot", "fault")


class Ingest:
    """``ingest.consumer.run_ingest`` in a thread, as ``mimamori ingest`` runs it."""

    def __init__(self, pg_url: str, mqtt_url: MqttUrl) -> None:
        self.stop = threading.Event()
        self.stats = IngestStats()
        self.services: list[IngestService] = []
        settings = Settings(ingest_session_expiry_s=120, ingest_batch_max_wait_s=0.02)  # type: ignore[call-arg]
        self.thread = threading.Thread(target=run_ingest, args=(settings,), daemon=True, kwargs={
            "database_url": pg_url, "mqtt_url": mqtt_url, "stop": self.stop, "client_id": f"alerts-e2e-{uuid.uuid4().hex[:8]}",
            "stats": self.stats, "service": self.services})
        self.thread.start()
        wait_for(lambda: self.services and self.services[0].subscribed.is_set(), timeout=15, what="ingest subscribed")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


class Feed:
    """Publishes a simulated household's events, in device-time order, up to a given time."""

    def __init__(self, stream, mqtt_url: MqttUrl, ingest: Ingest) -> None:  # type: ignore[no-untyped-def]
        self.stream, self.url, self.ingest = stream, mqtt_url, ingest
        self.sent = 0
        self.published = 0

    def until(self, t: float) -> int:
        s, info = self.stream, self.stream.info
        end = int(np.searchsorted(s.time, t, side="left"))
        messages = [
            (protocol.event_topic(info.gateway_id, info.device_ids[d]).encode(),
             protocol.encode_event(protocol.Event(info.device_ids[d], int(q), round(ts * 1000), KINDS[k])))
            for ts, d, k, q in zip(s.time[self.sent:end].tolist(), s.device[self.sent:end].tolist(),
                                   s.kind[self.sent:end].tolist(), s.seq[self.sent:end].tolist(), strict=False)
        ]
        if messages:
            publish_raw(self.url, messages)
        self.sent = end
        self.published += len(messages)
        wait_for(lambda: self.ingest.stats.acked >= self.published, timeout=30, what="ingest committed the events")
        return len(messages)


@pytest.fixture
def ingest(pg_url: str, own_broker: EmbeddedBroker) -> Iterator[Ingest]:
    i = Ingest(pg_url, MqttUrl.parse(own_broker.url))
    yield i
    i.close()


def register(conn: psycopg.Connection, info, smtp: SmtpSink) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What a coordinator does at registration: the home, its devices, and a team of three."""
    conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)",
                 (info.household_id, "田中さん", info.area))
    conn.execute("INSERT INTO gateways (gateway_id, household_id, area, status) VALUES (%s, %s, %s, 'online')",
                 (info.gateway_id, info.household_id, info.area))
    for d in info.devices:
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind, room) VALUES (%s, %s, %s, %s, %s)",
                     (d.device_id, info.gateway_id, info.household_id, d.kind, d.room))
    team = {"family": 1, "neighbour": 1, "minsei": 2}
    emails = {}
    for person, tier in team.items():
        conn.execute("INSERT INTO people (person_id, display_name, role) VALUES (%s, %s, 'watcher')", (person, person))
        conn.execute("INSERT INTO household_watchers (household_id, person_id, tier) VALUES (%s, %s, %s)",
                     (info.household_id, person, tier))
        emails[person] = f"{person}@example.org"
        conn.execute("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)",
                     (person, smtp.url(emails[person])))
    conn.execute("INSERT INTO people (person_id, display_name, role, area) VALUES ('chokai', '町会長', 'coordinator', %s)",
                 (info.area,))
    return emails


def fall_at_home():  # type: ignore[no-untyped-def]
    """A home with motion sensors, 30 days of ordinary life, then a fall at 10:30: (stream, the fall)."""
    fall_at = DEFAULT_START + 30 * DAY + 10.5 * H
    k = next(i for i in range(40) if simulate_household(i, 3, DEFAULT_START, DEFAULT_START + DAY).info.has_sensors)
    stream = simulate_household(k, 3, DEFAULT_START, DEFAULT_START + 31 * DAY, incidents=IncidentPlan.at(
        IncidentSpec("collapse", k, fall_at)))
    return stream, next(inc for inc in stream.incidents if inc.kind == "collapse")


def tick_until_incident(conn: psycopg.Connection, clock: ManualClock, feed: Feed, detector: DetectorService,
                        household_id: str) -> tuple:
    """Half-hour ticks (the devices keep sending heartbeats through the broker) until the detector
    opens a welfare incident: (incident_id, kind, rule, opened_at)."""
    for _ in range(36):
        clock.advance(1800)
        feed.until(clock.now())
        detector.tick()
        incident = conn.execute("SELECT incident_id, kind, rule, opened_at FROM incidents WHERE household_id = %s"
                                " AND kind IN ('inactivity', 'long_on')", (household_id,)).fetchone()
        if incident:
            return incident
    raise AssertionError("the detector opened no welfare incident within 18 h of the fall")


def test_simulated_fall_through_broker_ingest_detector_to_alerts(pg_url: str, own_broker: EmbeddedBroker,
                                                                 ingest: Ingest, smtp: SmtpSink) -> None:
    stream, fall = fall_at_home()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        emails = register(conn, stream.info, smtp)
        feed = Feed(stream, MqttUrl.parse(own_broker.url), ingest)
        # 30 days of ordinary life, then the fall: everything through the broker and the ingest
        assert feed.until(fall.start + 60) > 5000
        stored = conn.execute("SELECT count(*) FROM events WHERE household_id = %s", (stream.info.household_id,)).fetchone()
        assert stored is not None and stored[0] > 1000
        clock = ManualClock(fall.start + 60)
        stop = threading.Event()
        worker = threading.Thread(target=run_alert_worker, args=(Settings(),), daemon=True, kwargs={
            "database_url": pg_url, "mqtt_url": None, "clock": clock, "stop": stop, "worker_id": "e2e",
            "alert_settings": AlertSettings(poll_s=0.05, delivery_threads=2)})
        worker.start()
        detector = DetectorService(pg_url, clock)
        try:
            iid, kind, rule, opened_at = tick_until_incident(conn, clock, feed, detector, stream.info.household_id)
            assert rule.startswith("model") and opened_at >= datetime.fromtimestamp(fall.start, UTC)
            print(f"detector: {kind} incident {(opened_at.timestamp() - fall.start) / H:.1f} h after the fall ({rule})")
            # first tier: in the app and by e-mail
            wait_for(lambda: smtp.to(emails["family"]) and smtp.to(emails["neighbour"]), timeout=15, what="tier-1 e-mail")
            assert notices(conn, "family") == ["alert"] and notices(conn, "neighbour") == ["alert"]
            assert "見守りアラート" in smtp.to(emails["family"])[0].subject and "田中さん" in smtp.to(emails["family"])[0].subject
            assert smtp.to(emails["minsei"]) == []
            # nobody claims: the second tier after the 15-minute wait
            clock.advance(15 * 60 + 1)
            wait_for(lambda: smtp.to(emails["minsei"]), timeout=15, what="tier-2 e-mail")
            assert notices(conn, "minsei") == ["alert"]
            # the 民生委員 claims: the others are told and escalation stops
            service.claim(conn, Actor("minsei", "watcher"), iid, clock=clock)
            wait_for(lambda: len(smtp.to(emails["family"])) == 2 and len(smtp.to(emails["neighbour"])) == 2,
                     timeout=15, what="claimed e-mail")
            clock.advance(40 * 60)  # the coordinator step would have come by now
            detector.tick()  # still silent: the detector keeps the incident (re-detection updates it)
            service.resolve(conn, Actor("minsei", "watcher"), iid, "needed_help", "転倒していた。救急車を呼んだ", clock=clock)
            wait_for(lambda: conn.execute("SELECT count(*) FROM alert_deliveries WHERE status IN ('pending', 'sending')")
                     .fetchone() == (0,), timeout=15, what="outbox drained")
            assert "alert" not in notices(conn, "chokai")
            trail = [a for a in actions(conn, iid) if a != "delivered"]
            assert trail == ["escalation_started", "notified", "notified", "claimed", "resolved"]
            assert actions(conn, iid).count("delivered") == 2 + 1 + 2 + 2  # alert x3, claimed x2, resolved x2 by e-mail
            assert len(smtp.by_message_id()) == smtp.count() == 7
            label = conn.execute("SELECT label FROM incident_labels WHERE incident_id = %s", (iid,)).fetchone()
            assert label == ("true_positive",)
        finally:
            stop.set()
            worker.join(15)
            detector.close()


def test_the_resident_is_asked_first_and_a_fallen_one_cannot_answer(pg_url: str, own_broker: EmbeddedBroker,
                                                                    ingest: Ingest, smtp: SmtpSink) -> None:
    """The same whole path for a home whose resident registered an e-mail address (kind ``email``,
    sent through the operator's mail server): the default chain asks the resident first; a resident
    who has fallen does not answer, and the team hears 10 minutes later."""
    stream, fall = fall_at_home()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        emails = register(conn, stream.info, smtp)
        conn.execute("INSERT INTO people (person_id, display_name, role, household_id) VALUES ('tanaka', '田中', 'resident', %s)",
                     (stream.info.household_id,))
        service.add_channel(conn, Actor("chokai", "coordinator", stream.info.area), "tanaka", "email", "tanaka@example.jp")
        feed = Feed(stream, MqttUrl.parse(own_broker.url), ingest)
        feed.until(fall.start + 60)
        clock = ManualClock(fall.start + 60)
        stop = threading.Event()
        server = f"mailto://127.0.0.1:{smtp.port}?from=alerts@city.example.jp&mode=insecure"
        worker = threading.Thread(target=run_alert_worker, args=(Settings(public_url="https://m.example.jp"),), daemon=True,
                                  kwargs={"database_url": pg_url, "mqtt_url": MqttUrl.parse(own_broker.url), "clock": clock,
                                              "stop": stop, "worker_id": "e2e",
                                              "alert_settings": AlertSettings(poll_s=0.05, delivery_threads=2, smtp_url=server)})
        worker.start()
        detector = DetectorService(pg_url, clock)
        try:
            iid = tick_until_incident(conn, clock, feed, detector, stream.info.household_id)[0]
            evidence = conn.execute("SELECT evidence FROM incidents WHERE incident_id = %s", (iid,)).fetchone()[0]
            assert evidence["asked_first"] is True  # the faster threshold of a home that asks its resident first
            question = wait_for(lambda: smtp.to("tanaka@example.jp"), timeout=15, what="the question to the resident")[0]
            assert "https://m.example.jp/r/" in question.body and question.message_id.endswith("@city.example.jp>")
            assert not smtp.to(emails["family"]) and notices(conn, "family") == []  # the team waits for the resident
            clock.advance(10 * 60 + 1)
            wait_for(lambda: smtp.to(emails["family"]) and smtp.to(emails["neighbour"]), timeout=15, what="tier-1 e-mail")
            trail = [a for a in actions(conn, iid) if a not in ("delivered", "blinked")]  # sends, recorded as they happen
            # the bulbs blinked and the resident was mailed; neither brought an answer
            assert trail[:5] == ["escalation_started", "blink_requested", "resident_asked", "resident_did_not_respond",
                                 "notified"]
            assert "blinked" in actions(conn, iid)
        finally:
            stop.set()
            worker.join(15)
            detector.close()
