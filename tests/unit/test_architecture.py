"""The import structure, read from the source with `ast`: every import counts, the ones
inside functions and under TYPE_CHECKING too, since each is a dependency a reader follows."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

# Module prefix -> folder: the top-level folders install inside pvcheck (pyproject.toml).
PACKAGES = {
    "pvcheck": "pvcheck",
    "pvcheck.app": "app",
    "pvcheck.flows": "flows",
    "pvcheck.tasks": "tasks",
    "pvcheck.deployments": "deployments",
    "bench": "bench",
}
# One module per stage (a package counts as one); none imports another for behaviour.
STAGES = (
    "pvcheck.preconditions",
    "pvcheck.facts",
    "pvcheck.routes",
    "pvcheck.deploy",
    "pvcheck.allocator",
    "pvcheck.guard",
    "pvcheck.teardown",
    "pvcheck.logscan",
    "pvcheck.evidence",
    "pvcheck.review",
)
# What the seams may speak: the model modules, nothing that does I/O.
SEAM_IMPORTS = {"pvcheck.config", "pvcheck.records"}
# Who may build the real objects: the engine task and the bench (tests aside).
# (the verify flow: its abort hook reconnects once the run and its seams are gone)
WIRING_USERS = {"pvcheck.tasks.engine", "pvcheck.flows.verify", "bench.bench"}


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in (root / folder).rglob("*.py"):  # pvcheck/'s links are not followed
            parts = path.relative_to(root / folder).with_suffix("").parts
            name = ".".join((prefix, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _target(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in its body."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                wanted = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for w in wanted if (t := _target(w, modules)) and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
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
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _stage(module: str) -> str | None:
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


def stage_crossings(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if _stage(m) and _stage(d) and _stage(m) != _stage(d)
    )


GRAPH = import_graph(ROOT)


def test_the_graph_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pvcheck"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pvcheck import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
    )
    graph = import_graph(tmp_path)
    assert graph["pvcheck.a"] == {"pvcheck.b"} and graph["pvcheck.b"] == {"pvcheck.a"}
    assert cycles(graph) == [["pvcheck.a", "pvcheck.b"]]


def test_no_import_cycle() -> None:
    assert len(GRAPH) > 50  # the walk found the project
    assert cycles(GRAPH) == []


def test_no_stage_imports_another_stage() -> None:
    assert stage_crossings(GRAPH) == []


def test_the_seams_import_only_the_model() -> None:
    assert GRAPH["pvcheck.seams"] <= SEAM_IMPORTS, GRAPH["pvcheck.seams"] - SEAM_IMPORTS


def test_only_the_entry_points_build_the_real_objects() -> None:
    users = {m for m, deps in GRAPH.items() if "pvcheck.wiring" in deps}
    assert users <= WIRING_USERS, users - WIRING_USERS
    assert not any(
        GRAPH[m] & {"pvcheck.deploy.command", "pvcheck.deploy.compose", "pvcheck.deploy.drone"}
        for m in GRAPH
        if _stage(m) and not m.startswith("pvcheck.deploy.")
    )
