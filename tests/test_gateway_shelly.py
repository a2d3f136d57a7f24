"""Shelly dialects (Gen2/Plus/Pro/Gen3 and Gen1). Every payload cites where its shape comes from:

[notif]    shelly-api-docs.shelly.cloud/gen2/General/Notifications (NotifyStatus example 1:
           ``shellypro4pm-f008d1d8b8b8`` ``{"ts":1631186545.04,"switch:0":{"id":0,"output":true,"source":"button"}}``;
           example 2 ``"cloud":{"connected":false}``; NotifyEvent ``single_push``; topic ``<shelly-id>/events/rpc``)
[mqtt2]    shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Mqtt (``<topic_prefix>/status/<component:id>``,
           ``status_ntf``; ``<topic_prefix>/online``)
[neon]     gist.github.com/lordneon/140d47cd09e34d2737ad98290483a558 (``shellyplus1-<ID>/status/switch:0`` with
           ``output``; commands on ``<prefix>/rpc``)
[arfoll]   gist.github.com/arfoll/3094d66ce5ff1e6b4f202579eb80d801 (a Plus 1PM under the prefix
           ``shellies/shellyplus1pm-XXXX``: a prefix containing ``/``)
[pr4]      github.com/ALLTERCO/shelly-script-examples/pull/4 (``{"ts":1656519645.48,"input:0":{"id":0,"state":false}}``;
           Gen1 topics ``shellies/<model>-<deviceid>/relay/0`` on/off)
[gen1]     pastebin.com/zWaNqRer (Gen1 ``shellies/shelly1-XXXXXX/relay/0`` ``on``/``off``, ``.../online``
           ``true``/``false``, Shelly 2 ``relay/1``)
[#298]     github.com/bieniu/ha-shellies-discovery/issues/298 (``shellies/shelly1l-84CCA8ADE50D/input_event/0``,
           event ``S``/``L``)
[#17]      github.com/windkh/node-red-contrib-shelly/issues/17 (Shelly Motion
           ``{"motion":true,"timestamp":1622300251,"active":true,"vibration":false,"lux":2063,"bat":97}``)
"""

from __future__ import annotations

import pytest

from mimamori.gateway.dialects.base import Reading
from support.home import NOW, Home, rejected

pytestmark = pytest.mark.unit

PRO = "shellypro4pm-f008d1d8b8b8"


def rpc(src: str, method: str, params: object) -> dict:
    return {"src": src, "dst": "user_1", "method": method, "params": params}


def test_notify_status_switch_uses_device_time() -> None:
    home = Home()
    out = home.send(f"{PRO}/events/rpc", rpc(PRO, "NotifyStatus", {"ts": 1631186545.04, "switch:0": {"id": 0, "output": True, "source": "button"}}))  # [notif]
    assert out.readings == (Reading(PRO, "on", 1_631_186_545_040),)  # fresh gateway: a real first switch
    assert out.summary is not None and (out.summary.device_name, out.summary.channel) == (PRO, 0)
    assert home.summary(f"{PRO}/events/rpc", rpc(PRO, "NotifyStatus", {"ts": 1624348482.25, "cloud": {"connected": False}})) == ("ignored", "not_activity")  # [notif]
    assert home.kinds(f"{PRO}/events/rpc", rpc(PRO, "NotifyStatus", {"ts": 1631186546.0, "switch:0": {"id": 0, "apower": 12.5}})) == []
    assert home.kinds(f"{PRO}/events/rpc", rpc(PRO, "NotifyStatus", {"ts": 1631186547.0, "switch:2": {"id": 2, "output": True}})) == [(f"{PRO}.2", "on")]


def test_status_topic_is_understood_and_is_the_same_device() -> None:
    home = Home()
    prefix = "shellyplus1-441793a3c1d4"
    status = {"id": 0, "source": "button", "output": True, "temperature": {"tC": 45.2, "tF": 113.4}}  # [neon] [mqtt2]
    assert home.kinds(f"{prefix}/status/switch:0", status) == [(prefix, "on")]
    events = rpc(prefix, "NotifyStatus", {"ts": 1767225000.0, "switch:0": {"id": 0, "output": False}})
    assert home.kinds(f"{prefix}/events/rpc", events) == [(prefix, "off")]
    assert home.kinds(f"{prefix}/status/switch:0", {**status, "output": False}) == []  # same device, no change


