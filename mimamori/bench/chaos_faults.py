"""The faults of ``mimamori chaos`` (see ``bench.chaos``), one function each, and the table of them."""

from __future__ import annotations

import email
import email.header
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, Self

import psycopg

from mimamori.bench.chaos_stack import (
    ChaosPlan,
    FaultResult,
    PgProxy,
    Stack,
    count,
    count_events,
    start_fleet,
    stored_rows,
    wait_until,
    when_rows,
)
from mimamori.kernel import contract, embedded

log = logging.getLogger("mimamori.chaos")



def _fault_broker_restart(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    stack.start_ingest()
    fleet, out = start_fleet(stack, plan, speed=None, linger_s=plan.linger_s)
    at = when_rows(stack.database_url, expected // 3)
    if stack.broker is None:
        raise RuntimeError("the stack has no broker")
    stack.broker.stop()
    time.sleep(plan.broker_down_s)
    stack.broker.start()
    res.evidence.update(rows_at_fault=at, broker_down_s=plan.broker_down_s)
    res.events = count_events(stack, fleet, out, plan.settle_timeout_s)
    res.fault_mid_run = at < res.events["published"]


def _fault_db_unavailable(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    proxy = PgProxy(stack.database_url)
    try:
        stack.start_ingest(proxy.url)
        fleet, out = start_fleet(stack, plan, speed=None)
        at = when_rows(stack.database_url, expected // 4)
        proxy.cut()
        cut_at = time.monotonic()
        time.sleep(0.2)
        rows_at_cut = stored_rows(stack.database_url)  # a commit in flight at the cut may still land
        ready_during: list[bool] = []
        while time.monotonic() - cut_at < plan.db_down_s:
            ready_during.append(stack.ready("ingest"))
            time.sleep(min(2.0, plan.db_down_s / 4))
        rows_end_of_outage = stored_rows(stack.database_url)
        metrics_during = stack.scrape("ingest")
        proxy.resume()
        res.evidence.update(rows_at_fault=at, rows_at_cut=rows_at_cut, rows_end_of_outage=rows_end_of_outage,
                            db_down_s=plan.db_down_s,
                            ingest_ready_during_outage=any(ready_during),
                            unacked_during_outage=metrics_during.get("mimamori_ingest_unacked_messages"),
                            db_errors_during_outage=metrics_during.get("mimamori_ingest_database_errors_total"))
        res.events = count_events(stack, fleet, out, plan.settle_timeout_s)
        res.fault_mid_run = rows_at_cut < res.events["published"] and rows_end_of_outage == rows_at_cut
    finally:
        proxy.cut()


def _fault_ingest_sigkill(stack: Stack, plan: ChaosPlan, res: FaultResult, expected: int) -> None:
    stack.start_ingest()
    fleet, out = start_fleet(stack, plan, speed=None)
    kills = []
    for k in range(plan.ingest_kills):
        at = when_rows(stack.database_url, expected * (k + 1) // (plan.ingest_kills + 2))
        stack.kill("ingest")
        kills.append(at)
        time.sleep(1.0)
        stack.start_ingest()
    res.evidence.update(rows_at_kills=kills)
    res.events = count_events(stack, fleet, out, plan.settle_timeout_s)
    res.fault_mid_run = bool(kills) and max(kills) < res.events["published"]


def _fault_gateway_offline_hour(stack: Stack, plan: ChaosPlan, res: FaultResult, _expected: int) -> None:
    stack.start_ingest()
    at_s = round(plan.days * 86400.0 * 0.3)  # a third into the run
    faults = [{"household": 0, "at_s": at_s, "kind": "power_loss", "down_s": plan.offline_sim_s}]
    fleet, out = start_fleet(stack, plan, speed=plan.fault_speed, faults=faults)
    res.events = count_events(stack, fleet, out, plan.settle_timeout_s)
    gw = _gateway_of(0, plan)
    with psycopg.connect(stack.database_url) as conn:
        status = conn.execute("SELECT status FROM gateways WHERE gateway_id = %s", (gw,)).fetchone()
        offline_window = conn.execute(
            """SELECT count(*) FROM events e JOIN devices d USING (device_id)
               WHERE d.gateway_id = %s AND e.kind <> 'heartbeat'
                 AND e.time >= to_timestamp(%s) AND e.time < to_timestamp(%s)""",
            (gw, _sim_start() + at_s, _sim_start() + at_s + plan.offline_sim_s)).fetchone()
    res.evidence.update(gateway=gw, offline_sim_s=plan.offline_sim_s, speed=plan.fault_speed,
                        gateway_status_after_fleet_stopped=status[0] if status else None,  # retained 'offline' of a graceful stop
                        events_stored_from_offline_hour=offline_window[0] if offline_window else 0,
                        gateway_restarts=res.events["fleet"]["gateway_restarts"])
    res.fault_mid_run = res.events["fleet"]["gateway_restarts"] >= 1


def _fault_reconnect_storm(stack: Stack, plan: ChaosPlan, res: FaultResult, _expected: int) -> None:
    stack.start_ingest()
    n = min(plan.storm_gateways, plan.households)
    at_s = plan.days * 86400.0 * 0.5
    faults = [{"household": k, "at_s": at_s, "kind": "power_loss", "down_s": plan.storm_down_sim_s} for k in range(n)]
    fleet, out = start_fleet(stack, plan, speed=plan.fault_speed, faults=faults)
    res.events = count_events(stack, fleet, out, plan.settle_timeout_s)
    res.evidence.update(gateways_reconnecting=n, down_sim_s=plan.storm_down_sim_s, speed=plan.fault_speed,
                        gateway_restarts=res.events["fleet"]["gateway_restarts"])
    res.fault_mid_run = res.events["fleet"]["gateway_restarts"] >= n


def _sim_start() -> float:
    from mimamori.firmware_sim.offline import DEFAULT_START

    return DEFAULT_START


def _gateway_of(household: int, plan: ChaosPlan) -> str:
    from mimamori.firmware_sim.homes import make_household

    return make_household(household, plan.seed).gateway_id


class SmtpSink:
    """aiosmtpd handler keeping (recipient, subject, Message-ID) of every accepted message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        logging.getLogger("mail.log").setLevel(logging.WARNING)  # one line per SMTP command otherwise
        self.port = embedded.free_port()
        self.mails: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        msg = email.message_from_bytes(envelope.content)
        subject = str(email.header.make_header(email.header.decode_header(msg.get("Subject", ""))))
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.mails.append((rcpt, subject, str(msg.get("Message-ID", ""))))
        return "250 OK"

    def snapshot(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return list(self.mails)

    def __enter__(self) -> Self:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def _fault_alert_worker_sigkill(stack: Stack, plan: ChaosPlan, res: FaultResult, _expected: int) -> None:
    url = stack.database_url
    run = uuid.uuid4().hex[:6]
    with SmtpSink() as sink:
        addresses: set[str] = set()
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            households = [(f"h{i}-{run}", f"chaos {i}", "chaos") for i in range(plan.incidents)]
            cur.executemany("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)", households)
            for i, (hid, _, _) in enumerate(households):
                for w in range(plan.watchers):
                    pid = f"w{i}.{w}-{run}"
                    addr = f"{pid}@chaos.test"
                    addresses.add(addr)
                    cur.execute("INSERT INTO people (person_id, display_name, role) VALUES (%s, %s, 'watcher')", (pid, pid))
                    cur.execute("INSERT INTO household_watchers (household_id, person_id, tier) VALUES (%s, %s, 1)", (hid, pid))
                    cur.execute("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)",
                                (pid, f"mailto://127.0.0.1:{sink.port}?from=alerts@chaos.test&to={addr}&mode=insecure"))
        env = stack.env(MIMAMORI_ALERTS_POLL_S="0.05")
        worker_args = ["-m", "mimamori.alerts.worker", "--database-url", url]

        def start_worker(k: int) -> None:
            stack.spawn("alerts", [*worker_args, "--worker-id", f"chaos-{k}"], env)
            wait_until(lambda: count(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND query LIKE %s", f"LISTEN {contract.CHANNEL_ALERT_DELIVERIES}%") >= 1, 30, 0.05)

        start_worker(0)
        with psycopg.connect(url, autocommit=True) as conn:
            for hid, _, _ in households:
                conn.execute("""INSERT INTO incidents (household_id, kind, status, opened_at, updated_at, rule)
                                VALUES (%s, %s, 'open', now(), now(), 'chaos')""", (hid, contract.INACTIVITY))
        due = plan.incidents * plan.watchers
        kills = []
        for k in range(plan.alert_kills):
            target = due * (k + 1) // (plan.alert_kills + 2)
            wait_until(lambda target=target: len(sink.snapshot()) >= target, 60, 0.005)
            stack.kill("alerts")
            kills.append(len(sink.snapshot()))
            stack.procs.pop("alerts", None)
            time.sleep(0.5)
            start_worker(k + 1)
        wait_until(lambda: len({m[0] for m in sink.snapshot()} & addresses) >= due, plan.settle_timeout_s, 0.2)
        wait_until(lambda: count(url, "SELECT count(*) FROM alert_deliveries WHERE status = 'pending'") == 0, 30, 0.2)
        time.sleep(1.0)
        mails = [m for m in sink.snapshot() if m[0] in addresses]
    with psycopg.connect(url) as conn:
        deliveries = dict(conn.execute("""SELECT status, count(*) FROM alert_deliveries
                                          WHERE notice = 'alert' AND channel LIKE %s GROUP BY 1""", ("apprise:%",)).fetchall())
        inapp_rows = conn.execute("""SELECT person_id, incident_id, count(*) FROM notifications WHERE notice = 'alert'
                                     GROUP BY 1, 2""").fetchall()
        inapp_sent = count(url, "SELECT count(*) FROM alert_deliveries WHERE notice = 'alert' AND channel = 'inapp' AND status = 'sent'")
        escalations = count(url, "SELECT count(*) FROM alert_escalations")
    # Each recipient is due exactly one alert mail. A message is identified by its Message-ID when the
    # engine sets one (a resend with the same Message-ID is the same message to mail systems):
    # duplicated = distinct messages beyond one per recipient; copies = every extra copy received.
    per_recipient = Counter(m[0] for m in mails)
    messages: dict[str, set[str]] = {}
    for rcpt, subject, message_id in mails:
        messages.setdefault(rcpt, set()).add(message_id or f"{subject}#{len(messages.get(rcpt, ()))}")
    duplicated = sum(len(ids) - 1 for ids in messages.values())
    copies = sum(n - 1 for n in per_recipient.values())
    email_res = {"due": due, "sent": deliveries.get("sent", 0), "received": len(per_recipient),
                 "lost": due - len(per_recipient), "duplicated": duplicated,
                 "extra_copies_same_message_id": copies - duplicated, "deliveries_by_status": deliveries}
    inapp_res = {"due": due, "sent": inapp_sent, "received": len(inapp_rows), "lost": due - len(inapp_rows),
                 "duplicated": sum(n - 1 for _, _, n in inapp_rows)}
    res.alerts = {
        "due": email_res["due"] + inapp_res["due"],
        "sent": email_res["sent"] + inapp_res["sent"],
        "lost": email_res["lost"] + inapp_res["lost"],
        "duplicated": email_res["duplicated"] + inapp_res["duplicated"],
        "email": email_res,
        "inapp": inapp_res,
    }
    if copies:
        res.evidence["recipients_with_extra_copies"] = [[r, n, len(messages[r])] for r, n in per_recipient.items() if n > 1][:20]
        res.evidence["extra_copies_note"] = (
            "the SMTP server accepted the same alert more than once (a send in flight at the SIGKILL: accepted by "
            "SMTP, not yet recorded as sent); the copies carry the same Message-ID, so mail systems that key on "
            "it show one message" if copies and not duplicated else
            "the same alert arrived as distinct messages (different Message-IDs)")
    res.evidence.update(incidents=plan.incidents, watchers_per_household=plan.watchers, mails_at_kills=kills,
                        escalations=escalations)
    res.fault_mid_run = bool(kills) and all(0 < k < due for k in kills)


RUNNERS: dict[str, Callable[[Stack, ChaosPlan, FaultResult, int], None]] = {
    "broker_restart": _fault_broker_restart,
    "db_unavailable_60s": _fault_db_unavailable,
    "ingest_sigkill": _fault_ingest_sigkill,
    "alert_worker_sigkill": _fault_alert_worker_sigkill,
    "gateway_offline_hour": _fault_gateway_offline_hour,
    "reconnect_storm_20": _fault_reconnect_storm,
}
