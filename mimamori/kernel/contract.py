"""The database contract: the vocabulary the stages share through PostgreSQL, written down once.

Stages meet on the wire (``mimamori.kernel.protocol``) or in the database. This module is the database half:
the kinds and states the tables accept, the LISTEN/NOTIFY channels, and the trigger hand-offs by which
one stage's write wakes another. ``tests/test_kernel_contract.py`` holds it against the migrations as applied to
a real database (check constraints, partial indexes, views, ``pg_trigger`` and the functions' source),
so a migration that changes a kind without this module, or the reverse, fails.

How a bulb switch becomes a neighbour's alert, in tables::

    events (ingest writes)  ─►  incidents (detector opens, kind in DETECTOR_KINDS)
        ─► trigger incidents_opened_notify ─► NOTIFY mimamori_incident_opened ─► alert workers
        ─► outbox (+ NOTIFY mimamori_alert_deliveries) ─► a channel; notifications ─► NOTIFY ─► the app

The stages read the strings from here instead of repeating them. SQL that needs a kind list takes it
as a parameter (``kind = ANY(%s)`` with ``list(ACTIVITY_KINDS)``) rather than spelling it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mimamori.kernel import protocol

# ---------------------------------------------------------------------------------------------
# Events and devices (ingest writes; detector, alerts, safety and the app read)
# ---------------------------------------------------------------------------------------------

#: Resident-caused events: the only kinds that count as activity (``events.kind``, ``activity_15m``).
ACTIVITY_KINDS: Final = protocol.ACTIVITY_KINDS
#: Switch events: the last one is a bulb's power state (``device_state.power``).
POWER_KINDS: Final = frozenset({"on", "off"})
#: Device-health events the ``events`` table keeps. Heartbeats are not stored as events: they only
#: update ``device_state`` (last seen, latest seq).
STORED_HEALTH_KINDS: Final = frozenset({"boot", "fault"})
#: ``events.kind``.
STORED_EVENT_KINDS: Final = ACTIVITY_KINDS | STORED_HEALTH_KINDS
#: ``devices.kind``.
DEVICE_KINDS: Final = protocol.DEVICE_KINDS
#: ``gateways.status``: the retained status topic's value, ``unknown`` until the first one.
GATEWAY_STATUSES: Final = frozenset({"unknown", "online", "offline"})

# ---------------------------------------------------------------------------------------------
# Incidents (the detector and the safety check open them; alerts escalate; the app shows them)
# ---------------------------------------------------------------------------------------------

INACTIVITY: Final = "inactivity"
LONG_ON: Final = "long_on"
DEVICE_OFFLINE: Final = "device_offline"
AREA_OUTAGE: Final = "area_outage"
SAFETY_CHECK: Final = "safety_check"

#: About the resident's welfare: they go to the team, pause while the home is away, and are what an
#: area outage suppresses.
WELFARE_KINDS: Final = frozenset({INACTIVITY, LONG_ON})
#: About the devices: the coordinator's work, never a welfare alert.
TECHNICAL_KINDS: Final = frozenset({DEVICE_OFFLINE, AREA_OUTAGE})
#: What the detector opens (one open per household and kind; an area outage per area).
DETECTOR_KINDS: Final = WELFARE_KINDS | TECHNICAL_KINDS
#: ``incidents.kind``: the safety check's team work reuses incidents too.
INCIDENT_KINDS: Final = DETECTOR_KINDS | {SAFETY_CHECK}

#: ``incidents.status``. An incident is unique per (household, kind) while in OPEN_STATUSES.
INCIDENT_STATUSES: Final = frozenset({"open", "claimed", "resolved", "cancelled"})
OPEN_STATUSES: Final = frozenset({"open", "claimed"})
CLOSED_STATUSES: Final = INCIDENT_STATUSES - OPEN_STATUSES

#: Outcomes a person chooses when resolving (the app's and the alert engine's resolve).
TEAM_OUTCOMES: Final = ("fine", "needed_help", "emergency_services", "away", "device_problem", "false_alarm")
#: Outcomes the system writes: the resident answered, the detector saw activity again, or the
#: detector's condition cleared on a technical incident.
RESIDENT_RESPONDED: Final = "resident_responded"
ACTIVITY_RESUMED: Final = "activity_resumed"
AUTO_CLOSED: Final = "auto_closed"
SYSTEM_OUTCOMES: Final = (RESIDENT_RESPONDED, ACTIVITY_RESUMED, AUTO_CLOSED)
#: ``incidents.outcome``.
OUTCOMES: Final = frozenset(TEAM_OUTCOMES + SYSTEM_OUTCOMES)

#: ``away_periods.source``: who paused watching.
AWAY_SOURCES: Final = frozenset({"resident", "watcher", "coordinator", "inferred", "alert_outcome"})
#: ``people.role`` and ``invitations.role``.
ROLES: Final = frozenset({"operator", "coordinator", "watcher", "resident"})
#: ``resident_check_links.answer``: the resident's one-tap reply to "are you all right?".
RESIDENT_ANSWERS: Final = ("fine", "away", "help")
#: ``safety_answers.state``.
SAFETY_ANSWER_STATES: Final = frozenset({"no_answer", "sign_of_life", "safe", "needs_help"})

# ---------------------------------------------------------------------------------------------
# The one outbox (``mimamori/kernel/outbox.py``, migration 0061): every engine queues what it sends there
# ---------------------------------------------------------------------------------------------

#: ``outbox.source``: which engine queued a row (and reads its outcome back).
OUTBOX_SOURCES: Final = frozenset({"alert", "safety", "note"})
#: ``outbox.status``. ``sending`` with no live sender's lock is in doubt: sent again.
DELIVERY_STATUSES: Final = frozenset({"pending", "sending", "sent", "failed", "skipped"})
#: ``person_channels.kind``: the ways a person can be reached besides the app.
CHANNEL_KINDS: Final = frozenset({"apprise", "webpush", "email", "line"})

# ---------------------------------------------------------------------------------------------
# LISTEN / NOTIFY channels
# ---------------------------------------------------------------------------------------------

#: Payload: an incident id. Fired by triggers when an incident opens, is closed by someone else, or
#: an area outage opens or closes; the alert workers LISTEN (they also poll).
CHANNEL_INCIDENTS: Final = "mimamori_incident_opened"
#: Payload: an incident id. Sent by the alert engine (not a trigger) when it queues rows in the outbox.
CHANNEL_ALERT_DELIVERIES: Final = "mimamori_alert_deliveries"
#: Payload: JSON ``{"notification_id", "person_id"}``. In-app notifications, on insert.
CHANNEL_NOTIFICATIONS: Final = "mimamori_notifications"
#: Payload: small JSON ``{"t": what, ...}``. The web app's one live channel (incidents, timeline,
#: notifications, away periods, ended sessions, safety answers, gateway status).
CHANNEL_APP_LIVE: Final = "mimamori_app_live"
#: Payload: a safety check id. Fired when a check starts (trigger) and by the safety service.
CHANNEL_SAFETY: Final = "mimamori_safety"
#: Payload: the table name. Households, devices or gateways changed shape; the detector LISTENs.
CHANNEL_FLEET: Final = "mimamori_fleet"

#: Every channel; the test checks no function in the database notifies any other.
CHANNELS: Final = frozenset(
    {CHANNEL_INCIDENTS, CHANNEL_ALERT_DELIVERIES, CHANNEL_NOTIFICATIONS, CHANNEL_APP_LIVE, CHANNEL_SAFETY, CHANNEL_FLEET}
)
#: Channels only Python code notifies (``SELECT pg_notify(...)``), never a trigger.
CHANNELS_NOTIFIED_BY_CODE: Final = frozenset({CHANNEL_ALERT_DELIVERIES})


# ---------------------------------------------------------------------------------------------
# Trigger hand-offs: a write by one stage that wakes or changes another
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handoff:
    """One trigger that carries work across a stage boundary."""

    table: str
    trigger: str
    function: str
    channel: str | None  #: the NOTIFY channel the function fires, if any
    writes: str | None  #: a table the function updates, if any
    source: str  #: the stage whose write fires it
    target: str  #: the stage it wakes or changes
    why: str


HANDOFFS: Final = (
    Handoff(
        "incidents", "incidents_opened_notify", "mimamori_incident_opened_notify", CHANNEL_INCIDENTS, None,
        "detector", "alerts",
        "The detector → alerts hand-off: a new open incident wakes the alert workers, which adopt it "
        "(snapshot the household's chain into alert_escalations) and send its first step.",
    ),
    Handoff(
        "incidents", "incidents_closed_wake", "mimamori_incident_closed_wake", CHANNEL_INCIDENTS, "alert_escalations",
        "detector", "alerts",
        "An incident closed by someone else (the detector: activity resumed) makes its escalation due now, "
        "so a worker ends it and tells the people already alerted.",
    ),
    Handoff(
        "incidents", "incidents_area_outage_wake", "mimamori_area_outage_wake", CHANNEL_INCIDENTS, "alert_escalations",
        "detector", "alerts",
        "An area outage opening or closing makes that area's welfare escalations due now, so they pause "
        "or resume at once.",
    ),
    Handoff(
        "notifications", "notifications_notify", "mimamori_notifications_notify", CHANNEL_NOTIFICATIONS, None,
        "alerts", "app",
        "An in-app notification reaches the person's open streams.",
    ),
    Handoff(
        "incidents", "incidents_app_live", "mimamori_app_live_notify", CHANNEL_APP_LIVE, None,
        "detector, alerts", "app", "Pages showing the incident refresh.",
    ),
    Handoff(
        "incident_timeline", "incident_timeline_app_live", "mimamori_app_live_notify", CHANNEL_APP_LIVE, None,
        "alerts", "app", "Timelines refresh.",
    ),
    Handoff(
        "notifications", "notifications_app_live", "mimamori_app_live_notify", CHANNEL_APP_LIVE, None,
        "alerts", "app", "Unread counts refresh.",
    ),
    Handoff(
        "away_periods", "away_periods_app_live", "mimamori_app_live_notify", CHANNEL_APP_LIVE, None,
        "app, alerts", "app", "Household pages show the pause.",
    ),
    Handoff(
        "sessions", "sessions_app_live", "mimamori_app_live_notify", CHANNEL_APP_LIVE, None,
        "app", "app", "A signed-out session's streams close.",
    ),
    Handoff(
        "safety_answers", "safety_answers_app_live", "mimamori_app_live_safety_notify", CHANNEL_APP_LIVE, None,
        "safety", "app", "The safety board shows the answer.",
    ),
    Handoff(
        "gateways", "gateways_status_app_live", "mimamori_app_live_safety_notify", CHANNEL_APP_LIVE, None,
        "ingest", "app", "A home gateway going offline or online shows on the board.",
    ),
    Handoff(
        "gateways", "gateways_insert_app_live", "mimamori_app_live_safety_notify", CHANNEL_APP_LIVE, None,
        "ingest, app", "app", "A new gateway shows on the board.",
    ),
    Handoff(
        "safety_checks", "safety_checks_started_notify", "mimamori_safety_started_notify", CHANNEL_SAFETY, None,
        "app", "safety", "A started safety check wakes the safety worker.",
    ),
    *(
        Handoff(table, trigger, "notify_fleet_changed", CHANNEL_FLEET, None, "app, ingest", "detector",
                "The detector updates its model's layout in place when a household, device or gateway changes.")
        for table, trigger in (
            ("households", "households_fleet_added"),
            ("households", "households_fleet_changed"),
            ("devices", "devices_fleet_added"),
            ("devices", "devices_fleet_removed"),
            ("devices", "devices_fleet_changed"),
            ("gateways", "gateways_fleet_added"),
            ("gateways", "gateways_fleet_removed"),
            ("gateways", "gateways_fleet_changed"),
        )
    ),
)
