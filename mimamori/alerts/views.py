"""Thin FastAPI routers over ``alerts.service`` (JSON API under ``/api/alerts``).

Wiring (the app does this; the alerts stage does not know how people sign in): the app includes
``alerts_api`` behind its own authentication, which puts the signed-in person on
``request.state.person``; ``current_person`` reads it (nobody: 401). Whatever it is needs
``person_id``, ``role`` and ``area`` (the app's ``Person`` fits).
- ``alert_connection`` / ``alert_clock``: a psycopg connection from ``request.app.state.pool`` and
  the clock ``request.app.state.clock`` (the app's conventions); override them to change that.
- Server-Sent Events of a person's in-app notifications (``GET /api/alerts/notifications/stream``)
  are served by the app (``app.live.views``): its streams share one LISTEN connection and re-check
  the session (issue 17); ``alerts.channels.notification_stream`` remains for other hosts.

Errors: the engine's errors are kinds of ``mimamori.kernel.errors`` (``NotFound`` 404, ``Forbidden`` 403,
``Conflict`` 409, ``InvalidInput`` 422); the host's one error handler answers them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from datetime import time as dt_time
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as FPath
from pydantic import BaseModel, Field

from mimamori.alerts import models, service
from mimamori.alerts.models import ActorLike
from mimamori.kernel.clock import Clock
from mimamori.kernel.errors import NotAuthenticated


def current_person(request: Request) -> ActorLike:
    """The signed-in person, as the host put it on ``request.state.person`` (the app authenticates every
    request to this router before it runs); nobody there: 401."""
    person = getattr(request.state, "person", None)
    if person is None:
        raise NotAuthenticated("sign in first")
    return person  # type: ignore[no-any-return]


def alert_connection(request: Request) -> Iterator[psycopg.Connection]:
    with request.app.state.pool.connection() as conn:
        conn.autocommit = True
        yield conn


def alert_clock(request: Request) -> Clock:
    return request.app.state.clock  # type: ignore[no-any-return]


Actor = Annotated[ActorLike, Depends(current_person)]
IncidentId = Annotated[int, FPath(ge=1, le=2**63 - 1)]
ChannelId = Annotated[int, FPath(ge=1, le=2**63 - 1)]
TextId = Annotated[str, FPath(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f/]+$")]
NO_NUL = r"^[^\x00]*$"
Conn = Annotated[psycopg.Connection, Depends(alert_connection)]
ClockDep = Annotated[Clock, Depends(alert_clock)]

def _json(obj: Any) -> Any:
    return json.loads(json.dumps(asdict(obj), default=str))


class CommentIn(BaseModel):
    text: str = Field(min_length=1, max_length=service.MAX_COMMENT, pattern=NO_NUL)


class ResolveIn(BaseModel):
    outcome: Literal["fine", "needed_help", "emergency_services", "away", "device_problem", "false_alarm"]
    note: str = Field(default="", max_length=service.MAX_COMMENT, pattern=NO_NUL)
    away_until: float | None = Field(default=None, ge=0, le=4e9)  # epoch seconds, for outcome "away"


class ChannelIn(BaseModel):
    kind: Literal["email", "apprise", "webpush"]
    target: str = Field(min_length=1, max_length=4000, pattern=NO_NUL)
    label: str | None = Field(default=None, max_length=100, pattern=NO_NUL)
    position: int = Field(default=0, ge=0, le=100)


class QuietHoursIn(BaseModel):
    start: dt_time | None = None
    end: dt_time | None = None
    timezone: str = Field(default="Asia/Tokyo", max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")


alerts_api = APIRouter(prefix="/api/alerts", tags=["alerts"])


@alerts_api.get("")
def list_alerts(actor: Actor, conn: Conn, status: Annotated[list[str] | None, Query()] = None) -> list[Any]:
    """The actor's alerts; default: open and claimed ones."""
    statuses = status or ["open", "claimed"]
    if not set(statuses) <= set(models.STATUSES):
        raise HTTPException(422, f"status is one of {models.STATUSES}")
    return [_json(v) for v in service.list_my_alerts(conn, actor, statuses=statuses)]


