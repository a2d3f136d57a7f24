"""Who gets the daily note, for which home, when (issue 16): opt-in, consent recorded, at the person's hour
in the home's own time zone, at most once a day (and the weekly trend once a week).

The words are ``alerts.daily_note``'s; sending goes through the outbox on the person's chosen channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from mimamori.alerts.models import Forbidden, InvalidInput
from mimamori.kernel import access


@dataclass(frozen=True)
class DueNote:
    person_id: str
    household_id: str
    channel_id: int | None
    local_date: date
    weekly: bool          # the weekly trend is due too (sent with the daily note)


@dataclass(frozen=True)
class Subscriber:
    """A subscriber as the access rule reads them."""

    person_id: str
    role: str
    area: str | None
    household_id: str | None


def _may_hear_of(conn: psycopg.Connection, viewer: access.Viewer, household_id: str) -> bool:
    """A note about a home is what its page shows, in words: whoever may see the household (its team, its
    resident, its area's coordinator), by the one access rule."""
    return access.may_see_household(conn, viewer, household_id)


def subscribe(conn: psycopg.Connection, viewer: access.Viewer, household_id: str, *, local_hour: int,
              weekly_isodow: int | None, channel_id: int | None, now: float) -> dict[str, Any]:
    """Opt in (or change the hour / channel): the person's own choice, for a home they may see."""
    person_id = viewer.person_id
    if not 0 <= local_hour <= 23:
        raise InvalidInput("the hour is 0 to 23")
    if weekly_isodow is not None and not 1 <= weekly_isodow <= 7:
        raise InvalidInput("the weekday is 1 (Monday) to 7 (Sunday)")
    if not _may_hear_of(conn, viewer, household_id):
        raise Forbidden("notes about a home go only to those who may see it")
    if channel_id is not None and conn.execute("SELECT 1 FROM person_channels WHERE channel_id = %s AND person_id = %s",
                                               (channel_id, person_id)).fetchone() is None:
        raise InvalidInput("not one of your channels")
    conn.execute(
        """INSERT INTO daily_note_subscriptions (person_id, household_id, local_hour, weekly_isodow, channel_id,
                                                 consented_at)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (person_id, household_id) DO UPDATE SET local_hour = EXCLUDED.local_hour,
               weekly_isodow = EXCLUDED.weekly_isodow, channel_id = EXCLUDED.channel_id""",
        (person_id, household_id, local_hour, weekly_isodow, channel_id, datetime.fromtimestamp(now, UTC)))
    return {"household_id": household_id, "local_hour": local_hour, "weekly_isodow": weekly_isodow,
            "channel_id": channel_id}


def unsubscribe(conn: psycopg.Connection, person_id: str, household_id: str) -> bool:
    return conn.execute("DELETE FROM daily_note_subscriptions WHERE person_id = %s AND household_id = %s RETURNING 1",
                        (person_id, household_id)).fetchone() is not None


def subscriptions(conn: psycopg.Connection, person_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT s.household_id, h.display_name, s.local_hour, s.weekly_isodow, s.channel_id, s.consented_at
               FROM daily_note_subscriptions s JOIN households h USING (household_id)
               WHERE s.person_id = %s ORDER BY h.display_name""", (person_id,)).fetchall()


def due(conn: psycopg.Connection, now: float) -> list[DueNote]:
    """Notes due at ``now``: the home's local hour has reached the chosen hour and today's note has not gone
    out. A person who may no longer see the home stops getting notes at once, whatever they subscribed to."""
    at = datetime.fromtimestamp(now, UTC)
    rows = conn.execute(
        """SELECT s.person_id, s.household_id, s.channel_id, s.local_hour, s.weekly_isodow, s.last_daily_on,
                  s.last_weekly_on, h.timezone, p.role, p.area, p.household_id
           FROM daily_note_subscriptions s JOIN households h USING (household_id)
           JOIN people p ON p.person_id = s.person_id""").fetchall()
    out = []
    for person_id, household_id, channel_id, hour, isodow, last_daily, last_weekly, tz, role, area, home in rows:
        local = at.astimezone(ZoneInfo(tz))
        today = local.date()
        if local.hour < hour or last_daily == today:
            continue
        if not _may_hear_of(conn, Subscriber(person_id, role, area, home), household_id):
            continue  # left the team, moved area: no more notes, whatever they subscribed to
        weekly = isodow is not None and today.isoweekday() == isodow and last_weekly != today
        out.append(DueNote(person_id, household_id, channel_id, today, weekly))
    return out


def mark_sent(conn: psycopg.Connection, note: DueNote) -> bool:
    """Record the note as sent for that local date; False when another worker did it first (then this one
    must not enqueue it: call inside the transaction that enqueues)."""
    return conn.execute(
        """UPDATE daily_note_subscriptions SET last_daily_on = %(d)s,
                  last_weekly_on = CASE WHEN %(w)s THEN %(d)s ELSE last_weekly_on END
           WHERE person_id = %(p)s AND household_id = %(h)s AND last_daily_on IS DISTINCT FROM %(d)s
           RETURNING 1""",
        {"d": note.local_date, "w": note.weekly, "p": note.person_id, "h": note.household_id}).fetchone() is not None


NOTE_SOURCE = "note"
DAILY_TITLE = "今日の見守り"


def send_due(conn: psycopg.Connection, now: float) -> int:
    """Write and queue every note due at ``now``: in the app, and on the person's chosen channel through the
    outbox. One transaction per note: marked sent and queued together, so two workers never both send it."""
    from datetime import timedelta

    from mimamori.alerts.channels import channel_kind_name
    from mimamori.alerts.daily_note import read_home, weekly_note
    from mimamori.kernel import outbox

    queued = 0
    for note in due(conn, now):
        with conn.transaction():
            if not mark_sent(conn, note):
                continue
            home = read_home(conn, note.household_id, now)
            text = home.note().text
            if note.weekly:
                text += "\n" + weekly_note(home.name, home.today - timedelta(days=1), home.days).text
            at = datetime.fromtimestamp(now, UTC)
            conn.execute("""INSERT INTO notifications (person_id, notice, urgent, title, body, data, created_at)
                            VALUES (%s, 'daily_note', false, %s, %s, %s, %s)""",
                         (note.person_id, DAILY_TITLE, text, Jsonb({"household_id": note.household_id}), at))
            channel = conn.execute("SELECT kind, target FROM person_channels WHERE channel_id = %s AND person_id = %s"
                                   " AND enabled", (note.channel_id, note.person_id)).fetchone() if note.channel_id else None
            if channel is not None:
                kind, target = channel
                outbox.enqueue(conn, outbox.Send(
                    source=NOTE_SOURCE, recipient=note.person_id, person_id=note.person_id,
                    channel=f"{kind}:{note.channel_id}", channel_id=note.channel_id, notice="daily_note", urgent=False,
                    throttle_key=channel_kind_name(kind, target), payload={"title": DAILY_TITLE, "body": text},
                    created_at=now, send_at=now))
            queued += 1
    return queued
