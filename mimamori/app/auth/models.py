"""Request and response bodies of the accounts API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from mimamori.app.models import Id, Name, Text

Login = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.@+-]+$")


class LoginIn(BaseModel):
    login: str = Login
    password: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]*$")


class SessionOut(BaseModel):
    person_id: str
    display_name: str
    role: str
    csrf_token: str
    #: also usable as ``Authorization: Bearer <token>`` by API clients (no CSRF needed then).
    token: str


class PersonOut(BaseModel):
    person_id: str
    display_name: str
    role: str
    area: str | None
    household_id: str | None
    locale: str


class InvitationIn(BaseModel):
    role: Literal["coordinator", "watcher", "resident"]
    display_name: Name
    household_id: Id | None = None
    area: Name | None = None
    tier: int = Field(default=1, ge=1, le=9)
    relation: Text | None = None


class InvitationOut(BaseModel):
    token: str
    url: str
    expires_at: str


class AcceptIn(BaseModel):
    login: str = Login
    password: str = Field(min_length=8, max_length=256, pattern=r"^[^\x00]*$")
    locale: Literal["ja", "en"] = "ja"
    consent: bool = False
