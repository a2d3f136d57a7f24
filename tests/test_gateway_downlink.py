"""The downlink plans a blink in each device's own language (``gateway.downlink``). Command shapes:

[z2m-set]   zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html (``<name>/set`` ``{"state":"ON"}``,
            ``TOGGLE``); zigbee2mqtt.io/devices/DS-111.html (``{"state_l1":"ON"}``)
[tas-power] tasmota.github.io/docs/Commands/ (``Power<x>`` ``ON``/``OFF``/``TOGGLE`` on ``cmnd/<topic>/``);
            github.com/arendst/Tasmota/issues/815 (``brownstone/bedroom/switch/cmnd/POWER1``)
[sh2-rpc]   gist.github.com/lordneon/140d47cd09e34d2737ad98290483a558 and github.com/mpatfield/homebridge-easy-mqtt/issues/37
            (``<prefix>/rpc`` ``{"id":1,"src":...,"method":"Switch.Set","params":{"id":0,"on":true}}``)
[sh1-cmd]   pastebin.com/zWaNqRer (``shellies/shelly1-XXXXXX/relay/0/command`` ``on``/``off``)
"""

from __future__ import annotations

import json

import pytest

from mimamori.gateway import downlink
from mimamori.gateway.adapters import Layout
from mimamori.kernel import protocol
from mimamori.kernel.protocol import Command
from support.home import NOW, Home

pytestmark = pytest.mark.unit

BLINK = Command("blink", {"times": 2, "reason": "resident_check"})


def steps(plan: downlink.Plan) -> list[tuple[float, str, object]]:
    out = []
    for s in plan.steps:
        try:
            body: object = json.loads(s.payload)
        except ValueError:
            body = s.payload.decode()
        if isinstance(body, dict) and "method" in body:
            body = (body["method"], body["params"])
        out.append((s.at_s, s.topic, body))
    return out


def test_zigbee2mqtt_blink_then_back_to_the_known_state() -> None:
    home = Home()
    home.send("zigbee2mqtt/kitchen", {"state": "ON", "brightness": 200})
    plan = downlink.plan("z2m-kitchen", BLINK, home.memory, now_ms=NOW)
    assert steps(plan) == [(0.0, "zigbee2mqtt/kitchen/set", {"state": "OFF"}), (1.0, "zigbee2mqtt/kitchen/set", {"state": "ON"}),
                           (2.0, "zigbee2mqtt/kitchen/set", {"state": "OFF"}), (3.0, "zigbee2mqtt/kitchen/set", {"state": "ON"})]  # [z2m-set]
    assert plan.memory == {"z2m-kitchen|sent": str(NOW + 13_000), "z2m-kitchen|blink_at": str(NOW)}


def test_zigbee2mqtt_endpoint_and_custom_base_and_unknown_state_toggles() -> None:
    home = Home(Layout(z2m_base_topics=("zb",)))
    home.send("zb/hall/switch", {"state_l2": "OFF"})
    assert steps(downlink.plan("z2m-hall.switch.l2", BLINK, home.memory, now_ms=NOW))[0] == (0.0, "zb/hall/switch/set", {"state_l2": "ON"})  # [z2m-set]
    memory = {k: v for k, v in home.memory.items() if not k.endswith("|state")}  # state unknown: toggle pairs
    toggles = steps(downlink.plan("z2m-hall.switch.l2", BLINK, memory, now_ms=NOW))
    assert len(toggles) == 4 and all(body == {"state_l2": "TOGGLE"} for _, _, body in toggles)


def test_tasmota_power_sequence_on_the_devices_full_topic() -> None:
    home = Home(Layout(tasmota_full_topics=("brownstone/bedroom/%topic%/%prefix%/", "%prefix%/%topic%/")))
    home.send("brownstone/bedroom/switch/stat/POWER", "OFF")
    home.send("stat/strip/POWER2", "ON")
    assert steps(downlink.plan("tasmota-switch", BLINK, home.memory, now_ms=NOW))[:2] == [
        (0.0, "brownstone/bedroom/switch/cmnd/POWER", "ON"), (1.0, "brownstone/bedroom/switch/cmnd/POWER", "OFF")]  # [tas-power]
    assert steps(downlink.plan("tasmota-strip.2", BLINK, home.memory, now_ms=NOW))[0] == (0.0, "cmnd/strip/POWER2", "OFF")


