"""schemathesis against the safety check's operations in the app's OpenAPI document (signed in as
an operator): no generated input makes the server fail."""

from __future__ import annotations

import pytest

from test_app_schemathesis import _fuzz

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_safety_operations_have_no_server_errors(pg_url: str) -> None:
    tried = _fuzz(pg_url, lambda path: path.startswith("/api/safety"), examples=2)
    assert len(tried) >= 11, tried
