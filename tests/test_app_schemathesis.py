"""schemathesis against the OpenAPI document, signed in as an operator (who may reach every
operation): no generated input makes the server fail (no 5xx, no unhandled exception)."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from app.main import create_app
from mimamori.clock import ManualClock
from mimamori.config import Settings
from test_app_support import START, bearer, seed

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLES_PER_OPERATION = 15


def test_no_server_errors(pg_url: str) -> None:
    clock = ManualClock(START)
    seed(pg_url, clock)
    app = create_app(Settings(), database_url=pg_url, clock=clock)
    with TestClient(app) as client:  # runs the lifespan: the pool is open
        headers = bearer(client, "oper")
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 25
        tried = []
        for operation in operations:
            if "logout" in operation.path:  # signing out would end the session the run uses
                continue

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def no_server_error(case: schemathesis.Case) -> None:
                response = case.call(headers=headers)
                assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"

            no_server_error()
            tried.append(f"{operation.method.upper()} {operation.path}")
    assert len(tried) == len(operations) - 2
