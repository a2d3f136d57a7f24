"""Zigbee2MQTT dialect. Every payload cites where its shape comes from:

[topics]   zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html ("MQTT Topics and Messages": device
           JSON, ``/availability``, ``/set``, ``/get``, friendly names with ``/``, base topic configurable)
[avail]    zigbee2mqtt.io/guide/configuration/device-availability.html (availability is off by default)
[legacy]   github.com/Koenkk/zigbee2mqtt.io/blob/351f24ce/docs/information/mqtt_topics_and_message_structure.md
           (``bridge/state`` plain ``online``/``offline``)
[bridge]   github.com/Dirnei/node-red-contrib-zigbee2mqtt-devices/issues/126 (``bridge/state`` became
           ``{"state":"online"}``); github.com/Koenkk/zigbee2mqtt/issues/32067 (cached states republished
           30 s after ``homeassistant/status`` online)
[#270]     github.com/Koenkk/zigbee2mqtt/issues/270 (RTCGQ11LM ``{"illuminance":122,"occupancy":true}``)
[#4006]    github.com/Koenkk/zigbee-herdsman-converters/pull/4006 (RTCGQ12LM full payload with ``state``)
[paste]    pastebin.com/yJhjpxuD (``zigbee2mqtt/0x7cb03eaa00ac34e2`` ``{"state":"OFF"}``/``{"state":"ON"}``)
[DS-111]   zigbee2mqtt.io/devices/DS-111.html (4-gang switch: ``state_l1`` .. ``state_l4``)
[#4854]    github.com/Koenkk/zigbee2mqtt/issues/4854 (plug ``{"linkquality":102,"power":9,"state":"ON"}``)
"""

from __future__ import annotations

import pytest

from mimamori.gateway.adapters import Layout
from support.home import NOW, Home, rejected

pytestmark = pytest.mark.unit

BULB = "zigbee2mqtt/0x7cb03eaa00ac34e2"  # [paste]


def test_state_changes_are_activity_and_repeats_are_not() -> None:
    home = Home()
    home.kinds(BULB, {"state": "OFF"})
    assert home.kinds(BULB, {"state": "OFF"}) == []  # [paste]: Z2M publishes each state twice
    assert home.kinds(BULB, {"state": "ON"}) == [("z2m-0x7cb03eaa00ac34e2", "on")]
    assert home.summary(BULB, {"state": "ON"}) == ("ignored", "unchanged")


def test_fresh_gateway_keeps_a_real_first_switch() -> None:
    # A new install: the first report of a bulb is a real switch unless the message says otherwise.
    home = Home()
    assert home.kinds(BULB, {"state": "ON"}) == [("z2m-0x7cb03eaa00ac34e2", "on")]  # [paste]


def test_retained_first_report_is_a_sync() -> None:
    home = Home()
    assert home.summary("zigbee2mqtt/kitchen", {"state": "ON", "brightness": 215, "color_temp": 325}, retained=True) == ("ignored", "retained_sync")  # [topics] LED1545G12  # noqa: E501
    assert home.kinds("zigbee2mqtt/kitchen", {"state": "OFF", "brightness": 215}) == [("z2m-kitchen", "off")]


def test_cached_state_with_old_last_seen_is_a_sync() -> None:
    home = Home()
    old = "2025-12-31T23:50:00.000Z"  # last_seen: ISO_8601 [topics]
    assert home.summary("zigbee2mqtt/hall", {"state": "ON", "last_seen": old}) == ("ignored", "stale_report")
    fresh = {"state": "ON", "last_seen": NOW - 800}
    assert home.summary("zigbee2mqtt/desk", fresh) == ("event", "on")  # last_seen: epoch


def test_states_right_after_bridge_start_are_syncs() -> None:
    home = Home()
    home.send("zigbee2mqtt/bridge/state", {"state": "online"})  # [bridge]
    assert home.summary(BULB, {"state": "ON"}, after_s=2) == ("ignored", "bridge_start")
    assert home.summary(BULB, {"state": "OFF"}, after_s=1) == ("event", "off")  # known now: a change
    assert home.summary("zigbee2mqtt/other", {"state": "ON"}, after_s=120) == ("event", "on")  # window over