def test_shelly_gen2_rpc_and_gen1_command_topics() -> None:
    home = Home()
    home.send("shellies/plus1pm/events/rpc", {"src": "shellyplus1pm-a8", "method": "NotifyStatus", "params": {"ts": 1767225000.0, "switch:0": {"id": 0, "output": False}}})  # noqa: E501
    home.send("Shelly-Garage-Lights/status/light:1", {"id": 1, "output": True, "brightness": 50})
    home.send("shellies/shelly1-XXXXXX/relay/0", "on")
    assert steps(downlink.plan("plus1pm", BLINK, home.memory, now_ms=NOW))[:2] == [
        (0.0, "shellies/plus1pm/rpc", ("Switch.Set", {"id": 0, "on": True})), (1.0, "shellies/plus1pm/rpc", ("Switch.Set", {"id": 0, "on": False}))]  # [sh2-rpc]
    assert steps(downlink.plan("Shelly-Garage-Lights.1", BLINK, home.memory, now_ms=NOW))[0] == (0.0, "Shelly-Garage-Lights/rpc", ("Light.Set", {"id": 1, "on": False}))
    assert steps(downlink.plan("shelly1-XXXXXX", BLINK, home.memory, now_ms=NOW))[:2] == [
        (0.0, "shellies/shelly1-XXXXXX/relay/0/command", "off"), (1.0, "shellies/shelly1-XXXXXX/relay/0/command", "on")]  # [sh1-cmd]


def test_native_devices_get_the_command_as_it_came() -> None:
    plan = downlink.plan("kitchen-bulb", BLINK, {}, now_ms=NOW)
    assert [(s.topic, protocol.decode_command(s.payload)) for s in plan.steps] == [("mimamori/local/kitchen-bulb/cmd", BLINK)]


def test_never_switch_and_plugs_are_refused() -> None:
    home = Home()
    home.send("zigbee2mqtt/fridge_plug", {"state": "ON", "power": 80})
    home.send("zigbee2mqtt/bridge/devices", [{"friendly_name": "fridge_plug", "definition": {"exposes": [{"type": "switch"}]}}])
    assert downlink.plan("z2m-fridge_plug", BLINK, home.memory, now_ms=NOW).refused == "plug"
    assert downlink.plan("z2m-fridge_plug", Command("blink", {"times": 1, "switch_ok": True}), home.memory, now_ms=NOW).refused is None
    home.send("stat/heater/POWER", "OFF")
    assert downlink.plan("tasmota-heater", BLINK, home.memory, now_ms=NOW, never_switch={"tasmota-heater"}).refused == "never_switch"


def test_the_blinks_own_state_reports_are_not_activity_and_confirm_it() -> None:
    home = Home()
    home.send("stat/lamp/POWER", "ON")
    plan = downlink.plan("tasmota-lamp", BLINK, home.memory, now_ms=home.now)
    home.memory.update(plan.memory)
    for payload in ("OFF", "ON", "OFF", "ON"):  # what the device answers to each step
        assert home.summary("stat/lamp/POWER", payload, after_s=1) == ("ignored", "our_command")
    assert downlink.confirmed("tasmota-lamp", home.memory)
    # The resident switches afterwards: activity, which answers the check.
    assert home.summary("stat/lamp/POWER", "OFF", after_s=60) == ("event", "off")


def test_a_silent_device_leaves_the_blink_unconfirmed() -> None:
    home = Home()
    home.send("zigbee2mqtt/lamp", {"state": "OFF"})
    home.memory.update(downlink.plan("z2m-lamp", BLINK, home.memory, now_ms=home.now).memory)
    assert not downlink.confirmed("z2m-lamp", home.memory)
