"""One module per local dialect, all the same shape: ``NAME`` and a pure
``handle(topic, payload, ctx) -> Outcome | None`` (None: not this dialect's topic). ``DIALECTS`` is
the order in which they are asked: fixed prefixes first, Shelly Gen2's suffix match before Gen1's
``shellies/`` (a Gen2 prefix may start with ``shellies/``)."""

from __future__ import annotations

from . import native, shelly, shelly_gen1, tasmota, zigbee2mqtt
from .base import DEFAULT_LAYOUT, IGNORED_UNKNOWN, Context, Layout, Outcome, Reading, Rejection, Summary, device_id_for

DIALECTS = (native, zigbee2mqtt, tasmota, shelly, shelly_gen1)

__all__ = ["DEFAULT_LAYOUT", "DIALECTS", "IGNORED_UNKNOWN", "Context", "Layout", "Outcome", "Reading", "Rejection", "Summary", "device_id_for"]
