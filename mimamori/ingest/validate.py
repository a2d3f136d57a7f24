"""Classify one received MQTT message: an event, a gateway status/heartbeat, or a dead letter.

Pure (no I/O) and on the hot path: the topic is parsed once per distinct topic and cached, the
payload goes through ``protocol.decode_event``. Nothing here raises for bad input; every way a
message can be wrong ends as a ``DeadLetter`` with a short, stable reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

from mimamori.kernel import protocol
from mimamori.kernel.protocol import Event, ProtocolError

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
        try:
            return _decode(parsed, payload)  # type: ignore[arg-type]
        except ProtocolError as exc:
            return DeadLetter(_text(topic), payload, exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - bad input must never stop ingest
            return DeadLetter(_text(topic), payload, "undecodable", f"{type(exc).__name__}: {exc}"[:200])


def _decode(parsed: protocol.Topic, payload: bytes) -> Classified:
    """The message on a well-formed topic; raises ``ProtocolError`` for a bad payload."""
    if parsed.channel == "event":
        return EventMsg(parsed.gateway_id, protocol.decode_event(payload, parsed.device_id))
    if parsed.channel == "status":
        return StatusMsg(parsed.gateway_id, _decode_status(payload))
    if parsed.channel == "heartbeat":
        if len(payload) > protocol.MAX_PAYLOAD_BYTES:
            raise ProtocolError("oversized", f"{len(payload)} bytes")
        return GatewayHeartbeatMsg(parsed.gateway_id, protocol.decode_gateway_heartbeat(payload))
    raise ProtocolError("unexpected_channel", parsed.channel)


_raw_decode_json = json.JSONDecoder().raw_decode  # decode() adds two whitespace regex calls
_EVENT_KINDS: Final = protocol.EVENT_KINDS
_MIN_TS, _MAX_TS, _MAX_SEQ = protocol.MIN_TS_MS, protocol.MAX_TS_MS, protocol.MAX_SEQ
#: Integer values beyond this take the slow path (float() of a huge int would overflow).
_MAX_INT_VALUE: Final = 2**53


def fast_event(payload: bytes, device_id: str) -> Event | None:
    """``protocol.decode_event(payload, device_id)`` for a payload that is a valid event; ``None``
    when it may not be (then the caller runs ``decode_event`` itself, which names the reason).

    ``device_id`` must come from a parsed (so valid) topic: a payload device equal to it is valid.
    Saves the bytes-encoding sniffing of ``json.loads`` and the device-id regex on the hot path;
    ``tests/test_ingest_validate.py`` checks that both agree on arbitrary payloads.
    """
    if len(payload) > protocol.MAX_PAYLOAD_BYTES:
        return None
    try:
        text = payload.decode()
        obj, end = _raw_decode_json(text)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if end != len(text) or type(obj) is not dict:  # e.g. surrounding whitespace: slow path
        return None
    get = obj.get
    if get("v", 1) != 1 or get("device", device_id) != device_id:
        return None
    seq = get("seq")
    ts = get("ts")
    kind = get("kind")
    if type(seq) is not int or not 0 <= seq <= _MAX_SEQ or type(ts) is not int or not _MIN_TS <= ts <= _MAX_TS or kind not in _EVENT_KINDS:
        return None
    value = get("value")
    if value is not None:
        if type(value) is float:
            if not math.isfinite(value):
                return None
        elif type(value) is int and -_MAX_INT_VALUE <= value <= _MAX_INT_VALUE:
            value = float(value)
        else:
            return None
    return Event(device_id, seq, ts, kind, value)


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


class DeadLetterBudget:
    """How many dead letters one source (a gateway, by the topic's id level) may have stored: a token
    bucket of ``burst`` refilled at ``per_s``. Issue 17: a gateway (or anyone with a broker account)
    could fill the table with 64 KB rows as fast as it could publish. Over budget, a dead letter is
    only counted; the next one admitted from that source is preceded by a ``rate_limited`` row that
    says how many of which reasons were not kept. Pure: the caller passes the time.
    """

    def __init__(self, *, per_s: float = 1.0, burst: float = 120.0) -> None:
        self.per_s = per_s
        self.burst = burst
        self._tokens: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)
        self._dropped: dict[str, dict[str, int]] = {}

    @staticmethod
    def source(topic: str) -> str:
        parts = topic.split("/", 3)
        return parts[2][:64] if len(parts) >= 3 and parts[0] == protocol.ROOT.split("/")[0] else "other"

    def admit(self, dl: DeadLetter, now: float) -> list[DeadLetter]:
        """The dead letters to store for ``dl``: none (over budget), it, or a summary and it."""
        src = self.source(dl.topic)
        tokens, at = self._tokens.get(src, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_s)
        if tokens < 1.0:
            self._tokens[src] = (tokens, now)
            dropped = self._dropped.setdefault(src, {})
            dropped[dl.reason] = dropped.get(dl.reason, 0) + 1
            return []
        self._tokens[src] = (tokens - 1.0, now)
        if len(self._tokens) > 100_000:  # sources are bounded by broker accounts; keep memory bounded anyway
            self._tokens.clear()
        dropped = self._dropped.pop(src, {})
        if not dropped:
            return [dl]
        summary = ", ".join(f"{reason} x{n}" for reason, n in sorted(dropped.items()))
        return [DeadLetter(f"{protocol.ROOT}/{src}" if src != "other" else "", b"", "rate_limited",
                           f"{sum(dropped.values())} dead letters from {src} not kept: {summary}"[:200]), dl]
