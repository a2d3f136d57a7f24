"""One module per local dialect, all the same shape: ``NAME`` and a pure
``handle(topic, payload, ctx) -> Outcome | None`` (None: not this dialect's topic). ``DIALECTS`` is
the order in which they are asked: fixed prefixes first, Shelly Gen2's suffix match before Gen1's
``shellies/`` (a Gen2 prefix may start with ``shellies/``).
"""

from __future__ import annotations

from typing import Protocol

from . import native, shelly, shelly_gen1, tasmota, zigbee2mqtt
from .base import DEFAULT_LAYOUT, IGNORED_UNKNOWN, Context, Layout, Outcome, Reading, Rejection, Summary, device_id_for


class Dialect(Protocol):
    """The shape of a dialect module (mypy checks each module against it)."""

    NAME: str

    def handle(self, topic: str, payload: bytes, ctx: Context) -> Outcome | None: ...


DIALECTS: tuple[Dialect, ...] = (native, zigbee2mqtt, tasmota, shelly, shelly_gen1)

__all__ = [
    "DEFAULT_LAYOUT", "DIALECTS", "IGNORED_UNKNOWN", "Context", "Dialect", "Layout", "Outcome", "Reading", "Rejection", "Summary",
    "device_id_for",
]
