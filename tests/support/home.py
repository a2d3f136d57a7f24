"""A home's local broker as the adapters see it: messages through ``normalise`` with the memory
kept between them, as the gateway keeps it (shared by the per-dialect adapter tests).
"""

from __future__ import annotations

import json

from mimamori.gateway.adapters import Layout, Outcome, normalise
from mimamori.gateway.dialects.base import DEFAULT_LAYOUT

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class Home:
    def __init__(self, layout: Layout = DEFAULT_LAYOUT, *, assume_known: bool = False) -> None:
        self.memory: dict[str, str] = {}
        self.layout = layout
        self.assume_known = assume_known
        self.now = NOW

    def send(self, topic: str, payload: bytes | str | dict | list, *, retained: bool = False, after_s: float = 0.0) -> Outcome:
        self.now += int(after_s * 1000)
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        out = normalise(topic, payload, now_ms=self.now, memory=self.memory, retained=retained, layout=self.layout,
                        assume_known=self.assume_known)
        self.memory.update(out.memory_updates)
        return out

    def kinds(self, topic: str, payload: bytes | str | dict | list, **kw: object) -> list[tuple[str, str]]:
        out = self.send(topic, payload, **kw)  # type: ignore[arg-type]
        assert out.rejection is None, out.rejection
        return [(r.device_id, r.kind) for r in out.readings]

    def summary(self, topic: str, payload: bytes | str | dict | list, **kw: object) -> tuple[str, str | None]:
        out = self.send(topic, payload, **kw)  # type: ignore[arg-type]
        assert out.summary is not None
        return out.summary.outcome, out.summary.kind if out.summary.outcome == "event" else out.summary.reason


def rejected(out: Outcome) -> str:
    assert out.rejection is not None and not out.readings
    assert out.summary is not None and out.summary.outcome == "rejected"
    return out.rejection.reason
