"""Side effects: sending what the outbox holds, for the alert engine and the safety check alike.

One ``Senders`` (the channels: Apprise URLs and e-mail addresses, Web Push, MQTT blinks) and one
``send(row, senders)`` serve every row of the one outbox (``mimamori.kernel.outbox``: claim with an attempt
id and an advisory lock, send outside any transaction, finish if the attempt is still current). What
is the alert engine's own is ``AlertOutbox``: when an alert row is no longer worth sending, its retry
delays, and the timeline entries beside each outcome.

Crash semantics (``mimamori/kernel/outbox.py`` has them in full): killed before the claim commits, the row
is still ``pending`` and the next worker sends it; killed between the claim and the outcome, the row
stays ``sending`` and its advisory lock dies with the connection, so another worker finds it *in
doubt* and sends it again with the same Message-ID, counting it in ``resends`` and on the timeline
(``resend_in_doubt``). No notification is lost; a raw re-transmission is possible only for a send in
flight at the crash. In-app notifications are rows written in the step's own transaction: exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg.types.json import Jsonb

from mimamori.alerts import metrics, policy, records, service
from mimamori.alerts.channels import (
    AppriseSender,
    MqttBlinkSender,
    SendResult,
    WebPushSender,
    channel_kind_name,
    mail_url,
    message_id_for,
    private_target_nets,
    refused_target,
)
from mimamori.alerts.models import Conflict, InvalidInput, NotFound, render_notice
from mimamori.kernel import outbox
from mimamori.kernel.clock import Clock, as_datetime
from mimamori.kernel.db import fetch_dict

if TYPE_CHECKING:  # LINE's SDK is imported only where LINE is set up (it takes most of a second)
    from mimamori.alerts.line import LineSender

log = logging.getLogger(__name__)


@dataclass
class Senders:
    """Every channel the service sends on, shared by all the outbox's sources."""

    apprise: AppriseSender
    webpush: WebPushSender
    mqtt: MqttBlinkSender | None = None
    #: the operator's mail server for ``email`` channels (``AlertSettings.smtp_url``)
    smtp_url: str | None = None
    #: makes ``mqtt`` on first use (a broker down when the worker starts must not stop it)
    mqtt_factory: Callable[[], MqttBlinkSender] | None = None
    #: opens the sealed answer links of messages to residents (None: such messages fail)
    sealer: outbox.LinkSealer | None = None
    #: LINE's Messaging API (``alerts.line``; None: LINE is not set up, its rows fail)
    line: LineSender | None = None

    def blink_sender(self) -> MqttBlinkSender | None:
        if self.mqtt is None and self.mqtt_factory is not None:
            try:
                self.mqtt = self.mqtt_factory()
            except Exception as exc:  # noqa: BLE001 - broker down (or refused): the blink is retried with backoff
                log.warning("cannot reach the MQTT broker yet: %s", exc)
        return self.mqtt

    def close(self) -> None:
        if self.mqtt is not None:
            self.mqtt.close()
        if self.line is not None:
            self.line.close()

    def apprise_url(self, kind: str, target: str) -> str | None:
        """The Apprise URL a channel sends through: its own, or the mail server's to its address."""
        if kind == "email":
            return mail_url(self.smtp_url, target) if self.smtp_url else None
        return target

    def message(self, kind: str, target: str, title: str, body: str, *, message_id: str | None = None) -> SendResult:
        """Send a text message on an ``apprise`` or ``email`` channel."""
        url = self.apprise_url(kind, target)
        if url is None:
            return SendResult(False, "no mail server configured (MIMAMORI_ALERTS_SMTP_URL)", permanent=True)
        if kind == "apprise":  # a person's own URL (the operator's mail server is trusted): issue 17, SSRF
            refused = refused_target(url, private_target_nets())
            if refused is not None:
                return SendResult(False, f"target refused: {refused}", permanent=True)
        return self.apprise.send(url, title, body, message_id=message_id)


def channel_name(row: dict[str, Any]) -> str:
    if row["channel"] == "mqtt":
        return "mqtt"
    if row.get("channel_kind"):
        return channel_kind_name(row["channel_kind"], row.get("target"))
    return str(row["channel"]).split(":", 1)[0]


def _domain_of(url: str | None) -> str:
    """The Message-ID's domain: the sender address's domain, else the SMTP host."""
    if not url:
        return "mimamori.invalid"
    parts = urlsplit(url)
    sender = parse_qs(parts.query).get("from", [""])[0]
    if "@" in sender:
        return sender.rsplit("@", 1)[1].strip(">") or "mimamori.invalid"
    return parts.hostname or "mimamori.invalid"


