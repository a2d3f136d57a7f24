"""Operations surface shared by every stage: structured logs, Prometheus metrics, health and readiness.

Stages define their metrics with ``prometheus_client`` in their own ``metrics.py`` (names start with
``mimamori_``) and register a readiness check here (``register_readiness("ingest", fn)``). A stage
process serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``Settings.ops_port`` through
:func:`start_ops_server`; the web app serves the same three paths on its own port. In ``serve`` all
stages share one process, so one endpoint exports them all.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from mimamori.kernel.config import Settings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], bool]
_checks: dict[str, ReadinessCheck] = {}
_checks_lock = threading.Lock()


def register_readiness(name: str, check: ReadinessCheck) -> None:
    """``check()`` answers quickly whether the stage can do its work now (e.g. its database is reachable)."""
    with _checks_lock:
        _checks[name] = check


def unregister_readiness(name: str) -> None:
    with _checks_lock:
        _checks.pop(name, None)


def readiness() -> tuple[bool, dict[str, bool]]:
    with _checks_lock:
        checks = dict(_checks)
    results: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception:  # a failing check means "not ready", never a crashed endpoint
            log.debug("readiness check %s raised", name, exc_info=True)
            results[name] = False
    return all(results.values()), results


def render_metrics() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class _OpsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype = render_metrics()
            self._reply(200, body, ctype)
        elif path in ("/healthz", "/livez"):
            self._reply(200, b'{"status":"ok"}', "application/json")
        elif path == "/readyz":
            ok, results = readiness()
            body = json.dumps({"status": "ready" if ok else "not ready", "checks": results}).encode()
            self._reply(200 if ok else 503, body, "application/json")
        else:
            self._reply(404, b'{"detail":"not found"}', "application/json")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name; scrapes every 15 s would flood the log
        pass


class OpsServer:
    def __init__(self, host: str, port: int) -> None:
        self._server = ThreadingHTTPServer((host, port), _OpsHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_ops_server(settings: Settings) -> OpsServer | None:
    """Serve /metrics, /healthz, /readyz when ``settings.ops_port`` is set (0 = off)."""
    if not settings.ops_port:
        return None
    server = OpsServer(settings.ops_host, settings.ops_port).start()
    log.info("operations endpoint on http://%s:%d/metrics", settings.ops_host, server.port)
    return server


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra={...}`` fields."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._standard and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
