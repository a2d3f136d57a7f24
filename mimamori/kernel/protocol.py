"""The wire protocol between gateways and the service: the only module that builds or parses topics.

Topics (all under ``mimamori/v1``):

    mimamori/v1/<gateway_id>/<device_id>/event   QoS 1   an Event, JSON
    mimamori/v1/<gateway_id>/status              retained "online" / "offline" (offline is the last will)
    mimamori/v1/<gateway_id>/heartbeat           QoS 0   gateway liveness, JSON
    mimamori/v1/<gateway_id>/<device_id>/cmd     QoS 1   downlink Command, JSON

Event payload (compact JSON, one object)::

    {"v": 1, "device": "kitchen-bulb", "seq": 42, "ts": 1764150000123, "kind": "on", "value": null}

``ts`` is the device's clock in epoch milliseconds (UTC). ``seq`` increases by one per event of a
device; ``(device, seq)`` identifies an event, so a re-delivery is recognised and stored once.
A heartbeat does not consume a ``seq``: it carries the device's latest ``seq`` so that the
service can notice events it never received and ask the gateway to resend them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
ROOT: Final = f"mimamori/v{PROTOCOL_VERSION}"

#: Resident-caused events: the only kinds that count as activity.
ACTIVITY_KINDS: Final = frozenset({"on", "off", "motion", "open", "close"})
#: Device-health events: never activity.
HEALTH_KINDS: Final = frozenset({"heartbeat", "boot", "fault"})
EVENT_KINDS: Final = ACTIVITY_KINDS | HEALTH_KINDS

DEVICE_KINDS: Final = frozenset({"bulb", "motion", "door", "plug"})

STATUS_ONLINE: Final = b"online"
STATUS_OFFLINE: Final = b"offline"

MAX_PAYLOAD_BYTES: Final = 1024
MAX_SEQ: Final = 2**63 - 1
#: Device timestamps outside this window are rejected (2020-01-01 .. 2100-01-01, epoch ms).
MIN_TS_MS: Final = 1_577_836_800_000
MAX_TS_MS: Final = 4_102_444_800_000

#: How far a device clock may run ahead of the service (issue 17). An event dated later than its
#: receipt plus this is refused (``check_device_time``; ingest dead-letters it as ``future_ts``): one
#: event dated 2099 would otherwise hold a home's "last activity" in the future and silence it for good.
MAX_CLOCK_AHEAD_MS: Final = 5 * 60 * 1000

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")


class ProtocolError(ValueError):
    """Input that does not follow the protocol. ``reason`` is short and stable, for dead letters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def valid_id(value: object) -> bool:
    """Gateway and device ids: 1-64 chars of ``[A-Za-z0-9._:-]``, not starting with punctuation."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: object, what: str) -> str:
    if not valid_id(value):
        raise ProtocolError(f"bad_{what}_id", repr(value)[:80])
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------

EVENT_FILTER: Final = f"{ROOT}/+/+/event"
STATUS_FILTER: Final = f"{ROOT}/+/status"
HEARTBEAT_FILTER: Final = f"{ROOT}/+/heartbeat"
ACK_FILTER: Final = f"{ROOT}/+/+/ack"  # a gateway's answer to a command (was the blink seen?)
INGEST_SHARE_GROUP: Final = "ingest"


def shared(topic_filter: str, group: str = INGEST_SHARE_GROUP) -> str:
    """An MQTT v5 shared subscription of ``topic_filter`` (several consumers split the load)."""
    return f"$share/{group}/{topic_filter}"


def event_topic(gateway_id: str, device_id: str) -> str:
    return f"{ROOT}/{gateway_id}/{device_id}/event"


def command_topic(gateway_id: str, device_id: str) -> str:
    return f"{ROOT}/{gateway_id}/{device_id}/cmd"


def command_filter(gateway_id: str) -> str:
    """What a gateway subscribes to: commands for any of its devices."""
    return f"{ROOT}/{gateway_id}/+/cmd"


def ack_topic(gateway_id: str, device_id: str) -> str:
    """Uplink, QoS 1: what became of a command, ``{"cmd": "blink", "confirmed": true, ...}``."""
    return f"{ROOT}/{gateway_id}/{device_id}/ack"


def status_topic(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/status"


def heartbeat_topic(gateway_id: str) -> str:
    return f"{ROOT}/{gateway_id}/heartbeat"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic. ``channel`` is one of ``event``, ``cmd``, ``ack``, ``status``, ``heartbeat``."""

    channel: str
    gateway_id: str
    device_id: str | None = None


