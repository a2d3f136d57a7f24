"""Dependency rules from the design, checked on the source, with no exemptions.

Layout: one distribution package, ``mimamori``. Its ``kernel`` is shared by everything and imports
nothing above it; each stage (``gateway``, ``ingest``, ``detector``, ``alerts``, ``safety``, ``app``)
imports the kernel and, where allowed below, another stage's service functions; ``firmware_sim`` and
``bench`` drive the stages and are never imported by them; the composition root (``mimamori.cli``,
``mimamori.demo``, ``mimamori.runtime``) sits above all of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mimamori"
STAGES = {"gateway", "ingest", "detector", "alerts", "safety", "app"}
TOOLS = {"firmware_sim", "bench"}
COMPOSITION_ROOT = {"cli", "demo", "runtime", "stages", "__main__"}
# The app may call the alert engine's and the safety check's service functions; the safety check reuses
# the alert engine's claim and timeline.
ALLOWED = {("app", "alerts"), ("app", "safety"), ("safety", "alerts")}
#: Every package of the source tree (what the wheel installs): one.
PACKAGES = ["mimamori"]


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports (module level and inside functions), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _dotted(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def _part(module: str) -> str | None:
    """Which part of the house a module belongs to: 'kernel', a stage, a tool, 'root', or None (outside)."""
    parts = module.split(".")
    if parts[0] != "mimamori":
        return None
    if len(parts) == 1 or parts[1] in COMPOSITION_ROOT:
        return "root"
    return parts[1] if parts[1] in STAGES | TOOLS | {"kernel"} else None


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _violations(files: list[Path]) -> list[tuple[str, str]]:
    found = []
    for path in files:
        source = _part(_dotted(path))
        for target in {_part(name) for name in _imports(path)} - {None, source}:
            if source == "kernel":
                bad = True  # the kernel imports no stage, tool or composition root
            elif source in STAGES:
                bad = target == "root" or target in TOOLS or (target in STAGES and (source, target) not in ALLOWED)
            elif source in TOOLS:
                bad = target == "root"
            else:
                bad = False  # the composition root may import everything
            if bad:
                found.append((path.relative_to(ROOT).as_posix(), str(target)))
    return sorted(set(found))


def test_every_module_belongs_to_a_part_of_the_house() -> None:
    strays = [p.relative_to(ROOT).as_posix() for p in _files() if _part(_dotted(p)) is None]
    assert strays == []


def test_the_kernel_stages_and_tools_import_only_downwards() -> None:
    assert _violations(_files()) == []


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    fake = tmp_path / "mimamori" / "kernel"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("from mimamori.ingest import service\n")
    stage = tmp_path / "mimamori" / "detector"
    stage.mkdir()
    (stage / "y.py").write_text("import mimamori.firmware_sim.fleet\nfrom ..alerts import flows\nfrom . import model\n")
    globals()["ROOT"] = tmp_path
    try:
        assert _violations([fake / "x.py", stage / "y.py"]) == [
            ("mimamori/detector/y.py", "alerts"), ("mimamori/detector/y.py", "firmware_sim"), ("mimamori/kernel/x.py", "ingest"),
        ]
    finally:
        globals()["ROOT"] = Path(__file__).resolve().parents[1]


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