def message_id(row: dict[str, Any], smtp_url: str | None = None) -> str | None:
    """The pinned Message-ID of an e-mail delivery (None for other channels); ``smtp_url``: the
    operator's mail server, whose sender domain an ``email`` channel's messages carry.
    """
    if channel_name(row) != "email":
        return None
    created_ms = int(row["created_at"].timestamp() * 1000)
    url = smtp_url if row.get("channel_kind") == "email" else row.get("target")
    if row["source"] == "note":  # a daily note: <note.<delivery>...>
        return f"<note.{row['delivery_id']}.{created_ms}@{_domain_of(url)}>"
    if row["source"] != records.SOURCE:  # a safety check's message: <safety.<check>.<delivery>...>
        return f"<{row['source']}.{row['check_id']}.{row['delivery_id']}.{created_ms}@{_domain_of(url)}>"
    return message_id_for(int(row["delivery_id"]), int(row["incident_id"]), created_ms, _domain_of(url))


def send(row: dict[str, Any], senders: Senders) -> SendResult:
    """Send one outbox row (any source) on its channel; a sealed answer link is opened here, at send time."""
    payload = outbox.open_links(row["payload"], senders.sealer)
    if row["channel"] == "mqtt":
        blink = senders.blink_sender()
        if blink is None:
            return SendResult(False, "no MQTT broker reachable for this worker")
        args = {**payload.get("args", {}), "command_id": f"{row['source']}-{row['delivery_id']}"}
        return blink.send(payload["gateway_id"], payload["device_id"], args)
    if row.get("target") is None or not row.get("channel_enabled", False):
        return SendResult(False, "channel removed or disabled", permanent=True)
    if row["channel_kind"] in ("apprise", "email"):
        return senders.message(row["channel_kind"], row["target"], payload["title"], payload["body"],
                               message_id=row.get("message_id"))
    if row["channel_kind"] == "line":
        if senders.line is None:
            return SendResult(False, "LINE is not set up (MIMAMORI_LINE_ACCESS_TOKEN)", permanent=True)
        ok, note, permanent = senders.line.send(row, payload)
        return SendResult(ok, note, permanent=permanent)
    if row["channel_kind"] == "webpush":
        return senders.webpush.send(row["target"], {**payload, "delivery_id": row["delivery_id"]}, bool(row["urgent"]),
                                    topic=f"{row['source']}-{row['delivery_id']}")
    return SendResult(False, f"unknown channel {row['channel']}", permanent=True)


class AlertOutbox:
    """The alert engine's rows of the outbox (``outbox.source = 'alert'``)."""

    name = records.SOURCE

    def superseded(self, conn: psycopg.Connection, row: dict[str, Any]) -> str | None:
        """An alert (or blink) for an incident someone already claimed or closed is not worth sending;
        nor is a question to the resident about an incident that has closed.
        """
        if row["notice"] not in ("alert", "blink", "resident_check"):
            return None
        inc = fetch_dict(conn, "SELECT status FROM incidents WHERE incident_id = %s", (row["incident_id"],))
        status = inc["status"] if inc else "deleted"
        if row["notice"] in ("alert", "blink") and status != "open":
            return f"incident already {status}"
        if row["notice"] == "resident_check" and status not in ("open", "claimed"):
            return f"incident already {status}"
        return None

    def retry_delay(self, attempts: int) -> float | None:
        return policy.retry_delay(attempts)

    def recorded(self, conn: psycopg.Connection, row: dict[str, Any], outcome: str, error: str | None, now: float) -> None:
        incident_id, name = row["incident_id"], channel_name(row)
        data: dict[str, Any] = {"recipient": row["recipient"], "notice": row["notice"], "step": row["step_key"],
                                "attempts": row["attempts"]}
        if outcome == "resend":
            records.add_timeline(conn, incident_id, now, None, "resend_in_doubt", "system",
                              "a sender stopped between sending and recording; the same message is sent again",
                              {"recipient": row["recipient"], "step": row["step_key"], "channel": row["channel"],
                               "message_id": row["message_id"], "previous_worker": row["sending_by"]})
        elif outcome == "sent":
            if row.get("message_id"):
                data["message_id"] = row["message_id"]
            if row.get("resends"):
                data["resends"] = row["resends"]
            if row["notice"] == "blink" and error:  # sent, but the device did not echo it (MqttBlinkSender confirm_s)
                records.add_timeline(conn, incident_id, now, None, "blink_not_confirmed", name, None, {**data, "detail": error})
            else:
                records.add_timeline(conn, incident_id, now, None, "blinked" if row["notice"] == "blink" else "delivered",
                                  name, None, data)
        elif outcome == "failed":
            records.add_timeline(conn, incident_id, now, None, "delivery_failed", name, error, data)
            if row["notice"] in ("alert", "technical") and row["person_id"]:
                still = fetch_dict(conn, """SELECT 1 AS ok FROM outbox WHERE source = 'alert' AND incident_id = %s
                                              AND step_key = %s AND recipient = %s AND channel <> 'inapp'
                                              AND status IN ('pending', 'sending', 'sent')""",
                                     (incident_id, row["step_key"], row["recipient"]))
                if still is None:
                    inc = records.incident_row(conn, incident_id)
                    if inc is None:  # a row the same transaction just wrote or locked
                        raise RuntimeError("inc: expected a row, found none")
                    records.report_unreachable(conn, inc, row["person_id"], now, reason="all_failed")


