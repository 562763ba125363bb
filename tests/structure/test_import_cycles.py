"""No import cycle inside core/: checked on the source (every import, also those inside functions)
and by importing each module alone in a fresh interpreter, leaves first.

A lazy import inside a function hides a cycle only until two modules call each other while one of
them is still loading, so the static check counts function-level imports as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the core modules it imports anywhere in its source. ``from pkg import sub`` counts
    as importing ``pkg.sub`` (a submodule's own package is not a dependency it adds)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in modules:
                        deps.add(sub)
                    elif node.module in modules:
                        deps.add(node.module)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_core():
    found = cycles(import_graph())
    assert not found, f"import cycles in core/: {found}"


def test_leaf_modules_import_nothing_of_ours():
    graph = import_graph()
    for leaf in ("core.models.paths", "core.choices", "core.net"):
        assert graph[leaf] == set(), (leaf, graph[leaf])


def test_each_models_module_imports_alone_in_a_fresh_interpreter():
    """Leaves first, then the modules that use them: each alone, so none relies on another having
    been imported before it."""
    names = ["core.choices", "core.net", "core.models.paths", "core.models.errors", "core.models.hubs",
             "core.models.local", "core.models.download", "core.models.resolve", "core.models", "core.data.tokenizer",
             "core.train.data", "core.train.backends", "core.commands.models", "core.demo"]
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    for name in names:
        done = subprocess.run([sys.executable, "-c", code, name], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"import {name} failed:\n{done.stderr[-2000:]}"
