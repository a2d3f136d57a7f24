"""schemathesis against the OpenAPI document, signed in as an operator (who may reach every
operation): no generated input makes the server fail (no 5xx, no unhandled exception).

The app's own operations (with the safety check's router it mounts) and the alerts stage's router
(mounted by the app under /api/alerts) are fuzzed separately, so a finding in one is not hidden
behind the other. Examples per operation are a CI budget: about 60 operations, each a request through
the ASGI app and PostgreSQL, must stay well inside the 15-minute CI run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings

from mimamori.app.main import create_app
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.config import Settings
from support.web import START, bearer, seed

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLES_PER_OPERATION = 15


def _fuzz(pg_url: str, select: Callable[[str], bool], examples: int = EXAMPLES_PER_OPERATION) -> list[str]:
    clock = ManualClock(START)
    seed(pg_url, clock)
    app = create_app(Settings(ops_networks="*"), database_url=pg_url, clock=clock)  # it reads /openapi.json
    tried = []
    with TestClient(app) as client:  # runs the lifespan: the pool is open
        headers = bearer(client, "oper")
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            operation = result.ok()
            # signing out would end the session the run uses; an event stream never ends by itself
            # (each call would hold the run until the stream's idle timeout: 15 s)
            if not select(operation.path) or "logout" in operation.path or operation.path.endswith("/stream"):
                continue

            @given(case=operation.as_strategy())
            @settings(max_examples=examples, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def no_server_error(case: schemathesis.Case) -> None:
                response = case.call(headers=headers)
                assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"

            no_server_error()
            tried.append(f"{operation.method.upper()} {operation.path}")
    return tried


def test_app_operations_have_no_server_errors(pg_url: str) -> None:
    tried = _fuzz(pg_url, lambda path: not path.startswith("/api/alerts"))
    assert len(tried) >= 28, tried


def test_alerts_router_mounted_in_app_has_no_server_errors(pg_url: str) -> None:
    # The alerts router has many write operations, each a transaction: fewer examples keep CI short.
    tried = _fuzz(pg_url, lambda path: path.startswith("/api/alerts"), examples=6)
    assert tried