def parse_topic(topic: str) -> Topic:
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "mimamori":
        raise ProtocolError("bad_topic", topic[:200])
    if parts[1] != f"v{PROTOCOL_VERSION}":
        raise ProtocolError("unsupported_version", parts[1][:20])
    if len(parts) == 4 and parts[3] in ("status", "heartbeat"):
        return Topic(parts[3], check_id(parts[2], "gateway"))
    if len(parts) == 5 and parts[4] in ("event", "cmd", "ack"):
        return Topic(parts[4], check_id(parts[2], "gateway"), check_id(parts[3], "device"))
    raise ProtocolError("bad_topic", topic[:200])


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    device_id: str
    seq: int
    ts_ms: int  # device clock, epoch milliseconds UTC
    kind: str
    value: float | None = None

    @property
    def time(self) -> float:
        """Device time in epoch seconds."""
        return self.ts_ms / 1000.0

    @property
    def is_activity(self) -> bool:
        return self.kind in ACTIVITY_KINDS


def encode_event(event: Event) -> bytes:
    return json.dumps(
        {
            "v": PROTOCOL_VERSION,
            "device": event.device_id,
            "seq": event.seq,
            "ts": event.ts_ms,
            "kind": event.kind,
            "value": event.value,
        },
        separators=(",", ":"),
    ).encode()


_loads = json.loads


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        obj = _loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("bad_json", str(exc)[:120]) from None
    if type(obj) is not dict:
        raise ProtocolError("not_an_object", type(obj).__name__)
    return obj


def decode_event(payload: bytes, topic_device_id: str | None = None) -> Event:
    """Parse and validate an event payload; raise ProtocolError with a dead-letter reason.

    This is on the ingest hot path: plain checks, no model library.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("oversized", f"{len(payload)} bytes")
    obj = _json_object(payload)
    if obj.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version", repr(obj.get("v"))[:20])
    device = obj.get("device", topic_device_id)
    if not isinstance(device, str) or not valid_id(device):
        raise ProtocolError("bad_device_id", repr(device)[:80])
    if topic_device_id is not None and device != topic_device_id:
        raise ProtocolError("device_mismatch", f"{device!r} in payload, {topic_device_id!r} in topic")
    seq = obj.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise ProtocolError("bad_seq", repr(seq)[:40])
    ts = obj.get("ts")
    if type(ts) is not int or not MIN_TS_MS <= ts <= MAX_TS_MS:
        raise ProtocolError("bad_ts", repr(ts)[:40])
    kind = obj.get("kind")
    if kind not in EVENT_KINDS:
        raise ProtocolError("unknown_kind", repr(kind)[:40])
    value = obj.get("value")
    if value is not None:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ProtocolError("bad_value", repr(value)[:40])
        value = float(value)
    return Event(device, seq, ts, kind, value)


# ---------------------------------------------------------------------------------------------
# Gateway heartbeat and downlink commands
# ---------------------------------------------------------------------------------------------


def encode_gateway_heartbeat(ts_ms: int, outbox_depth: int, **extra: Any) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "ts": ts_ms, "outbox": outbox_depth, **extra}, separators=(",", ":")).encode()


def decode_gateway_heartbeat(payload: bytes) -> dict[str, Any]:
    try:
        obj = _loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("bad_json", str(exc)[:120]) from None
    if type(obj) is not dict or type(obj.get("ts")) is not int:
        raise ProtocolError("bad_heartbeat", repr(obj)[:80])
    return obj


COMMANDS: Final = frozenset({"blink", "resend"})


@dataclass(frozen=True, slots=True)
class Command:
    """A downlink command for one device.

    ``blink``: flash the bulb ``times`` times (asks the resident to respond; see alerts).
    ``resend``: the gateway republishes the device's events with ``from_seq <= seq <= to_seq``
    from its replay window.
    """

    cmd: str
    args: dict[str, Any] = field(default_factory=dict)


def encode_command(command: Command) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "cmd": command.cmd, **command.args}, separators=(",", ":")).encode()


def decode_command(payload: bytes) -> Command:
    obj = _json_object(payload)
    cmd = obj.pop("cmd", None)
    obj.pop("v", None)
    if cmd not in COMMANDS:
        raise ProtocolError("unknown_command", repr(cmd)[:40])
    if cmd == "resend":
        lo, hi = obj.get("from_seq"), obj.get("to_seq")
        if type(lo) is not int or type(hi) is not int or not 0 <= lo <= hi:
            raise ProtocolError("bad_resend_range", f"{lo!r}..{hi!r}")
    return Command(cmd, obj)


def check_device_time(ts_ms: int, received_ms: int) -> None:
    """Raise ``ProtocolError("future_ts")`` when a device time is beyond ``received_ms`` (the
    service's clock at receipt, epoch ms) plus ``MAX_CLOCK_AHEAD_MS``. Late device times are fine
    (outboxes replay old events; a clock that runs behind only delays a home's timeline).
    """
    if ts_ms > received_ms + MAX_CLOCK_AHEAD_MS:
        raise ProtocolError("future_ts", f"device time {ts_ms} is {(ts_ms - received_ms) / 1000:.0f} s after receipt ({received_ms})")
