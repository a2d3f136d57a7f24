"""The safety-check worker (filled in below)."""

from __future__ import annotations

import threading

from mimamori.clock import Clock
from mimamori.config import Settings
from mimamori.mqtt import MqttUrl


def run_safety_worker(settings: Settings, *, database_url: str, mqtt_url: MqttUrl | None, clock: Clock,
                      stop: threading.Event) -> None:
    stop.wait()
