"""Bodies of the households API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field

from mimamori.app.models import Id, Name, Text


class HouseholdSummary(BaseModel):
    household_id: str
    display_name: str
    area: str | None
    status: str
    away_until: datetime | None
    incident_id: int | None
    last_activity_at: datetime | None


class HouseholdIn(BaseModel):
    display_name: Name
    household_id: Id | None = None
    area: Name | None = None
    address: Text | None = None
    phone: str | None = Field(default=None, max_length=50, pattern=r"^[0-9+() -]*$")
    paper_consent: bool = False


class TeamMemberIn(BaseModel):
    person_id: Id
    tier: int = Field(default=1, ge=1, le=9)
    relation: Name | None = None


class AwayIn(BaseModel):
    until: date
    note: Text | None = None


class HouseholdDetail(HouseholdSummary):
    contact: dict[str, Any] | None
    team: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    heatmap: dict[str, Any]
    today: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    consent: dict[str, Any] | None

