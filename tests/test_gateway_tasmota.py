"""Tasmota dialect. Every payload cites where its shape comes from:

[mqtt]     tasmota.github.io/docs/MQTT/ (FullTopic ``%prefix%/%topic%/``; stat/tele/cmnd; LWT Online/Offline)
[status]   tasmota.github.io/docs/JSON-Status-Responses/ (StatusSNS ``"Switch1":"OFF"``; StateText overrides ON)
[#337]     github.com/arendst/Tasmota/issues/337 (``stat/sonoff-3/RESULT = {"POWER":"OFF"}`` then ``stat/sonoff-3/POWER = OFF``)
[#6506]    github.com/arendst/Tasmota/issues/6506 (PIR on a switch: ``stat/sonoff/RESULT = {"POWER":"ON"}``)
[#815]     github.com/arendst/Tasmota/issues/815 (FullTopic ``brownstone/bedroom/switch/%prefix%/``;
           ``{"Command":"Unknown"}`` replies; retained ``cmnd/POWER1``)
[#51279]   github.com/home-assistant/core/issues/51279 (``tele/Luz_Teto_Sala_Switch/SENSOR`` with ``Switch1``)
[#9721]    github.com/arendst/Tasmota/pull/9721 and emontnemery/hatasmota#28 (SetOption114: ``{"Switch1":{"Action":"ON"}}``)
[gist]     gist.github.com/tablatronix/1ff3262f8ab9f73af814fbd6a77fad98 (``tele/tasmota_C59B5E/STATE`` with
           ``"UptimeSec":11`` right after a restart)
[paste]    pastebin.com/VFqm72GL (FullTopic ``%topic%/%prefix%/``: ``sypialnia_lampka/stat/RESULT``; Polish LWT
           ``Aktywny``/``Nieaktywny``)
[cpan]     metacpan.org Power::Outlet::Tasmota (``{"POWER1":"ON"}``, ``{"POWER4":"OFF"}`` replies)
[#8192]    github.com/arendst/Tasmota/issues/8192 (Zigbee2Tasmota ``Occupancy``)
"""

from __future__ import annotations

import pytest

from mimamori.gateway.adapters import Layout
from support.home import Home, rejected

pytestmark = pytest.mark.unit

DEV = "tasmota_9CF9D1"


def test_power_plain_and_json_and_result() -> None:
    home = Home()
    assert home.kinds("stat/sonoff-3/RESULT", {"POWER": "OFF"}) == [("tasmota-sonoff-3", "off")]  # [#337]
    assert home.kinds("stat/sonoff-3/POWER", "OFF") == []  # [#337] the same change on the second topic
    assert home.kinds("stat/sonoff-3/POWER", "ON") == [("tasmota-sonoff-3", "on")]
    assert home.kinds("stat/sonoff-3/POWER", '{"POWER":"OFF"}') == [("tasmota-sonoff-3", "off")]  # issue 13: JSON answer
    assert rejected(home.send("stat/sonoff-3/POWER", "DIM")) == "bad_power"


def test_fresh_gateway_keeps_a_real_first_switch() -> None:
    home = Home()
    assert home.summary("stat/sonoff/RESULT", {"POWER": "ON"}) == ("event", "on")  # [#6506]


def test_retained_power_is_a_sync() -> None:
    home = Home()
    assert home.summary("stat/plug/POWER", "ON", retained=True) == ("ignored", "retained_sync")  # PowerRetain 1 [mqtt]


def test_power_right_after_boot_is_a_sync() -> None:
    home = Home()
    assert home.summary("tele/tasmota_C59B5E/LWT", "Online") == ("online", None)  # [mqtt]
    assert home.summary("stat/tasmota_C59B5E/POWER", "ON", after_s=2) == ("ignored", "boot_sync")
    assert home.summary("stat/tasmota_C59B5E/POWER", "OFF", after_s=60) == ("event", "off")


