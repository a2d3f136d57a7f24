"""Adapter unit tests. Payloads follow what each project documents:

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

from gateway.adapters import Outcome, Reading, device_id_for, normalise
from mimamori import protocol
from mimamori.protocol import Event, encode_event

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
# Zigbee2MQTT


def test_z2m_bulb_reports_only_state_changes() -> None:
    home = Home()
    bulb = "zigbee2mqtt/living_room/bulb"
    # First report after (re)start: a state sync, not activity.
    assert home.kinds(bulb, {"state": "OFF", "brightness": 215, "linkquality": 96}) == []
    assert home.kinds(bulb, {"state": "ON", "brightness": 215, "color_temp": 325, "linkquality": 90}) == [("z2m-living_room.bulb", "on")]
    # Z2M republishes the full state when another attribute changes: no new activity.
    assert home.kinds(bulb, {"state": "ON", "brightness": 100, "linkquality": 80}) == []
    assert home.kinds(bulb, {"state": "ON", "brightness": 100, "linkquality": 81, "update": {"state": "idle"}}) == []
    out = home.send(bulb, {"state": "OFF", "brightness": 100})
    assert [(r.kind, r.ts_ms, r.seq) for r in out.readings] == [("off", NOW, None)]


def test_z2m_on_carries_brightness_as_value() -> None:
    home = Home()
    home.send("zigbee2mqtt/lamp", {"state": "OFF"})
    out = home.send("zigbee2mqtt/lamp", {"state": "ON", "brightness": 215})
    assert out.readings == (Reading("z2m-lamp", "on", NOW, 215.0),)


def test_z2m_motion_only_when_occupancy_becomes_true() -> None:
    home = Home()
    pir = "zigbee2mqtt/hall_motion"
    assert home.kinds(pir, {"occupancy": True, "battery": 100, "voltage": 3025, "linkquality": 120}) == [("z2m-hall_motion", "motion")]
    assert home.kinds(pir, {"occupancy": True, "battery": 100, "linkquality": 110}) == []  # repeated
    assert home.kinds(pir, {"occupancy": False, "battery": 100}) == []  # false is never activity
    assert home.kinds(pir, {"occupancy": True, "battery": 99}) == [("z2m-hall_motion", "motion")]


def test_z2m_door_contact_false_is_open() -> None:
    home = Home()
    door = "zigbee2mqtt/front_door"
    assert home.kinds(door, {"contact": True, "battery": 91, "voltage": 3005}) == []  # sync
    assert home.kinds(door, {"contact": False, "battery": 91}) == [("z2m-front_door", "open")]
    assert home.kinds(door, {"contact": False, "battery": 90, "linkquality": 3}) == []
    assert home.kinds(door, {"contact": True}) == [("z2m-front_door", "close")]


def test_z2m_button_action_is_point_activity() -> None:
    home = Home()
    assert home.kinds("zigbee2mqtt/remote", {"action": "single", "battery": 80}) == [("z2m-remote", "motion")]
    assert home.kinds("zigbee2mqtt/remote", {"action": "", "battery": 80}) == []  # legacy action reset


def test_z2m_multi_endpoint_switch_gives_one_device_per_endpoint() -> None:
    home = Home()
    topic = "zigbee2mqtt/double_switch"
    assert home.kinds(topic, {"state_l1": "OFF", "state_l2": "OFF"}) == []
    assert home.kinds(topic, {"state_l1": "OFF", "state_l2": "ON"}) == [("z2m-double_switch.l2", "on")]


def test_z2m_availability_is_device_health_on_change() -> None:
    home = Home()
    assert home.kinds("zigbee2mqtt/lamp/availability", "online") == [("z2m-lamp", "heartbeat")]
    assert home.kinds("zigbee2mqtt/lamp/availability", '{"state":"online"}') == []  # retained repeat
    assert home.kinds("zigbee2mqtt/lamp/availability", '{"state":"offline"}') == [("z2m-lamp", "fault")]
    assert rejected(home.send("zigbee2mqtt/lamp/availability", "maybe")) == "bad_availability"


def test_z2m_low_battery_is_a_fault_once() -> None:
    home = Home()
    assert home.kinds("zigbee2mqtt/door", {"contact": True, "battery_low": False, "battery": 40}) == []
    assert home.kinds("zigbee2mqtt/door", {"contact": True, "battery_low": True, "battery": 9}) == [("z2m-door", "fault")]
    assert home.kinds("zigbee2mqtt/door", {"contact": True, "battery_low": True, "battery": 8}) == []


@pytest.mark.parametrize(
    "topic",
    ["zigbee2mqtt/bridge/state", "zigbee2mqtt/bridge/devices", "zigbee2mqtt/bridge/logging", "zigbee2mqtt/lamp/set", "zigbee2mqtt/lamp/get", "zigbee2mqtt/lamp/set/brightness"],
)
def test_z2m_bridge_and_requests_are_ignored(topic: str) -> None:
    assert normalise(topic, b'{"state":"online"}', now_ms=NOW, memory={}) == Outcome()


def test_z2m_malformed_and_unknown_fields() -> None:
    home = Home()
    assert rejected(home.send("zigbee2mqtt/lamp", b"{\"state\": ")) == "bad_json"
    assert rejected(home.send("zigbee2mqtt/lamp", b"[1, 2]")) == "not_an_object"
    assert rejected(home.send("zigbee2mqtt/lamp", b"\xff\xfe")) == "bad_json"
    # Unknown fields and odd values are ignored, never fatal.
    assert home.kinds("zigbee2mqtt/lamp", {"state": "TOGGLE", "power_on_behavior": "previous", "x": [1]}) == []
    assert home.kinds("zigbee2mqtt/lamp", {"occupancy": "yes", "contact": 1}) == []


def test_z2m_ieee_named_device_and_ids_are_valid() -> None:
    home = Home()
    assert home.kinds("zigbee2mqtt/0x00158d0001a2b3c4", {"occupancy": True}) == [("z2m-0x00158d0001a2b3c4", "motion")]
    long_name = "zigbee2mqtt/" + "very long name with spaces/" * 5
    out = home.send(long_name, {"occupancy": True})
    assert len(out.readings) == 1 and protocol.valid_id(out.readings[0].device_id)
    bedroom, kitchen = device_id_for("z2m-", "寝室ライト"), device_id_for("z2m-", "台所ライト")
    assert bedroom != kitchen and protocol.valid_id(bedroom) and bedroom.startswith("z2m------")
    assert protocol.valid_id(device_id_for("", "_x"))


# ---------------------------------------------------------------------------------------------
# Tasmota


def test_tasmota_power_changes() -> None:
    home = Home()
    assert home.kinds("stat/tasmota_9CF9D1/POWER", "OFF") == []  # first sighting: sync
    assert home.kinds("stat/tasmota_9CF9D1/POWER", "ON") == [("tasmota-tasmota_9CF9D1", "on")]
    assert home.kinds("stat/tasmota_9CF9D1/POWER", "ON") == []  # poll answer, unchanged
    assert home.kinds("stat/tasmota_9CF9D1/RESULT", {"POWER": "OFF"}) == [("tasmota-tasmota_9CF9D1", "off")]
    assert rejected(home.send("stat/tasmota_9CF9D1/POWER", "DIM")) == "bad_power"


def test_tasmota_multi_relay_devices_are_separate() -> None:
    home = Home()
    home.send("stat/strip/POWER1", "OFF")
    home.send("stat/strip/POWER2", "OFF")
    assert home.kinds("stat/strip/POWER2", "ON") == [("tasmota-strip.2", "on")]
    assert home.kinds("stat/strip/RESULT", {"POWER1": "ON", "POWER2": "ON"}) == [("tasmota-strip", "on")]
    # Relay 1 as POWER1 and as POWER is the same device (SetOption26).
    assert home.kinds("stat/strip/POWER", "OFF") == [("tasmota-strip", "off")]


def test_tasmota_tele_state_is_heartbeat_and_state_sync() -> None:
    home = Home()
    state = {
        "Time": "2024-02-24T22:20:38", "Uptime": "0T00:10:11", "UptimeSec": 611, "Heap": 24, "SleepMode": "Dynamic",
        "Sleep": 50, "LoadAvg": 19, "MqttCount": 1, "POWER": "OFF",
        "Wifi": {"AP": 1, "SSId": "ESP-Network", "RSSI": 44, "Signal": -78, "LinkCount": 1, "Downtime": "0T00:00:05"},
    }
    assert home.kinds("tele/tasmota_9CF9D1/STATE", state) == [("tasmota-tasmota_9CF9D1", "heartbeat")]
    assert home.kinds("tele/tasmota_9CF9D1/STATE", state) == [("tasmota-tasmota_9CF9D1", "heartbeat")]
    # The relay was switched while we missed stat/POWER: the periodic state reveals it.
    assert home.kinds("tele/tasmota_9CF9D1/STATE", {**state, "POWER": "ON"}) == [
        ("tasmota-tasmota_9CF9D1", "on"),
        ("tasmota-tasmota_9CF9D1", "heartbeat"),
    ]
    multi = {"Time": "2024-02-24T22:25:38", "POWER1": "ON", "POWER2": "OFF"}
    assert home.kinds("tele/strip/STATE", multi) == [("tasmota-strip", "heartbeat"), ("tasmota-strip.2", "heartbeat")]


def test_tasmota_lwt_and_ignored_topics() -> None:
    home = Home()
    home.send("stat/strip/POWER1", "ON")
    home.send("stat/strip/POWER2", "ON")
    assert home.kinds("tele/strip/LWT", "Online") == [("tasmota-strip", "heartbeat"), ("tasmota-strip.2", "heartbeat")]
    assert home.kinds("tele/strip/LWT", "Online") == []
    assert home.kinds("tele/strip/LWT", "Offline") == [("tasmota-strip", "fault"), ("tasmota-strip.2", "fault")]
    assert home.kinds("tele/plug/LWT", "Online") == [("tasmota-plug", "heartbeat")]
    assert home.kinds("tele/strip/SENSOR", {"Time": "2024-02-24T22:20:38", "Switch1": "ON"}) == []
    assert home.kinds("stat/strip/STATUS11", {"StatusSTS": {}}) == []
    assert rejected(home.send("tele/strip/LWT", "maybe")) == "bad_lwt"
    assert rejected(home.send("stat/strip/RESULT", "not json")) == "bad_json"
    assert rejected(home.send("stat/a/b/POWER", "ON")) == "unrecognised_topic"


# ---------------------------------------------------------------------------------------------
# Shelly Gen2


SHELLY = "shellyplus1-441793a3c1d4"


def rpc(method: str, params: dict) -> dict:
    return {"src": SHELLY, "dst": f"{SHELLY}/events", "method": method, "params": params}


def test_shelly_notify_status_switch_uses_device_time() -> None:
    home = Home()
    topic = f"{SHELLY}/events/rpc"
    assert home.kinds(topic, rpc("NotifyStatus", {"ts": 1767225000.12, "switch:0": {"id": 0, "output": False}})) == []
    out = home.send(topic, rpc("NotifyStatus", {"ts": 1767225010.12, "switch:0": {"id": 0, "output": True, "source": "button"}}))
    assert out.readings == (Reading(SHELLY, "on", 1_767_225_010_120),)
    # Only power readings changed: no output key, no activity.
    assert home.kinds(topic, rpc("NotifyStatus", {"ts": 1767225011.0, "switch:0": {"id": 0, "apower": 12.5}})) == []
    assert home.kinds(topic, rpc("NotifyStatus", {"ts": 1767225012.0, "switch:1": {"id": 1, "output": True}})) == []
    assert home.kinds(topic, rpc("NotifyStatus", {"ts": 1767225013.0, "switch:1": {"id": 1, "output": False}})) == [(f"{SHELLY}.1", "off")]


def test_shelly_full_status_is_heartbeat_and_sync() -> None:
    home = Home()
    topic = f"{SHELLY}/events/rpc"
    full = {"ts": 1767225000.0, "switch:0": {"id": 0, "output": False, "apower": 0.0}, "sys": {"uptime": 100}, "wifi": {"rssi": -60}}
    assert home.kinds(topic, rpc("NotifyFullStatus", full)) == [(SHELLY, "heartbeat")]
    full["switch:0"] = {"id": 0, "output": True}
    assert home.kinds(topic, rpc("NotifyFullStatus", full)) == [(SHELLY, "on"), (SHELLY, "heartbeat")]
    assert home.kinds("shellyplusi4-c4d8d5/events/rpc", {"src": "shellyplusi4-c4d8d5", "method": "NotifyFullStatus", "params": {"ts": 1767225000.0, "input:0": {"id": 0, "state": None}}}) == [("shellyplusi4-c4d8d5", "heartbeat")]


def test_shelly_input_presses_are_activity() -> None:
    home = Home()
    topic = f"{SHELLY}/events/rpc"
    params = {
        "ts": 1767225020.5,
        "events": [
            {"component": "input:0", "id": 0, "event": "btn_down", "ts": 1767225020.1},
            {"component": "input:0", "id": 0, "event": "btn_up", "ts": 1767225020.3},
            {"component": "input:0", "id": 0, "event": "single_push", "ts": 1767225020.4},
            {"component": "sys", "event": "scheduled_restart", "time_ms": 1000},
        ],
    }
    out = home.send(topic, rpc("NotifyEvent", params))
    assert out.readings == (Reading(f"{SHELLY}.input0", "motion", 1_767_225_020_400),)


def test_shelly_online_and_bad_time_and_malformed() -> None:
    home = Home()
    assert home.kinds(f"{SHELLY}/online", "true") == [(SHELLY, "heartbeat")]
    assert home.kinds(f"{SHELLY}/online", "false") == [(SHELLY, "fault")]
    topic = f"{SHELLY}/events/rpc"
    home.send(topic, rpc("NotifyStatus", {"switch:0": {"output": False}}))
    out = home.send(topic, rpc("NotifyStatus", {"ts": 12.0, "switch:0": {"output": True}}))  # clock not synced
    assert out.readings == (Reading(SHELLY, "on", NOW),)
    assert rejected(home.send(topic, b"{oops")) == "bad_json"
    assert rejected(home.send(topic, rpc("NotifyStatus", "nope"))) == "bad_params"  # type: ignore[arg-type]
    assert rejected(home.send(topic, rpc("NotifyEvent", {"ts": 1.0, "events": {}}))) == "bad_events"
    assert home.kinds(topic, {"id": 1, "src": SHELLY, "dst": "me", "result": {"was_on": True}}) == []  # an RPC response
    assert rejected(home.send(f"{SHELLY}/online", "yes")) == "bad_online"


def test_unknown_topics_and_oversized_payloads_are_rejected_not_raised() -> None:
    assert rejected(normalise("homeassistant/status", b"online", now_ms=NOW, memory={})) == "unrecognised_topic"
    assert rejected(normalise("zigbee2mqtt/lamp", b"x" * 70_000, now_ms=NOW, memory={})) == "oversized"


def test_memory_is_not_mutated_by_normalise() -> None:
    memory = {"z2m-lamp|state": "off"}
    out = normalise("zigbee2mqtt/lamp", b'{"state":"ON"}', now_ms=NOW, memory=memory)
    assert memory == {"z2m-lamp|state": "off"}
    assert out.memory_updates == {"z2m-lamp|state": "on"}
