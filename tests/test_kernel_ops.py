"""Kernel operations surface: signing key, JSON logs, /metrics, /healthz, /readyz."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from itsdangerous import BadSignature
from prometheus_client import Counter

from mimamori.kernel.config import Settings
from mimamori.kernel.observability import JsonFormatter, OpsServer, register_readiness, unregister_readiness
from mimamori.kernel.signing import secret_key, signer

pytestmark = pytest.mark.unit

TEST_COUNTER = Counter("mimamori_kernel_test_total", "Counted by the kernel ops test.")


def test_generated_secret_is_stable_private_and_per_data_dir(tmp_path: Path) -> None:
    a = Settings(data_dir=tmp_path / "a")
    assert secret_key(a) == secret_key(a)
    assert (tmp_path / "a" / "secret_key").stat().st_mode & 0o077 == 0
    assert secret_key(a) != secret_key(Settings(data_dir=tmp_path / "b"))
    assert secret_key(Settings(data_dir=tmp_path / "a", secret_key="configured")) == "configured"


def test_signed_tokens_are_bound_to_purpose_and_key(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    token = signer(s, "safety-answer").dumps({"household": 7})
    assert signer(s, "safety-answer").loads(token) == {"household": 7}
    with pytest.raises(BadSignature):
        signer(s, "csrf").loads(token)
    with pytest.raises(BadSignature):
        signer(Settings(data_dir=tmp_path, secret_key="other"), "safety-answer").loads(token)


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("ingest", logging.INFO, __file__, 1, "stored %d", (5,), None)
    record.batch = 5
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "stored 5" and entry["level"] == "info" and entry["batch"] == 5
    assert entry["logger"] == "ingest" and entry["ts"].endswith("Z")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_ops_server_serves_metrics_health_and_readiness() -> None:
    TEST_COUNTER.inc(3)
    server = OpsServer("127.0.0.1", 0).start()
    ready = {"db": True}
    register_readiness("kernel-test", lambda: ready["db"])
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(base + "/metrics")
        assert status == 200 and b"mimamori_kernel_test_total 3.0" in body
        assert _get(base + "/healthz")[0] == 200
        status, body = _get(base + "/readyz")
        assert status == 200 and json.loads(body)["checks"]["kernel-test"] is True
        ready["db"] = False
        status, body = _get(base + "/readyz")
        assert status == 503 and json.loads(body)["status"] == "not ready"
        assert _get(base + "/nope")[0] == 404
    finally:
        unregister_readiness("kernel-test")
        server.close()


def test_configure_logging_json(tmp_path: Path) -> None:
    from mimamori.kernel.observability import configure_logging

    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(Settings(data_dir=tmp_path, log_format="json"), stream=out)
        logging.getLogger("t").warning("hello")
        assert json.loads(out.getvalue().splitlines()[-1])["msg"] == "hello"
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
