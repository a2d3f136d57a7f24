"""Who is acting: the person behind a session, passed to every service function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["operator", "coordinator", "watcher", "resident"]
ROLES: tuple[Role, ...] = ("operator", "coordinator", "watcher", "resident")


@dataclass(frozen=True)
class Person:
    person_id: str
    display_name: str
    role: Role
    area: str | None = None
    household_id: str | None = None
    locale: str = "ja"

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def manages(self) -> bool:
        """Operators and coordinators manage households, devices and teams (coordinators in their area)."""
        return self.role in ("operator", "coordinator")

    def as_json(self) -> dict[str, Any]:
        return {
            "person_id": self.person_id,
            "display_name": self.display_name,
            "role": self.role,
            "area": self.area,
            "household_id": self.household_id,
            "locale": self.locale,
        }


PERSON_COLUMNS = "p.person_id, p.display_name, p.role, p.area, p.household_id, p.locale"


def person_from_row(row: tuple[Any, ...]) -> Person:
    return Person(*row)
