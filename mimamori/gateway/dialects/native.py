"""Native mimamori devices (our firmware and the simulator): ``mimamori/local/<device_id>/event``,
payload ``protocol.encode_event``; the device's own ``seq`` and ``ts`` are kept. Downlink:
``mimamori/local/<device_id>/cmd`` with the command as it came (the firmware blinks by itself)."""

from __future__ import annotations

from typing import Final

from mimamori.kernel import protocol

from .base import Context, Outcome, Reading, Summary, ignored, reject

NAME: Final = "native"
PREFIX: Final = "mimamori/local/"


def handle(topic: str, payload: bytes, ctx: Context) -> Outcome | None:
    if not topic.startswith(PREFIX):
        return None
    parts = topic.split("/")
    if len(parts) == 4 and parts[3] == "cmd":
        return ignored("command", device_name=parts[2])  # our own downlink, echoed by the broker
    if len(parts) != 4 or parts[3] != "event":
        return reject("unrecognised_topic", topic)
    device_id = parts[2]
    if not protocol.valid_id(device_id):
        return reject("bad_device_id", device_id)
    try:
        event = protocol.decode_event(payload, topic_device_id=device_id)
    except protocol.ProtocolError as exc:
        return reject(exc.reason, exc.detail, device_name=device_id, device_id=device_id)
    kind = event.kind
    outcome = "event" if kind in ("on", "off", "motion", "open", "close") else {"fault": "offline", "boot": "online"}.get(kind, "heartbeat")
    summary = Summary(outcome, kind if outcome == "event" else None, device_id, None, device_id)
    return Outcome((Reading(event.device_id, kind, event.ts_ms, event.value, event.seq),), summary=summary)


def command_topic(device_id: str) -> str:
    return f"{PREFIX}{device_id}/cmd"
