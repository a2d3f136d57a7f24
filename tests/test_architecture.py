"""Dependency rules (CONTRIBUTING.md, "Architecture"), checked on the source: stages meet on the wire or in the
database, the kernel imports no stage, production code never imports the simulator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"gateway", "ingest", "detector", "alerts", "safety", "app"}
TOOLS = {"firmware_sim", "bench"}
# The CLI layer wires everything together and imports stages lazily, inside functions.
CLI_LAYER = {"mimamori/cli", "mimamori/demo.py", "mimamori/stages.py"}
# The app may call the alert engine's and the safety check's service functions; the safety check reuses
# the alert engine's claim, timeline and delivery queue.
ALLOWED = {("app", "alerts"), ("app", "safety"), ("safety", "alerts")}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_kernel_imports_no_stage() -> None:
    offenders = []
    for path in _package_files("mimamori"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in CLI_LAYER or rel.rsplit("/", 1)[0] in CLI_LAYER:
            continue
        bad = _imports(path) & (STAGES | TOOLS)
        if bad:
            offenders.append((rel, sorted(bad)))
    assert offenders == []


def test_stages_do_not_import_each_other_or_the_simulator() -> None:
    offenders = []
    for stage in STAGES:
        for path in _package_files(stage):
            bad = {name for name in _imports(path) & (STAGES | TOOLS) if name != stage and (stage, name) not in ALLOWED}
            if bad:
                offenders.append((path.relative_to(ROOT).as_posix(), sorted(bad)))
    assert offenders == []


def test_rules_catch_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import firmware_sim.fleet\nfrom ingest import service\n")
    assert _imports(bad) == {"firmware_sim", "ingest"}