def test_home_assistant_online_opens_the_republish_window() -> None:
    home = Home()
    home.send("homeassistant/status", "online")  # [bridge] #32067: Z2M republishes 30 s later
    assert home.summary(BULB, {"state": "ON"}, after_s=30) == ("ignored", "bridge_start")


def test_occupancy_is_motion_on_the_step_to_true() -> None:
    home = Home()
    sensor = "zigbee2mqtt/0x00158d0002006aa6"
    assert home.kinds(sensor, {"illuminance": 122, "occupancy": True}) == [("z2m-0x00158d0002006aa6", "motion")]  # [#270]
    assert home.kinds(sensor, {"illuminance": 112, "occupancy": True}) == []  # [#270] an illuminance update
    assert home.summary(sensor, {"illuminance": 112, "occupancy": False}) == ("ignored", "no_motion")
    assert home.kinds(sensor, {"illuminance": 155, "occupancy": True}) == [("z2m-0x00158d0002006aa6", "motion")]


def test_motion_sensor_payload_with_state_field_is_motion() -> None:
    home = Home(assume_known=True)
    payload = {"battery": 100, "detection_interval": 2, "linkquality": 152, "motion_sensitivity": "high", "occupancy": True,
               "state": "OFF", "temperature": 25, "update": {"state": None}, "update_available": None, "voltage": 3123}  # [#4006]
    assert home.summary("zigbee2mqtt/0x04cf8cdf3c8a82e0", payload) == ("event", "motion")


def test_contact_false_is_open_and_true_is_closed() -> None:
    home = Home()
    door = "zigbee2mqtt/front_door"
    assert home.kinds(door, {"contact": False, "battery": 91, "voltage": 3005}) == [("z2m-front_door", "open")]  # [topics] exposes
    assert home.kinds(door, {"contact": True, "battery": 91}) == [("z2m-front_door", "close")]
    assert home.kinds(door, {"contact": True, "battery": 90}) == []


def test_action_is_a_press_and_legacy_action_topic_too() -> None:
    home = Home()
    assert home.kinds("zigbee2mqtt/remote", {"action": "single"}) == [("z2m-remote", "motion")]  # [topics] WXKG01LM
    assert home.summary("zigbee2mqtt/remote", {"action": ""}) == ("ignored", "no_resident_field")
    assert home.kinds("zigbee2mqtt/remote/action", "single") == [("z2m-remote", "motion")]  # HA legacy action sensor
    assert home.summary("zigbee2mqtt/remote/action", "") == ("ignored", "empty_action")


def test_multi_endpoint_switch_gives_one_device_per_endpoint() -> None:
    home = Home()
    gang = "zigbee2mqtt/hall_switch"
    home.send(gang, {"state_l1": "OFF", "state_l2": "OFF"}, retained=True)  # [DS-111]
    assert home.kinds(gang, {"state_l1": "OFF", "state_l2": "ON"}) == [("z2m-hall_switch.l2", "on")]
    out = home.send(gang, {"state_l1": "ON", "state_l2": "ON"})
    assert out.summary is not None and (out.summary.channel, out.summary.device_id) == ("l1", "z2m-hall_switch.l1")


def test_plug_with_power_readings() -> None:
    home = Home()
    plug = "zigbee2mqtt/computer_damiano"
    assert home.kinds(plug, {"linkquality": 102, "power": 9, "state": "ON"}) == [("z2m-computer_damiano", "on")]  # [#4854]
    assert home.kinds(plug, {"linkquality": 102, "power": 7, "state": "ON"}) == []  # a power reading


