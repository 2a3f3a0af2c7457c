"""The package's floors, read from the source: no import circle among the runtime's and the
stages' modules (counting imports made only for type checking or inside functions: a circle is
a circle), and no floor imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "voxbus"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[: len(up) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]], within: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v] & within:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(within):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_the_runtime_and_the_stages() -> None:
    graph = _graph()
    within = {m for m in graph if m.startswith(("voxbus.runtime", "voxbus.services"))}
    assert _cycles(graph, within) == []


def test_the_floors_import_only_downwards() -> None:
    """contracts < runtime < services: the wire language imports nothing of voxbus but itself,
    the runtime nothing of the stages, the ops tools or the dev harness."""
    graph = _graph()
    for module, deps in graph.items():
        if module.startswith("voxbus.contracts"):
            assert all(d.startswith("voxbus.contracts") for d in deps), (module, deps)
        if module.startswith("voxbus.runtime"):
            above = [d for d in deps if d.startswith(("voxbus.services", "voxbus.dev",
                                                      "voxbus.bench", "voxbus.ops"))]
            assert above == [], (module, above)