class NoteOutbox:
    """The daily notes' rows (``outbox.source = 'note'``): always worth sending the day they are written,
    retried like alerts, nothing recorded beside them (the in-app copy is the record)."""

    name = "note"

    def superseded(self, conn: psycopg.Connection, row: dict[str, Any]) -> str | None:
        return None

    def retry_delay(self, attempts: int) -> float | None:
        return policy.retry_delay(attempts)

    def recorded(self, conn: psycopg.Connection, row: dict[str, Any], outcome: str, error: str | None,
                 now: float) -> None:
        if outcome == "failed":
            log.warning("daily note %s to %s failed: %s", row["delivery_id"], row["recipient"], error)


#: The outbox sources an alert worker serves: the alerts, and the daily notes.
SOURCES: dict[str, outbox.OutboxSource] = {records.SOURCE: AlertOutbox(), "note": NoteOutbox()}


#: A person may test a channel this often (seconds): enough to check a new address, not to flood one.
TEST_EVERY_S = 60.0


def send_test(conn: psycopg.Connection, actor: Any, person_id: str, channel_id: int, senders: Senders, *,
              clock: Clock, locale: str = "ja") -> SendResult:
    """Send a test message on one of a person's text channels (e-mail address or Apprise URL) now,
    so whoever registered it sees that it arrives. The person themselves, their area's coordinator or
    an operator; once a minute per channel; the outcome goes to ``alert_admin_log``.
    """
    now = clock.now()
    with conn.transaction():  # checked and recorded before the send: a second click waits, then sees this one
        service._may_manage_person(conn, actor, person_id)  # noqa: SLF001 - the service's own rule, raising NotFound
        ch = fetch_dict(conn, """SELECT kind, target FROM person_channels WHERE channel_id = %s AND person_id = %s
                                   AND enabled FOR UPDATE""", (channel_id, person_id))
        if ch is None:
            raise NotFound("no such channel")
        if ch["kind"] not in ("email", "apprise"):
            raise InvalidInput("only e-mail and chat channels can be tested from here")
        recent = fetch_dict(conn, """SELECT 1 AS ok FROM alert_admin_log WHERE subject = %s AND action = 'channel_tested'
                                       AND (data->>'channel_id')::bigint = %s AND at > %s""",
                              (person_id, channel_id, as_datetime(now - TEST_EVERY_S)))
        if recent:
            raise Conflict("a test was sent to this channel less than a minute ago")
        entry = service.log_admin_change(conn, now, actor, "channel_tested", person_id, {"channel_id": channel_id, "kind": ch["kind"]})
    title, body = render_notice("test", locale, name="")
    result = senders.message(ch["kind"], ch["target"], title, body)  # the network call, outside any transaction
    # Issue 17: whoever tested sees only "sent" or "failed". The error text of a connection (refused,
    # timed out, a banner) would map the service's network for them; it goes to the server's log only.
    if not result.ok:
        log.warning("channel test failed: person %s channel %s: %s", person_id, channel_id, result.error)
        result = SendResult(False, "failed", permanent=result.permanent)
    conn.execute("UPDATE alert_admin_log SET data = data || %s WHERE entry_id = %s",
                 (Jsonb({"ok": result.ok, "error": result.error}), entry))
    return result


def deliver_one(conn: psycopg.Connection, clock: Clock, senders: Senders, worker_id: str = "worker", *,
                recover: bool = True, throttle: outbox.Throttle | None = None) -> bool:
    """Send the next due alert row (or, with ``recover``, an in-doubt one), if any. Returns whether
    there was one. ``conn`` is in autocommit mode (this function commits twice). ``throttle``: rate
    limits per channel kind (the kinds it lists wait while out of tokens).
    """

    def observe(row: dict[str, Any], result: Any, outcome: str | None) -> None:
        name = channel_name(row)
        if outcome == "skipped":
            metrics.count_notification(name, "skipped")
            return
        metrics.count_send(name, row, result.ok, result.permanent, outcome is not None)
        if not result.ok:
            log.warning("delivery %s via %s failed: %s", row["delivery_id"], name, result.error)

    return outbox.deliver_one(conn, SOURCES, lambda row: send(row, senders), clock.now, worker_id, recover=recover,
                              throttle=throttle, throttle_keys=list(throttle.rates) if throttle is not None else (),
                              message_id=lambda r: message_id(r, senders.smtp_url), observe=observe)