def test_small_uptime_marks_a_boot() -> None:
    home = Home()
    state = {"Time": "2021-06-13T06:59:52", "Uptime": "0T00:00:11", "UptimeSec": 11, "Heap": 28, "SleepMode": "Dynamic",
             "Sleep": 50, "LoadAvg": 19, "MqttCount": 1, "POWER": "ON",
             "Wifi": {"AP": 1, "SSId": "leela", "BSSId": "F4:92:BF:7F:35:4B", "Channel": 3, "RSSI": 30, "Signal": -85,
                      "LinkCount": 1, "Downtime": "0T00:00:05"}}  # [gist]
    assert home.summary("tele/tasmota_C59B5E/STATE", state) == ("heartbeat", None)
    assert home.summary("stat/other_device/POWER", "ON", after_s=1) == ("event", "on")  # another device: no window
    fresh = Home()
    fresh.send("tele/tasmota_C59B5E/STATE", state)
    # The boot was 11 s before STATE; a POWER 5 s later is still within 30 s of it.
    assert fresh.summary("stat/tasmota_C59B5E/RESULT", {"POWER": "ON"}, after_s=5) == ("ignored", "unchanged")


def test_state_is_a_heartbeat_and_reveals_a_missed_switch() -> None:
    home = Home()
    state = {"Time": "2024-02-24T22:20:38", "Uptime": "0T00:10:11", "UptimeSec": 611, "POWER": "OFF"}
    assert home.kinds(f"tele/{DEV}/STATE", state) == [(f"tasmota-{DEV}", "heartbeat")]  # never a first activity
    assert home.kinds(f"tele/{DEV}/STATE", {**state, "POWER": "ON"}) == [(f"tasmota-{DEV}", "on"), (f"tasmota-{DEV}", "heartbeat")]


def test_multi_relay_devices_are_separate_channels() -> None:
    home = Home()
    assert home.kinds("stat/tasmota/RESULT", {"POWER4": "OFF"}) == [("tasmota-tasmota.4", "off")]  # [cpan]
    out = home.send("stat/tasmota/POWER2", "ON")
    assert out.summary is not None and (out.summary.channel, out.summary.device_id) == (2, "tasmota-tasmota.2")
    assert home.kinds("stat/tasmota/RESULT", {"POWER1": "ON"}) == [("tasmota-tasmota", "on")]  # [cpan]
    multi = {"Time": "2024-02-24T22:25:38", "POWER1": "ON", "POWER2": "ON"}
    assert home.kinds("tele/tasmota/STATE", multi) == [("tasmota-tasmota", "heartbeat"), ("tasmota-tasmota.2", "heartbeat")]


def test_lwt_covers_every_known_relay_and_localised_words() -> None:
    home = Home()
    home.send("stat/strip/POWER1", "ON")
    home.send("stat/strip/POWER2", "ON")
    assert home.kinds("tele/strip/LWT", "Offline") == [("tasmota-strip", "fault"), ("tasmota-strip.2", "fault")]
    assert home.kinds("tele/strip/LWT", "Offline") == []
    polish = Home(Layout(tasmota_full_topics=("%topic%/%prefix%/",)))
    assert polish.summary("sypialnia_lampka/tele/LWT", "Nieaktywny") == ("offline", None)  # [paste]
    assert polish.summary("sypialnia_lampka/tele/LWT", "Aktywny") == ("online", None)
    assert rejected(home.send("tele/strip/LWT", "maybe")) == "bad_lwt"


def test_detached_switch_and_button_actions() -> None:
    home = Home()
    assert home.kinds("stat/hall/RESULT", {"Switch1": {"Action": "ON"}}) == [("tasmota-hall.switch1", "on")]  # [#9721]
    assert home.kinds("stat/hall/RESULT", {"Switch1": {"Action": "OFF"}}) == [("tasmota-hall.switch1", "off")]
    assert home.kinds("stat/hall/RESULT", {"Button1": {"Action": "SINGLE"}}) == [("tasmota-hall.button1", "motion")]


def test_sensor_switches_are_periodic() -> None:
    home = Home()
    sensor = {"Time": "2021-05-31T00:02:40", "Switch1": "ON", "Switch2": "OFF", "ANALOG": {"Temperature": 47.9}, "TempUnit": "C"}  # [#51279]
    assert home.summary("tele/Luz_Teto_Sala_Switch/SENSOR", sensor) == ("ignored", "periodic_state")
    assert home.kinds("tele/Luz_Teto_Sala_Switch/SENSOR", {**sensor, "Switch1": "OFF"}) == [("tasmota-Luz_Teto_Sala_Switch.switch1", "off")]


