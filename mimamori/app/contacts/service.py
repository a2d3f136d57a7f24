"""A person's channels as the contacts page shows them; the rules (who may see and change whose) are
the alert engine's (``alerts.service``: the person themselves, their area's coordinator, an operator).
"""

from __future__ import annotations

from datetime import time
from typing import Any

import psycopg

from mimamori.alerts import flows as alert_flows
from mimamori.alerts import service as alerts_service
from mimamori.alerts.channels import AlertSettings, AppriseSender, WebPushSender, channel_kind_name
from mimamori.app.i18n import MESSAGES
from mimamori.app.people import Person
from mimamori.kernel.clock import Clock
from mimamori.kernel.errors import InvalidInput, NotFound


def _shown(channel: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of a channel: an address in full; of the others only their kind (an Apprise
    URL may hold a token, a push subscription means nothing to a person).
    """
    kind = channel["kind"]
    key = f"channel_{channel_kind_name(kind, channel['target'])}"
    return {"channel_id": channel["channel_id"], "kind": kind, "label_key": key if key in MESSAGES else "channel_other",
            "shown": channel["target"] if kind == "email" else "", "testable": kind in ("email", "apprise")}


def contacts(conn: psycopg.Connection, person: Person, person_id: str) -> dict[str, Any]:
    """Whose page this is and their active channels. ``NotFound`` unless ``person`` may manage them."""
    channels = alerts_service.list_channels(conn, person, person_id)
    row = conn.execute("SELECT display_name, role FROM people WHERE person_id = %s", (person_id,)).fetchone()
    if row is None:
        raise NotFound("person not found")
    quiet = conn.execute("SELECT quiet_start, quiet_end FROM person_alert_rules WHERE person_id = %s", (person_id,)).fetchone()
    return {"person_id": person_id, "display_name": row[0], "role": row[1], "own": person_id == person.person_id,
            "quiet_start": quiet[0].strftime("%H:%M") if quiet and quiet[0] else "",
            "quiet_end": quiet[1].strftime("%H:%M") if quiet and quiet[1] else "",
            "channels": [_shown(c) for c in channels if c["enabled"]],
            # e-mail needs the operator's mail server: say so to whoever could ask for it
            "mail_configured": bool(AlertSettings().smtp_url)}


def add_email(conn: psycopg.Connection, clock: Clock, person: Person, person_id: str, address: str) -> int:
    return alerts_service.add_channel(conn, person, person_id, "email", address, label="email", clock=clock)


def set_quiet_hours(conn: psycopg.Connection, clock: Clock, person: Person, person_id: str, start: time | None,
                    end: time | None) -> None:
    """Hours in which notices that are not urgent wait (welfare alerts never do); both None: none."""
    if (start is None) != (end is None) or (start is not None and start == end):
        raise InvalidInput("give a start and a different end, or clear both")
    alerts_service.set_quiet_hours(conn, person, person_id, start, end, clock=clock)


def send_test(conn: psycopg.Connection, clock: Clock, person: Person, person_id: str, channel_id: int,
              locale: str) -> tuple[bool, str | None]:
    """Send a test message on one of the person's channels now: (arrived at the server, why not)."""
    cfg = AlertSettings()
    senders = alert_flows.Senders(AppriseSender(), WebPushSender(None, cfg.vapid_subject), smtp_url=cfg.smtp_url or None)
    result = alert_flows.send_test(conn, person, person_id, channel_id, senders, clock=clock, locale=locale)
    return result.ok, result.error


def remove(conn: psycopg.Connection, clock: Clock, person: Person, person_id: str, channel_id: int) -> None:
    alerts_service.remove_channel(conn, person, person_id, channel_id, clock=clock)
