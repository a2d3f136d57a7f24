"""Adapter tests shared by every dialect (native devices, ids, the first-report rule, robustness).
Per-dialect tests: test_gateway_zigbee2mqtt.py, test_gateway_tasmota.py, test_gateway_shelly.py.
Payload sources (each dialect's tests cite theirs in detail):

- Zigbee2MQTT, "MQTT Topics and Messages" (zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html):
  ``zigbee2mqtt/FRIENDLY_NAME`` carries JSON such as ``{"occupancy": true}`` (Xiaomi RTCGQ01LM),
  ``{"state": "ON", "brightness": 215, "color_temp": 325}`` (IKEA LED1545G12), ``{"action": "single"}``;
  ``zigbee2mqtt/FRIENDLY_NAME/availability`` is retained ``online``/``offline`` (legacy) or
  ``{"state": "online"}``; friendly names may contain ``/``.
- Tasmota: ``stat/<topic>/POWER`` = ``ON``/``OFF`` (``POWER1``.. for multi-relay), ``stat/<topic>/RESULT``
  = ``{"POWER":"ON"}``, ``tele/<topic>/STATE`` = ``{"Time":"2024-02-24T22:20:38","Uptime":"0T00:10:11",
  "UptimeSec":611,"Heap":24,...,"POWER":"OFF","Wifi":{...}}``, ``tele/<topic>/LWT`` = ``Online``/``Offline``.
- Shelly Gen2 (shelly-api-docs.shelly.cloud/gen2/General/Notifications): notifications on
  ``<shelly-id>/events/rpc``; ``NotifyStatus`` params ``{"ts": <unix seconds>, "switch:0": {...changed
  attributes...}}``; ``NotifyEvent`` params ``{"ts": ..., "events": [{"component": "input:0", "id": 0,
  "event": "single_push", "ts": ...}]}``; ``<shelly-id>/online`` = ``true``/``false``.
"""

from __future__ import annotations

import json

import pytest

from mimamori.gateway.adapters import Outcome, Reading, device_id_for, normalise
from mimamori.kernel import protocol
from mimamori.kernel.protocol import Event, encode_event

pytestmark = pytest.mark.unit

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class Home:
    """Feeds messages through ``normalise`` keeping the memory, as the gateway does."""

    def __init__(self) -> None:
        self.memory: dict[str, str] = {}

    def send(self, topic: str, payload: bytes | str | dict, now_ms: int = NOW) -> Outcome:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        out = normalise(topic, payload, now_ms=now_ms, memory=self.memory)
        self.memory.update(out.memory_updates)
        return out

    def kinds(self, topic: str, payload: bytes | str | dict, now_ms: int = NOW) -> list[tuple[str, str]]:
        out = self.send(topic, payload, now_ms)
        assert out.rejection is None, out.rejection
        return [(r.device_id, r.kind) for r in out.readings]


def rejected(out: Outcome) -> str:
    assert out.rejection is not None and not out.readings
    return out.rejection.reason


# ---------------------------------------------------------------------------------------------
# native


def test_native_event_keeps_device_seq_and_time() -> None:
    payload = encode_event(Event("kitchen-bulb", 42, NOW - 5000, "on", None))
    out = normalise("mimamori/local/kitchen-bulb/event", payload, now_ms=NOW, memory={})
    assert out.readings == (Reading("kitchen-bulb", "on", NOW - 5000, None, 42),)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("mimamori/local/kitchen-bulb/event", b"{not json", "bad_json"),
        ("mimamori/local/other/event", encode_event(Event("kitchen-bulb", 1, NOW, "on")), "device_mismatch"),
        ("mimamori/local/kitchen-bulb/event", b'{"v":1,"device":"kitchen-bulb","seq":1,"ts":1,"kind":"on"}', "bad_ts"),
        ("mimamori/local/kitchen-bulb/event", b'{"v":1,"device":"kitchen-bulb","seq":1,"ts":1767225600000,"kind":"dance"}', "unknown_kind"),
        ("mimamori/local/kitchen-bulb/status", b"{}", "unrecognised_topic"),
        ("mimamori/local/_bad/event", b"{}", "bad_device_id"),
    ],
)
def test_native_rejections(topic: str, payload: bytes, reason: str) -> None:
    assert rejected(normalise(topic, payload, now_ms=NOW, memory={})) == reason


# ---------------------------------------------------------------------------------------------
# Shared rules


