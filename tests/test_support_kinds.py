"""support.kinds: a test with no kind, several kinds, or a unit test that reaches a service fails the collection."""

from __future__ import annotations

import subprocess

import pytest

from support import kinds

pytestmark = pytest.mark.unit

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
markers =
    unit: pure
    integration: services
    e2e: whole path
    browser: chromium
"""
# Stand-ins named like the real service fixtures: the plugin judges by name, before any fixture runs.
CONFTEST = """
import pytest

@pytest.fixture
def pg_url():
    return "postgresql://unused"

@pytest.fixture
def seeded(pg_url):
    return pg_url
"""


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_sample=source)
    return pytester.runpytest("-p", "support.kinds", *args)


def test_one_kind_each_passes_and_the_fast_lane_selects_by_it(pytester: pytest.Pytester) -> None:
    source = """
import pytest

@pytest.mark.unit
def test_pure():
    assert 1 + 1 == 2

@pytest.mark.integration
def test_with_a_database(seeded):
    assert seeded
"""
    run(pytester, source).assert_outcomes(passed=2)
    run(pytester, source, "-m", "unit").assert_outcomes(passed=1, deselected=1)


def test_a_module_mark_is_the_kind_of_every_test_in_it(pytester: pytest.Pytester) -> None:
    source = "import pytest\npytestmark = pytest.mark.unit\n\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n"
    run(pytester, source).assert_outcomes(passed=2)


@pytest.mark.parametrize(("source", "complaint"), [
    ("def test_unmarked():\n    pass\n", "test_unmarked: no kind"),
    ("import pytest\npytestmark = pytest.mark.integration\n\n@pytest.mark.e2e\ndef test_two():\n    pass\n",
     "test_two: several kinds (e2e, integration)"),
    ("import pytest\n\n@pytest.mark.unit\ndef test_db(pg_url):\n    pass\n", "test_db: a unit test uses service fixtures (pg_url)"),
    ("import pytest\n\n@pytest.mark.unit\ndef test_db_underneath(seeded):\n    pass\n",
     "test_db_underneath: a unit test uses service fixtures (pg_url)"),
], ids=["none", "two", "service", "service-underneath"])
def test_a_wrong_kind_fails_the_collection_even_in_the_fast_lane(pytester: pytest.Pytester, source: str, complaint: str) -> None:
    for args in ((), ("-m", "unit")):
        result = run(pytester, source, *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*{complaint}*"])


def test_a_unit_test_that_starts_a_subprocess_fails_and_an_integration_test_may(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This test is a unit test too: lift its own guard (only that), so the inner run's guard is the one seen.
    monkeypatch.setattr(subprocess.Popen, "_execute_child", kinds.START_CHILD)
    source = """
import subprocess
import pytest

@pytest.mark.unit
def test_runs_a_tool():
    subprocess.run(["true"], check=True)

@pytest.mark.integration
def test_runs_it_too():
    subprocess.run(["true"], check=True)
"""
    result = run(pytester, source)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_runs_a_tool: a unit test starts no subprocess*"])