def test_zigbee2tasmota_occupancy() -> None:
    home = Home()
    msg = {"ZbReceived": {"0xB6CD": {"Device": "0xB6CD", "Name": "HueMotion", "Occupancy": 1, "Endpoint": 2, "LinkQuality": 63}}}  # [#8192]
    assert home.kinds("tele/Zigbee/SENSOR", msg) == [("tasmota-Zigbee.HueMotion", "motion")]


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("stat/tasmota_5A9AE8/RESULT", '{"Command":"Unknown"}'),  # pastebin.com/4B0Ni1xA
        ("stat/sonoff-3/RESULT", '{"SwitchMode1":0}'),  # [#337]
        ("stat/shelly2.frontdoor/STATUS", '{"Status":{"Module":47,"Topic":"shelly2.frontdoor","Power":0}}'),  # issues/4561
        ("tele/tasmota/INFO1", '{"Module":"Sonoff Basic","Version":"9.1.0(tasmota)","FallbackTopic":"cmnd/DVES_XXX_fb/"}'),
        ("cmnd/sonoff-3/POWER", ""),
        ("tele/tasmota_C59B5E/SENSOR", '{"Time":"2021-06-13T06:59:52","DHT11":{"Temperature":23.0,"Humidity":37.0},"TempUnit":"C"}'),  # [gist]
    ],
)
def test_not_resident_messages_are_ignored(topic: str, payload: str) -> None:
    out = Home(assume_known=True).send(topic, payload)
    assert out.readings == () and out.summary is not None and out.summary.outcome == "ignored"


def test_custom_full_topic_with_levels() -> None:
    layout = Layout(tasmota_full_topics=("brownstone/bedroom/%topic%/%prefix%/",))
    home = Home(layout)
    assert home.kinds("brownstone/bedroom/switch/stat/POWER1", "ON") == [("tasmota-switch", "on")]  # [#815]
    assert home.summary("brownstone/bedroom/switch/cmnd/POWER1", "OFF", retained=True) == ("ignored", "command")  # [#815]
    assert "brownstone/bedroom/+/stat/#" in layout.subscriptions()


def test_unconfigured_full_topics_are_recognised_by_their_leaves() -> None:
    home = Home()  # default layout only
    assert home.kinds("sypialnia_lampka/stat/RESULT", {"POWER": "OFF"}) == [("tasmota-sypialnia_lampka", "off")]  # [paste]
    assert home.kinds("brownstone/bedroom/switch/stat/POWER1", "ON") == [("tasmota-switch", "on")]  # [#815]
    assert home.summary("brownstone/bedroom/switch/stat/RESULT", {"SwitchTopic": "switch"}) == ("ignored", "command_reply")  # [#815]
    assert home.summary("some/where/stat/else", "ON") == ("ignored", "unrecognised_topic")
    subs = home.layout.subscriptions()
    assert "+/stat/+" in subs and "+/+/stat/+" in subs


def test_state_poll_answer_and_full_topic_without_prefix() -> None:
    home = Home(assume_known=True)
    # A "State" command's answer on RESULT (github.com/joBr99/nspanel-lovelace-ui/issues/702): periodic, a heartbeat.
    poll = {"Time": "2023-01-18T21:11:16", "Uptime": "0T00:00:09", "UptimeSec": 9, "Heap": 127, "POWER1": "OFF", "POWER2": "ON"}
    assert home.summary("stat/tasmota_0DBF2C/RESULT", poll) == ("heartbeat", None)
    # FullTopic home/primopiano/%topic%/ (github.com/arendst/Tasmota/issues/9134) and StateText "1"
    # (github.com/jneilliii/OctoPrint-Tasmota/issues/150).
    assert home.kinds("home/primopiano/lucicorridoio_lucescale/RESULT", {"POWER1": "1"}) == [("tasmota-lucicorridoio_lucescale", "on")]
    assert home.summary("home/primopiano/lucicorridoio_lucescale/RESULT", {"NAME": "Shelly 2.5", "GPIO": [56, 255]}) == ("ignored", "command_reply")


def test_configured_full_topic_without_prefix_does_not_break() -> None:
    home = Home(Layout(tasmota_full_topics=("home/primopiano/%topic%/",)))
    assert home.kinds("home/primopiano/scale/POWER", "ON") == [("tasmota-scale", "on")]
    assert "home/primopiano/+/#" in home.layout.subscriptions()
