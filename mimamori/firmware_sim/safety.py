"""Simulated residents answering an area safety check (安否確認).

``SafetyResidents`` listens, as the homes' gateways do, to the command topics of the simulated
gateways; when a bulb is asked to blink, the resident of that home behaves as planned:

- ``double_toggle``: switches that bulb twice (off→on or on→off→on) ``gap_s`` apart — "I am safe";
- ``single_toggle``: switches it once (ordinary use: a sign of life, not an answer);
- ``spread_toggles``: switches it twice, ``spread_s`` apart (too slow to be the gesture);
- ``motion``: walks past a motion sensor (or opens the door) — a sign of life;
- ``silent``: nothing (not home, or cannot).

Events are published like a gateway's uplink (``mimamori/v1/<gw>/<device>/event``, QoS 1, the
protocol's codec, per-device increasing ``seq``), so they go through the real broker and ingest.
``set_offline`` publishes a gateway's retained ``offline`` status, as its MQTT last will would
after a power cut. The publish time of each event is kept (``published``) to measure how long
recognition takes.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import paho.mqtt.client as paho

from mimamori.kernel import mqtt, protocol
from mimamori.kernel.mqtt import MqttUrl

Behaviour = Literal["double_toggle", "single_toggle", "spread_toggles", "motion", "silent"]


@dataclass
class Home:
    household_id: str
    gateway_id: str
    bulbs: list[str]
    sensors: list[tuple[str, str]] = field(default_factory=list)  # (device_id, kind) motion/door
    behaviour: Behaviour = "silent"


class SafetyResidents:
    def __init__(self, url: MqttUrl, homes: list[Home], *, gap_s: float = 0.5, spread_s: float = 15.0,
                 react_after_s: float = 0.3, client_id: str = "sim-safety-residents") -> None:
        self.homes = {h.gateway_id: h for h in homes}
        self.gap_s, self.spread_s, self.react_after_s = gap_s, spread_s, react_after_s
        self._seq: dict[str, itertools.count[int]] = defaultdict(itertools.count)
        self._answered: set[str] = set()
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self.blinks_received: dict[str, int] = defaultdict(int)     # household -> blink commands
        self.published: dict[str, list[tuple[str, str, float]]] = defaultdict(list)  # household -> (device, kind, wall time)
        version = mqtt.negotiate_protocol(url, "auto")
        self.client = mqtt.make_client(url, client_id, protocol=version)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a, **k: self._subscribed.set()
        mqtt.connect(self.client, url)
        self.client.loop_start()
        self.client.subscribe(f"{protocol.ROOT}/+/+/cmd", qos=1)
        if not self._subscribed.wait(10):
            raise RuntimeError("simulated residents: no SUBACK")

    def set_online(self, gateway_ids: list[str], online: bool = True) -> None:
        """Retained gateway status, as a gateway publishes it (``offline`` = its last will)."""
        payload = protocol.STATUS_ONLINE if online else protocol.STATUS_OFFLINE
        infos = [self.client.publish(protocol.status_topic(g), payload, qos=1, retain=True) for g in gateway_ids]
        for info in infos:
            info.wait_for_publish(10)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            topic = protocol.parse_topic(msg.topic)
            command = protocol.decode_command(msg.payload)
        except protocol.ProtocolError:
            return
        home = self.homes.get(topic.gateway_id)
        if home is None or command.cmd != "blink":
            return
        with self._lock:
            self.blinks_received[home.household_id] += 1
            if home.household_id in self._answered:
                return  # one answer per home, whichever bulb blinked first
            self._answered.add(home.household_id)
        timer = threading.Timer(self.react_after_s, self.respond, args=(home, topic.device_id))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def respond(self, home: Home, bulb: str | None = None) -> None:
        """What the resident does when asked (also callable directly, without a blink)."""
        bulb = bulb or (home.bulbs[0] if home.bulbs else None)
        if home.behaviour == "double_toggle" and bulb:
            self._switch(home, bulb, "off")
            time.sleep(self.gap_s)
            self._switch(home, bulb, "on")
        elif home.behaviour == "single_toggle" and bulb:
            self._switch(home, bulb, "on")
        elif home.behaviour == "spread_toggles" and bulb:
            self._switch(home, bulb, "off")
            time.sleep(self.spread_s)
            self._switch(home, bulb, "on")
        elif home.behaviour == "motion":
            device, kind = home.sensors[0] if home.sensors else (bulb or "", "on")
            self._publish(home, device, "motion" if kind == "motion" else ("open" if kind == "door" else "on"))

    def _switch(self, home: Home, device: str, kind: str) -> None:
        self._publish(home, device, kind)

    def _publish(self, home: Home, device: str, kind: str) -> None:
        now = time.time()
        event = protocol.Event(device, next(self._seq[device]), int(now * 1000), kind)
        info = self.client.publish(protocol.event_topic(home.gateway_id, device), protocol.encode_event(event), qos=1)
        with self._lock:
            self.published[home.household_id].append((device, kind, now))
        info.wait_for_publish(10)

    def close(self) -> None:
        for t in self._timers:
            t.join(timeout=30)
        self.client.loop_stop()
        self.client.disconnect()