@pytest.mark.parametrize("payload", [b"offline", b'{"state":"offline"}'])
def test_availability_both_forms_on_change(payload: bytes) -> None:
    home = Home()
    topic = "zigbee2mqtt/living/lamp/availability"  # friendly name with "/" [topics]
    assert home.kinds(topic, payload) == [("z2m-living.lamp", "fault")]  # [avail] [legacy]
    assert home.summary(topic, payload) == ("offline", None)
    assert home.kinds(topic, payload.replace(b"offline", b"online")) == [("z2m-living.lamp", "heartbeat")]
    assert rejected(home.send(topic, b"maybe")) == "bad_availability"


@pytest.mark.parametrize("offline", [b"offline", b'{"state":"offline"}'])
def test_bridge_state_faults_the_bridge_and_every_known_zigbee_device(offline: bytes) -> None:
    home = Home()
    home.send(BULB, {"state": "ON"})
    home.send("zigbee2mqtt/front_door", {"contact": True})
    kinds = home.kinds("zigbee2mqtt/bridge/state", offline)  # [legacy] [bridge]
    assert sorted(kinds) == [("z2m-0x7cb03eaa00ac34e2", "fault"), ("z2m-bridge", "fault"), ("z2m-front_door", "fault")]
    back = home.send("zigbee2mqtt/bridge/state", b'{"state":"online"}')
    assert back.summary is not None and back.summary.outcome == "online"
    assert sorted(r.kind for r in back.readings) == ["heartbeat"] * 3


@pytest.mark.parametrize(
    "topic",
    ["zigbee2mqtt/bridge/info", "zigbee2mqtt/bridge/logging", "zigbee2mqtt/bridge/event", "zigbee2mqtt/lamp/set",
     "zigbee2mqtt/lamp/get", "zigbee2mqtt/lamp/set/brightness", "zigbee2mqtt/bridge/response/permit_join"],
)
def test_bridge_messages_and_requests_are_ignored(topic: str) -> None:
    out = Home().send(topic, b'{"state":"ON"}')
    assert out.readings == () and out.rejection is None and out.summary is not None and out.summary.outcome == "ignored"


def test_groups_echo_their_members_and_are_ignored() -> None:
    home = Home()
    home.send("zigbee2mqtt/bridge/groups", [{"friendly_name": "living_lights", "id": 1, "members": []}], retained=True)
    assert home.summary("zigbee2mqtt/living_lights", {"state": "ON"}) == ("ignored", "group")


def test_bridge_devices_marks_plugs() -> None:
    home = Home()
    devices = [
        {"friendly_name": "heater_plug", "type": "Router", "definition": {"exposes": [{"type": "switch", "features": []}, {"type": "numeric", "name": "power"}]}},
        {"friendly_name": "bulb", "type": "Router", "definition": {"exposes": [{"type": "light", "features": []}]}},
    ]
    out = home.send("zigbee2mqtt/bridge/devices", devices, retained=True)
    assert out.memory_updates == {"plug|z2m-heater_plug": "1"}


def test_configurable_base_topic() -> None:
    home = Home(Layout(z2m_base_topics=("zigbee/upstairs",)))
    assert home.kinds("zigbee/upstairs/bedroom", {"state": "ON"}) == [("z2m-bedroom", "on")]
    assert home.summary("zigbee2mqtt/bedroom", {"state": "ON"}) == ("ignored", "unrecognised_topic")
    assert "zigbee/upstairs/#" in home.layout.subscriptions()


def test_malformed_payloads_are_rejected_not_raised() -> None:
    home = Home()
    assert rejected(home.send("zigbee2mqtt/lamp", b'{"state": ')) == "bad_json"
    assert rejected(home.send("zigbee2mqtt/lamp", b"[1, 2]")) == "not_an_object"
    assert rejected(home.send("zigbee2mqtt/lamp", b"\xff\xfe")) == "bad_json"
    assert home.kinds("zigbee2mqtt/lamp", {"state": "TOGGLE", "power_on_behavior": "previous", "x": [1]}) == []
    assert home.kinds("zigbee2mqtt/lamp", {"occupancy": "yes", "contact": 1}) == []
