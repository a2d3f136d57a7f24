"""The kinds of test, as a pytest plugin (declared in tests/conftest.py).

Every test carries exactly one of ``unit`` (pure: no database, broker, SMTP server or subprocess),
``integration`` (real PostgreSQL / Mosquitto / SMTP), ``e2e`` (several stages together on the whole
path) or ``browser`` (a real chromium); pyproject.toml declares them. The collection fails on a test
with none or several, and on a ``unit`` test that asks for a service fixture, even through another
fixture; a ``unit`` test that starts a subprocess fails. ``pytest -m unit`` stays a fast lane that needs
no services.
"""

from __future__ import annotations

import subprocess

import pytest

KINDS = ("unit", "integration", "e2e", "browser")
#: The fixtures that reach a real service (tests/conftest.py defines them).
SERVICE_FIXTURES = frozenset({"pg_server", "pg_url", "conn", "broker", "mqtt_url", "own_broker", "world", "smtp"})
#: How Popen starts a child; a unit test finds it replaced by a refusal.
START_CHILD = subprocess.Popen._execute_child  # type: ignore[attr-defined]  # the one place every subprocess passes


def kind_problem(item: pytest.Item) -> str | None:
    """Why this test's kind markers are wrong, or None when it has exactly one kind and keeps to it."""
    kinds = sorted({mark.name for mark in item.iter_markers() if mark.name in KINDS})
    if not kinds:
        return f"no kind: mark it with one of {', '.join(KINDS)}"
    if len(kinds) > 1:
        return f"several kinds ({', '.join(kinds)}): keep one"
    services = sorted(SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if kinds == ["unit"] and services:
        return f"a unit test uses service fixtures ({', '.join(services)}): mark it integration"
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything: every run checks every test
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    problems = [f"  {item.nodeid}: {problem}" for item in items if (problem := kind_problem(item))]
    if problems:
        raise pytest.UsageError("tests with a wrong kind marker (tests/support/kinds.py):\n" + "\n".join(problems))


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest) -> None:
    """A subprocess (a server, the CLI, a tool) makes a test an integration test: refuse it in a unit test.

    Other kinds are left exactly as they were (no fixture added to their setup and teardown order).
    """
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid}: a unit test starts no subprocess; mark it integration (support.kinds)")

    # Popen's own start: subprocess.run, check_output and asyncio's subprocesses all pass through it.
    request.getfixturevalue("monkeypatch").setattr(subprocess.Popen, "_execute_child", refuse)