def test_ids_are_valid_for_any_foreign_name() -> None:
    bedroom, kitchen = device_id_for("z2m-", "寝室ライト"), device_id_for("z2m-", "台所ライト")
    assert bedroom != kitchen and protocol.valid_id(bedroom) and bedroom.startswith("z2m------")
    assert protocol.valid_id(device_id_for("", "_x"))
    long_name = "zigbee2mqtt/" + "very long name with spaces/" * 5
    out = normalise(long_name, b'{"occupancy": true}', now_ms=NOW, memory={})
    assert len(out.readings) == 1 and protocol.valid_id(out.readings[0].device_id)


def test_unknown_topics_are_ignored_and_oversized_payloads_rejected() -> None:
    out = normalise("homeassistant/sensor/x/config", b"{}", now_ms=NOW, memory={})
    assert out.readings == () and out.rejection is None and out.summary is not None and out.summary.reason == "unrecognised_topic"
    assert rejected(normalise("zigbee2mqtt/lamp", b"x" * 70_000, now_ms=NOW, memory={})) == "oversized"


def test_memory_is_not_mutated_by_normalise() -> None:
    memory = {"z2m-lamp|state": "off"}
    out = normalise("zigbee2mqtt/lamp", b'{"state":"ON"}', now_ms=NOW, memory=memory)
    assert memory == {"z2m-lamp|state": "off"}
    assert out.memory_updates["z2m-lamp|state"] == "on"


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("zigbee2mqtt/lamp", b'{"state":"ON"}'),
        ("stat/plug/POWER", b"ON"),
        ("shellyplus1-a8032abe54dc/status/switch:0", b'{"id":0,"output":true}'),
        ("shellies/shelly1-ABC/relay/0", b"on"),
    ],
)
def test_first_report_rule_is_the_same_in_every_dialect(topic: str, payload: bytes) -> None:
    """Fresh gateway: a live first report is a switch; the same message retained is a sync; a gateway
    that knows the state reports only a change."""
    live = normalise(topic, payload, now_ms=NOW, memory={})
    assert [r.kind for r in live.readings] == ["on"]
    retained = normalise(topic, payload, now_ms=NOW, memory={}, retained=True)
    assert retained.readings == () and retained.summary is not None and retained.summary.reason == "retained_sync"
    again = normalise(topic, payload, now_ms=NOW, memory=live.memory_updates)
    assert again.readings == () and again.summary is not None and again.summary.reason == "unchanged"


def test_state_reports_right_after_our_blink_are_its_echo() -> None:
    memory = {"z2m-lamp|state": "on", "z2m-lamp|sent": str(NOW + 10_000)}  # until when
    out = normalise("zigbee2mqtt/lamp", b'{"state":"OFF"}', now_ms=NOW, memory=memory)
    assert out.readings == () and out.summary is not None and out.summary.reason == "our_command"
    assert out.memory_updates["z2m-lamp|echoed"] == str(NOW)
    later = normalise("zigbee2mqtt/lamp", b'{"state":"OFF"}', now_ms=NOW + 60_000, memory=memory)
    assert [r.kind for r in later.readings] == ["off"]


def test_mutated_real_messages_never_break_an_adapter() -> None:
    """Every message of the docs-derived set with a field, a topic level or the payload replaced by
    odd values: each outcome is a summary, never an adapter exception (found: unhashable ``source``)."""
    import copy
    import random
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "gateway_docs_messages.jsonl").read_text().splitlines()]
    rnd = random.Random(13)
    odd = [None, True, 0, -1, 1e308, "ON", "", [], {}, {"a": 1}, [1, 2], {"output": True}, [{"component": None}]]
    memory: dict[str, str] = {}
    for i in range(4000):
        row = rnd.choice(rows)
        topic, payload = row["topic"], row["payload"]
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj:
            obj[rnd.choice(list(obj))] = copy.deepcopy(rnd.choice(odd))
            if isinstance(obj.get("params"), dict) and obj["params"]:
                obj["params"][rnd.choice(list(obj["params"]))] = copy.deepcopy(rnd.choice(odd))
            payload = json.dumps(obj)
        elif rnd.random() < 0.5:
            payload = rnd.choice(["", "ON", "{", "[]", "null", "1", "true", "\u00ff", "NaN"])
        if rnd.random() < 0.2:
            parts = topic.split("/")
            parts[rnd.randrange(len(parts))] = rnd.choice(["", "+", "stat", "bridge", "events", "rpc", "status", "switch:0", "tele"])
            topic = "/".join(parts)
        out = normalise(topic, payload.encode(), now_ms=NOW + i * 1000, memory=memory, retained=rnd.random() < 0.2)
        memory.update(out.memory_updates)
        assert out.summary is not None, (topic, payload)
        assert out.rejection is None or out.rejection.reason != "adapter_error", (topic, payload, out.rejection)
