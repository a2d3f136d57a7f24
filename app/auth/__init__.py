"""Accounts and sessions. Other stages' routers (e.g. ``alerts.views``) depend on
``current_person`` / ``CurrentPerson`` from here."""

from app.auth.deps import CurrentPerson, OptionalPerson, current_person, optional_person
from app.people import Person

__all__ = ["CurrentPerson", "OptionalPerson", "Person", "current_person", "optional_person"]