def test_prefix_with_slash_gives_one_device_id_on_every_topic() -> None:
    home = Home()
    prefix = "shellies/shellyplus1pm-XXXX"  # [arfoll]
    src = "shellyplus1pm-a8032abe54dc"
    on = home.send(f"{prefix}/events/rpc", rpc(src, "NotifyStatus", {"ts": 1767225000.0, "switch:0": {"id": 0, "output": True}}))
    off = home.send(f"{prefix}/status/switch:0", {"id": 0, "output": False})
    offline = home.send(f"{prefix}/online", "false")
    ids = {r.device_id for r in on.readings + off.readings + offline.readings}
    assert ids == {"shellyplus1pm-XXXX"}
    assert [r.kind for r in off.readings + offline.readings] == ["off", "fault"]
    assert offline.summary is not None and offline.summary.device_name == src
    assert "shellies/#" in home.layout.subscriptions()


def test_full_status_is_a_heartbeat_and_a_sync() -> None:
    home = Home()
    full = {"ts": 1767225000.0, "switch:0": {"id": 0, "output": False, "apower": 0.0}, "sys": {"uptime": 100}, "wifi": {"rssi": -60}}
    assert home.kinds(f"{PRO}/events/rpc", rpc(PRO, "NotifyFullStatus", full)) == [(PRO, "heartbeat")]
    full["switch:0"] = {"id": 0, "output": True}
    assert home.kinds(f"{PRO}/events/rpc", rpc(PRO, "NotifyFullStatus", full), after_s=600) == [(PRO, "on"), (PRO, "heartbeat")]


def test_status_right_after_online_is_a_sync() -> None:
    home = Home()
    prefix = "shellyplus1-441793a3c1d4"
    assert home.summary(f"{prefix}/online", "true") == ("online", None)  # [mqtt2]
    assert home.summary(f"{prefix}/status/switch:0", {"id": 0, "output": True}, after_s=1) == ("ignored", "boot_sync")
    retained = Home()
    assert retained.summary(f"{prefix}/status/switch:0", {"id": 0, "output": True}, retained=True) == ("ignored", "retained_sync")


def test_input_presses_and_toggles() -> None:
    home = Home()
    params = {"ts": 1631266595.43, "events": [
        {"component": "input:0", "id": 0, "event": "btn_down", "ts": 1631266595.1},
        {"component": "input:0", "id": 0, "event": "single_push", "ts": 1631266595.43},  # [notif]
        {"component": "sys", "event": "scheduled_restart", "time_ms": 1000},
    ]}
    out = home.send(f"{PRO}/events/rpc", rpc(PRO, "NotifyEvent", params))
    assert out.readings == (Reading(f"{PRO}.input0", "motion", 1_631_266_595_430),)
    plus = "shellyplus1-a8032abe54dc"
    assert home.kinds(f"{plus}/events/rpc", rpc(plus, "NotifyStatus", {"ts": 1656519645.48, "input:0": {"id": 0, "state": False}})) == [(f"{plus}.input0", "off")]  # [pr4]  # noqa: E501


def test_online_bad_time_and_malformed() -> None:
    home = Home()
    assert home.kinds(f"{PRO}/online", "false") == [(PRO, "fault")]
    out = home.send(f"{PRO}/events/rpc", rpc(PRO, "NotifyStatus", {"ts": 12.0, "switch:0": {"output": True}}))  # clock not synced
    assert out.readings == (Reading(PRO, "on", NOW),)
    assert rejected(home.send(f"{PRO}/events/rpc", b"{oops")) == "bad_json"
    assert rejected(home.send(f"{PRO}/events/rpc", rpc(PRO, "NotifyStatus", "nope"))) == "bad_params"
    assert rejected(home.send(f"{PRO}/events/rpc", rpc(PRO, "NotifyEvent", {"ts": 1.0, "events": {}}))) == "bad_events"
    assert home.summary(f"{PRO}/events/rpc", {"id": 1, "src": PRO, "dst": "me", "result": {"was_on": True}}) == ("ignored", "rpc_reply")
    assert home.summary(f"{PRO}/rpc", {"id": 1, "src": "ha", "method": "Switch.Set", "params": {"id": 0, "on": True}}) == ("ignored", "command")  # [neon]
    assert rejected(home.send(f"{PRO}/online", "yes")) == "bad_online"