@alerts_api.get("/notifications")
def list_notifications(actor: Actor, conn: Conn, after_id: int = 0, unread_only: bool = False) -> list[Any]:
    return [_json(n) for n in service.list_notifications(conn, actor, after_id=after_id, unread_only=unread_only)]


@alerts_api.get("/chains/{household_id}")
def get_chain(household_id: TextId, actor: Actor, conn: Conn) -> dict[str, Any]:
    steps, source = service.get_chain(conn, actor, household_id)
    return {"household_id": household_id, "steps": steps, "source": source}


@alerts_api.put("/chains/{household_id}")
def set_chain(household_id: TextId, steps: list[dict[str, Any]], actor: Actor, conn: Conn, clock: ClockDep) -> dict[str, Any]:
    clean = service.set_chain(conn, actor, household_id, steps, clock=clock, channel="api")
    return {"household_id": household_id, "steps": clean, "source": "household"}


@alerts_api.delete("/chains/{household_id}", status_code=204)
def reset_chain(household_id: TextId, actor: Actor, conn: Conn, clock: ClockDep) -> None:
    service.reset_chain(conn, actor, household_id, clock=clock, channel="api")


@alerts_api.get("/people/{person_id}/channels")
def list_channels(person_id: TextId, actor: Actor, conn: Conn) -> list[dict[str, Any]]:
    return service.list_channels(conn, actor, person_id)


@alerts_api.post("/people/{person_id}/channels", status_code=201)
def add_channel(person_id: TextId, body: ChannelIn, actor: Actor, conn: Conn, clock: ClockDep) -> dict[str, int]:
    cid = service.add_channel(conn, actor, person_id, body.kind, body.target, label=body.label, position=body.position,
                              clock=clock)
    return {"channel_id": cid}


@alerts_api.delete("/people/{person_id}/channels/{channel_id}", status_code=204)
def remove_channel(person_id: TextId, channel_id: ChannelId, actor: Actor, conn: Conn, clock: ClockDep) -> None:
    service.remove_channel(conn, actor, person_id, channel_id, clock=clock)


@alerts_api.put("/people/{person_id}/quiet-hours", status_code=204)
def set_quiet_hours(person_id: TextId, body: QuietHoursIn, actor: Actor, conn: Conn, clock: ClockDep) -> None:
    if (body.start is None) != (body.end is None):
        raise HTTPException(422, "give both start and end, or neither")
    service.set_quiet_hours(conn, actor, person_id, body.start, body.end, body.timezone, clock=clock)


@alerts_api.get("/audit/{subject}")
def get_admin_log(subject: TextId, actor: Actor, conn: Conn) -> list[Any]:
    """Who changed a household's chain or a person's channels and quiet hours, and when."""
    return json.loads(json.dumps(service.admin_log(conn, actor, subject), default=str))


@alerts_api.get("/{incident_id}")
def get_alert(incident_id: IncidentId, actor: Actor, conn: Conn) -> Any:
    return _json(service.get_incident(conn, actor, incident_id))


@alerts_api.get("/{incident_id}/timeline")
def get_timeline(incident_id: IncidentId, actor: Actor, conn: Conn) -> list[Any]:
    """The team's timeline; the engine's raw ``data`` (chain snapshots, worker ids, the ids of people the
    reader may not know) stays out of the API."""
    return [{k: v for k, v in _json(e).items() if k != "data"} for e in service.timeline(conn, actor, incident_id)]


@alerts_api.post("/{incident_id}/claim")
def claim(incident_id: IncidentId, actor: Actor, conn: Conn, clock: ClockDep) -> Any:
    return _json(service.claim(conn, actor, incident_id, clock=clock, channel="api"))


@alerts_api.post("/{incident_id}/comment", status_code=201)
def comment(incident_id: IncidentId, body: CommentIn, actor: Actor, conn: Conn, clock: ClockDep) -> Any:
    return _json(service.comment(conn, actor, incident_id, body.text, clock=clock, channel="api"))


@alerts_api.post("/{incident_id}/resolve")
def resolve(incident_id: IncidentId, body: ResolveIn, actor: Actor, conn: Conn, clock: ClockDep) -> Any:
    return _json(service.resolve(conn, actor, incident_id, body.outcome, body.note, clock=clock,
                                 away_until=body.away_until, channel="api"))
