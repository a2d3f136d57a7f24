"""Classify one received MQTT message: an event, a gateway status/heartbeat, or a dead letter.

Pure (no I/O) and on the hot path: the topic is parsed once per distinct topic and cached, the
payload goes through ``protocol.decode_event``. Nothing here raises for bad input; every way a
message can be wrong ends as a ``DeadLetter`` with a short, stable reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from mimamori import protocol
from mimamori.protocol import Event, ProtocolError

#: Largest topic we look at (ids are at most 64 chars; anything longer is not ours).
MAX_TOPIC_BYTES: Final = 256
#: Parsed topics kept; beyond this the cache is cleared (bounded memory under hostile topics).
TOPIC_CACHE_SIZE: Final = 100_000


@dataclass(frozen=True, slots=True)
class EventMsg:
    gateway_id: str
    event: Event


@dataclass(frozen=True, slots=True)
class StatusMsg:
    gateway_id: str
    status: str  # "online" | "offline"


@dataclass(frozen=True, slots=True)
class GatewayHeartbeatMsg:
    gateway_id: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    payload: bytes
    reason: str
    detail: str = ""


Classified = EventMsg | StatusMsg | GatewayHeartbeatMsg | DeadLetter


def _text(raw: bytes) -> str:
    """Printable text for a dead letter column (PostgreSQL text rejects NUL)."""
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class Classifier:
    """Turns ``(topic bytes, payload bytes)`` into a ``Classified``; caches parsed topics."""

    def __init__(self) -> None:
        self._topics: dict[bytes, protocol.Topic | ProtocolError] = {}

    def topic(self, raw: bytes) -> protocol.Topic | ProtocolError:
        parsed = self._topics.get(raw)
        if parsed is None:
            parsed = _parse_topic(raw)
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[raw] = parsed
        return parsed

    def classify(self, topic: bytes, payload: bytes) -> Classified:
        parsed = self.topic(topic)
        if type(parsed) is ProtocolError:
            return DeadLetter(_text(topic[:MAX_TOPIC_BYTES * 4]), payload, parsed.reason, parsed.detail)
        channel = parsed.channel  # type: ignore[union-attr]
        try:
            if channel == "event":
                return EventMsg(parsed.gateway_id, protocol.decode_event(payload, parsed.device_id))  # type: ignore[union-attr]
            if channel == "status":
                return StatusMsg(parsed.gateway_id, _decode_status(payload))  # type: ignore[union-attr]
            if channel == "heartbeat":
                if len(payload) > protocol.MAX_PAYLOAD_BYTES:
                    raise ProtocolError("oversized", f"{len(payload)} bytes")
                return GatewayHeartbeatMsg(parsed.gateway_id, protocol.decode_gateway_heartbeat(payload))  # type: ignore[union-attr]
            raise ProtocolError("unexpected_channel", channel)
        except ProtocolError as exc:
            return DeadLetter(_text(topic), payload, exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - bad input must never stop ingest
            return DeadLetter(_text(topic), payload, "undecodable", f"{type(exc).__name__}: {exc}"[:200])


def _parse_topic(raw: bytes) -> protocol.Topic | ProtocolError:
    if len(raw) > MAX_TOPIC_BYTES:
        return ProtocolError("bad_topic", f"{len(raw)} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ProtocolError("bad_topic", "not UTF-8")
    try:
        parsed = protocol.parse_topic(text)
    except ProtocolError as exc:
        return exc
    if parsed.channel == "cmd":  # our own downlink; never ingested
        return ProtocolError("unexpected_channel", "cmd")
    return parsed


def _decode_status(payload: bytes) -> str:
    if payload == protocol.STATUS_ONLINE:
        return "online"
    if payload == protocol.STATUS_OFFLINE:
        return "offline"
    raise ProtocolError("bad_status", repr(payload[:40]))
