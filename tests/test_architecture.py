"""Dependency rules (CONTRIBUTING.md, "Architecture"), checked on the source: stages meet on the wire or in the
database, the kernel imports no stage, production code never imports the simulator, and no module
imports itself back through others (no import cycles).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"gateway", "ingest", "detector", "alerts", "safety", "app"}
TOOLS = {"firmware_sim", "bench"}
#: Every package of the source tree (what the wheel installs).
PACKAGES = sorted({"mimamori"} | STAGES | TOOLS)
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


# ---------------------------------------------------------------------------------------------
# Import cycles
# ---------------------------------------------------------------------------------------------


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_targets(path: Path, module: str, modules: set[str]) -> set[str]:
    """The modules of the tree that ``path`` imports, anywhere in it (module level, inside functions, under
    ``TYPE_CHECKING``): ``from p import name`` is an import of ``p.name`` when that is a module, else of ``p``.
    """
    is_package = path.name == "__init__.py"
    targets: set[str] = set()

    def add(name: str) -> None:
        while name and name not in modules:  # an attribute of a module, or a module outside the tree
            name = name.rpartition(".")[0]
        if name:
            targets.add(name)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    targets.discard(module)
    return targets


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    modules = set(files)
    return {name: _import_targets(path, name, modules) for name, path in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), as ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(start: str) -> None:  # iterative: deep chains must not hit the recursion limit
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return [_a_cycle_in(group, graph) for group in groups]


def _a_cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
    first = min(group)
    came_from: dict[str, str] = {}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(came_from[path[-1]])
                    return [first, *reversed(path[:-1]), first] if node != first else [first, first]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    return sorted(group)


def test_no_import_cycles() -> None:
    cycles = [" -> ".join(cycle) for cycle in import_cycles(import_graph(ROOT, PACKAGES))]
    assert cycles == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import X\n")
    (package / "c.py").write_text("def f():\n    import pkg.a\n")
    (package / "d.py").write_text("from pkg import a, b\n")  # imports the cycle, is not in it
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.d"] == {"pkg.a", "pkg.b"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
