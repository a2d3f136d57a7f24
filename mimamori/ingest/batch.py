"""A batch of classified messages on its way to one database transaction (pure, no I/O).

The batch remembers which MQTT packet ids to acknowledge once it is committed, drops duplicates
inside itself (the database drops those across batches), and keeps only the newest gateway status
and heartbeat per gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mimamori.kernel.protocol import Event

from .validate import Classified, DeadLetter, EventMsg, GatewayHeartbeatMsg, StatusMsg

#: (device_id, seq, ts_ms, is_heartbeat): the events_identity key, plus heartbeats apart (a heartbeat
#: repeats the seq of the device's latest event).
EventKey = tuple[str, int, int, bool]


@dataclass
class Batch:
    #: MQTT connection the messages came in on; acks are only valid on that same connection.
    generation: int = 0
    #: Messages counted into this batch (valid or not, duplicates included).
    received: int = 0
    events: dict[EventKey, tuple[str, Event]] = field(default_factory=dict)
    in_batch_duplicates: int = 0
    statuses: dict[str, str] = field(default_factory=dict)
    gateway_heartbeats: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Packet ids of QoS 1 messages to PUBACK after commit.
    acks: list[int] = field(default_factory=list)
    #: Newest device time (epoch ms) among the events, for the lag metric.
    newest_ts_ms: int = 0

    def __len__(self) -> int:
        return self.received

    def add_event(self, gateway_id: str, ev: Event, mid: int = 0) -> None:
        """``add(EventMsg(gateway_id, ev), mid)`` without the wrapper (hot path)."""
        self.received += 1
        if mid:
            self.acks.append(mid)
        key = (ev.device_id, ev.seq, ev.ts_ms, ev.kind == "heartbeat")
        if key in self.events:
            self.in_batch_duplicates += 1
        else:
            self.events[key] = (gateway_id, ev)
            self.newest_ts_ms = max(self.newest_ts_ms, ev.ts_ms)

    def add_ack_only(self, mid: int = 0) -> None:
        """A message counted and acknowledged with the batch, but nothing of it stored."""
        self.received += 1
        if mid:
            self.acks.append(mid)

    def add(self, item: Classified, mid: int = 0) -> None:
        self.received += 1
        if mid:
            self.acks.append(mid)
        if type(item) is EventMsg:
            ev = item.event
            key = (ev.device_id, ev.seq, ev.ts_ms, ev.kind == "heartbeat")
            if key in self.events:
                self.in_batch_duplicates += 1
            else:
                self.events[key] = (item.gateway_id, ev)
                self.newest_ts_ms = max(self.newest_ts_ms, ev.ts_ms)
        elif type(item) is DeadLetter:
            self.dead_letters.append(item)
        elif type(item) is StatusMsg:
            self.statuses[item.gateway_id] = item.status  # arrival order: the last one wins
        elif type(item) is GatewayHeartbeatMsg:
            old = self.gateway_heartbeats.get(item.gateway_id)
            if old is None or item.body["ts"] >= old["ts"]:
                self.gateway_heartbeats[item.gateway_id] = item.body
        else:  # pragma: no cover - Classified is closed
            raise TypeError(f"cannot batch {item!r}")

    @property
    def event_rows(self) -> int:
        """Events that become rows of ``events`` (device heartbeats only update device_state)."""
        return sum(1 for _, ev in self.events.values() if ev.kind != "heartbeat")

    def singles(self) -> list[Batch]:
        """One batch per item, without acks: used to isolate an item the database refuses."""
        out: list[Batch] = []
        for gateway_id, ev in self.events.values():
            b = Batch(self.generation)
            b.add(EventMsg(gateway_id, ev))
            out.append(b)
        for gateway_id, status in self.statuses.items():
            b = Batch(self.generation)
            b.add(StatusMsg(gateway_id, status))
            out.append(b)
        for gateway_id, body in self.gateway_heartbeats.items():
            b = Batch(self.generation)
            b.add(GatewayHeartbeatMsg(gateway_id, body))
            out.append(b)
        for dl in self.dead_letters:
            b = Batch(self.generation)
            b.add(dl)
            out.append(b)
        return out

    def describe(self) -> str:
        """A short text of the single item of a batch from ``singles`` (for a dead letter)."""
        if self.events:
            (gateway_id, ev), = self.events.values()
            return f"{gateway_id}/{ev.device_id} seq={ev.seq} ts={ev.ts_ms} kind={ev.kind}"
        return repr((self.statuses, self.gateway_heartbeats))[:200]