# --- Gen1 ------------------------------------------------------------------------------------


def test_gen1_relay_is_activity_on_change_only() -> None:
    home = Home()
    topic = "shellies/shelly1-XXXXXX/relay/0"  # [gen1]
    assert home.kinds(topic, "on") == [("shelly1-XXXXXX", "on")]
    assert home.kinds(topic, "on", after_s=30) == []  # the periodic republish
    assert home.kinds(topic, "off") == [("shelly1-XXXXXX", "off")]
    out = home.send("shellies/shellyswitch-YYYYYY/relay/1", "on")  # [gen1] Shelly 2 second relay
    assert out.summary is not None and (out.summary.channel, out.summary.device_id) == (1, "shellyswitch-YYYYYY.1")
    assert home.summary(topic + "/command", "off") == ("ignored", "command")
    assert home.summary(topic + "/power", "12.5") == ("ignored", "not_activity")
    assert home.summary(topic, "overpower")[0] == "offline"


def test_gen1_online_and_announce() -> None:
    home = Home()
    assert home.kinds("shellies/shelly1-XXXXXX/online", "false") == [("shelly1-XXXXXX", "fault")]  # [gen1]
    home.send("shellies/shelly1-XXXXXX/announce", {"id": "shelly1-XXXXXX", "mac": "XXXXXX", "fw_ver": "1.11.8"})
    assert home.summary("shellies/shelly1-XXXXXX/relay/0", "on", after_s=1) == ("ignored", "boot_sync")


def test_gen1_input_event_counts_presses_once() -> None:
    home = Home()
    topic = "shellies/shelly1l-84CCA8ADE50D/input_event/0"  # [#298]
    assert home.kinds(topic, {"event": "S", "event_cnt": 12}) == [("shelly1l-84CCA8ADE50D.input0", "motion")]
    assert home.kinds(topic, {"event": "S", "event_cnt": 12}, after_s=30) == []  # republished
    assert home.kinds(topic, {"event": "L", "event_cnt": 13}) == [("shelly1l-84CCA8ADE50D.input0", "motion")]
    assert home.summary(topic, {"event": "", "event_cnt": 13}) == ("ignored", "no_press")


def test_gen1_input_motion_and_door() -> None:
    home = Home()
    assert home.kinds("shellies/shelly1-XXXXXX/input/0", "1") == [("shelly1-XXXXXX.input0", "on")]
    motion = {"motion": True, "timestamp": 1622300251, "active": True, "vibration": False, "lux": 2063, "bat": 97}  # [#17]
    assert home.kinds("shellies/shellymotionsensor-60A4239A6718/status", motion) == [("shellymotionsensor-60A4239A6718", "motion")]
    assert home.kinds("shellies/shellymotionsensor-60A4239A6718/sensor/motion", "true") == []  # still the same motion
    assert home.kinds("shellies/shellydw2-ABC123/sensor/state", "open") == [("shellydw2-ABC123", "open")]
    assert home.summary("shellies/shellydw2-ABC123/sensor/lux", "110") == ("ignored", "not_activity")


@pytest.mark.parametrize("topic", ["shellies/announce", "shellies/shellyht-1234/sensor/temperature", "shellies/shelly1-X/info"])
def test_gen1_non_resident_topics_are_ignored(topic: str) -> None:
    out = Home(assume_known=True).send(topic, b'{"id":"x"}')
    assert out.readings == () and out.summary is not None and out.summary.outcome == "ignored"


def test_switches_the_device_made_itself_are_not_the_resident() -> None:
    home = Home(assume_known=True)
    prefix = "shellyplus1-441793a3c1d4"
    # "source":"init" (Shelly.GetStatus after boot, shelly-script-examples#4), a timer or a schedule.
    assert home.summary(f"{prefix}/status/switch:0", {"id": 0, "source": "init", "output": False}) == ("ignored", "boot_sync")
    assert home.summary(f"{prefix}/status/switch:0", {"id": 0, "source": "timer", "output": True}) == ("ignored", "automation")
    assert home.summary(f"{prefix}/status/switch:0", {"id": 0, "source": "button", "output": False}) == ("event", "off")
