"""``/api/me/daily-notes``: a person opts in to the daily note about a home whose team they are on (or their
own home), at an hour of their choosing, on one of their channels; and opts out. Their choice, recorded with
its time (consent)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from mimamori.alerts import daily_notes
from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.db import ClockDep, Conn
from mimamori.app.models import ID_PATTERN

api = APIRouter()
HouseholdId = Annotated[str, Path(pattern=ID_PATTERN)]


class NoteChoice(BaseModel):
    local_hour: int = Field(ge=0, le=23, description="The hour of the day, in the home's time zone.")
    weekly_isodow: int | None = Field(default=None, ge=1, le=7, description="The weekday of the weekly trend (1 = Monday).")
    channel_id: int | None = Field(default=None, description="One of your channels; none = in the app only.")


@api.get("/api/me/daily-notes")
def my_daily_notes(person: CurrentPerson, conn: Conn) -> list[dict[str, Any]]:
    return daily_notes.subscriptions(conn, person.person_id)


@api.put("/api/me/daily-notes/{household_id}")
def opt_in(household_id: HouseholdId, choice: NoteChoice, person: CurrentPerson, conn: Conn, clock: ClockDep) -> dict[str, Any]:
    return daily_notes.subscribe(conn, person, household_id, local_hour=choice.local_hour,
                                 weekly_isodow=choice.weekly_isodow, channel_id=choice.channel_id, now=clock.now())


@api.delete("/api/me/daily-notes/{household_id}")
def opt_out(household_id: HouseholdId, person: CurrentPerson, conn: Conn) -> dict[str, bool]:
    return {"removed": daily_notes.unsubscribe(conn, person.person_id, household_id)}
