"""Resolve where the database and the broker are: configured, already started, or embedded.

With nothing configured, the first command that needs them (``serve``, ``demo``, ``db migrate``)
starts the embedded ones and records their addresses in ``<data_dir>/runtime.json`` so that
commands in other terminals (``mimamori sim``) reach the same services while it runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mimamori.kernel import db, embedded
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl, negotiate_protocol, url_from_settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    database_url: str
    mqtt_url: MqttUrl | None  # None: a command that needs no broker (the detector)
    mqtt_protocol: int
    embedded: list[str] = field(default_factory=list)  # what this process started

    def describe(self) -> str:
        started = f" (embedded: {', '.join(self.embedded)})" if self.embedded else ""
        broker = f", broker {self.mqtt_url}" if self.mqtt_url is not None else ""
        return f"database {_redact(self.database_url)}{broker}{started}"


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _runtime_file(settings: Settings) -> Path:
    return settings.data_dir / "runtime.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_runtime(settings: Settings) -> dict[str, object] | None:
    path = _runtime_file(settings)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _pid_alive(int(data.get("pid", 0))):
        return None
    return data


@contextlib.contextmanager
def services(settings: Settings, *, start_embedded: bool = True, migrate: bool = True,
             embedded_database: str = embedded.DATABASE_NAME, fresh_embedded_database: bool = False,
             broker_dir: Path | None = None, fresh_broker: bool = False, need_broker: bool = True) -> Iterator[Services]:
    """Yield the services to use, starting embedded ones when nothing is configured or running.

    ``embedded_database`` / ``fresh_embedded_database`` apply only to an embedded PostgreSQL started
    here (the demo starts from an empty database each time; a configured database is never dropped).
    ``broker_dir`` / ``fresh_broker`` likewise for an embedded broker's state (default: the data
    directory; fresh: emptied first, so no session or queue of an earlier run survives).
    """
    started: list[str] = []
    closers: list[object] = []
    runtime = read_runtime(settings)
    database_url = settings.database_url or (runtime or {}).get("database_url")
    mqtt = settings.mqtt_url or (runtime or {}).get("mqtt_url")
    try:
        if not database_url:
            if not start_embedded:
                raise RuntimeError("no database configured (MIMAMORI_DATABASE_URL) and no mimamori serve running")
            pg = embedded.start_postgres(settings.data_dir, database=embedded_database, fresh=fresh_embedded_database)
            closers.append(pg)
            database_url = pg.url(embedded_database)
            started.append("postgresql")
        if not mqtt and need_broker:
            if not start_embedded:
                raise RuntimeError("no broker configured (MIMAMORI_MQTT_URL) and no mimamori serve running")
            broker = embedded.start_broker(broker_dir or settings.data_dir, fresh=fresh_broker)
            closers.append(broker)
            mqtt = broker.url
            started.append(broker.kind)
        # A configured broker gets the configured credentials and CA file; an embedded one needs none.
        if mqtt:
            url: MqttUrl | None = url_from_settings(settings) if settings.mqtt_url else MqttUrl.parse(str(mqtt))
            protocol = negotiate_protocol(url, settings.mqtt_protocol)  # type: ignore[arg-type]
        else:
            url, protocol = None, 0
        svc = Services(str(database_url), url, protocol, started)
        if migrate:
            db.migrate(svc.database_url)
        if started and url is not None:
            _runtime_file(settings).parent.mkdir(parents=True, exist_ok=True)
            _runtime_file(settings).write_text(
                json.dumps({"pid": os.getpid(), "database_url": svc.database_url, "mqtt_url": str(mqtt)})
            )
        yield svc
    finally:
        if started:
            with contextlib.suppress(OSError):
                _runtime_file(settings).unlink()
        for closer in reversed(closers):
            with contextlib.suppress(Exception):
                closer.close()  # type: ignore[attr-defined]
