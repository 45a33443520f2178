"""The rooms of the house, read from the source: no import circles, callbacks/ and strategies/ never
import the Trainer's side, and the library never imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

from tests import ROOT

FOLDERS = {"trainer": ROOT / "trainer", "trainer.callbacks": ROOT / "callbacks",
           "trainer.strategies": ROOT / "strategies"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``name`` imports, at the top or inside a function."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
    return {m for m in out if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


import pytest


def test_no_import_circles():
    """Package ``__init__`` files only re-export; every other module's imports form no cycle."""
    graph = _graph()
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    edges = {m: {d for d in deps if d not in packages and d != m} for m, deps in graph.items() if m not in packages}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_callbacks_and_strategies_do_not_import_the_trainer_side():
    allowed = ("trainer.callbacks", "trainer.strategies")
    bad = [f"{m} imports {d}" for m, deps in _graph().items() if m.startswith(allowed)
           for d in deps if not d.startswith(allowed)]
    assert not bad, "\n".join(sorted(bad))


def test_the_library_does_not_import_the_command_line():
    front_doors = ("trainer.cli", "trainer.__main__")  # `trainer ...` and `python -m trainer`
    bad = [f"{m} imports {d}" for m, deps in _graph().items() if not m.startswith(front_doors)
           for d in deps if d.startswith("trainer.cli")]
    assert not bad, "\n".join(sorted(bad))
