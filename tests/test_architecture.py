"""The house rules of the package layout, checked on the source so that they cannot drift.

- Imports flow one way: cli -> review -> run / analysis -> imaging, model, tags, keywords, cache ->
  settings, errors.
- No cycle between packages (and so none between their modules).
- No module imports another module's private (underscore) names.
- Only the cache package runs SQL.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rtagx"

#: Higher levels may import lower ones; a lower level never imports a higher one.
LEVELS = {
    "cli": 4,
    "review": 3,
    "run": 2,
    "analysis": 2,
    "imaging": 1,
    "model": 1,
    "tags": 1,
    "keywords": 1,
    "cache": 1,
    "settings": 0,
    "errors": 0,
}


def _room(module: str) -> str:
    """``rtagx.run.tag`` -> ``run``; ``rtagx.settings`` -> ``settings``; ``rtagx`` -> ``rtagx``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line) for every rtagx import, top level or local."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rtagx":
            names = [a.name for a in node.names]
            found.append((node.module, names, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "rtagx":
                    found.append((alias.name, [], node.lineno))
    return found


def test_imports_flow_one_way() -> None:
    wrong = []
    for name, tree in _modules().items():
        here = _room(name)
        if here not in LEVELS:
            continue
        for target, names, line in _imports(tree):
            targets = [target] if target != "rtagx" else [f"rtagx.{n}" for n in names]
            for t in targets:
                there = _room(t)
                if there in LEVELS and there != here and LEVELS[there] > LEVELS[here]:
                    wrong.append(f"{name}:{line} imports {t} ({here} must not depend on {there})")
    assert not wrong, "\n".join(wrong)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, tree in _modules().items():
        here = _room(name)
        for target, _, _ in _imports(tree):
            there = _room(target)
            if there != here and there in LEVELS and here in LEVELS:
                graph[here].add(there)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(p for p in list(graph) if p in reach(p))
    assert not cycles, f"packages in an import cycle: {cycles} ({dict(graph)})"


def test_no_module_imports_private_names_of_another() -> None:
    wrong = []
    for name, tree in _modules().items():
        for target, names, line in _imports(tree):
            if target == name:
                continue
            wrong += [
                f"{name}:{line} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")
            ]
        for node in ast.walk(tree):  # module.attribute access of a private name: decode._plan(...)
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in _imported_module_aliases(tree)
            ):
                wrong.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def _imported_module_aliases(tree: ast.Module) -> set[str]:
    """Local names bound to rtagx modules (``from rtagx.imaging import decode`` binds ``decode``)."""
    modules = set(_modules_names())
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rtagx"):
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:
                    aliases.add(a.asname or a.name)
    return aliases


def _modules_names() -> list[str]:
    out = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    return out


def test_only_the_cache_runs_sql() -> None:
    wrong = []
    for name, tree in _modules().items():
        if _room(name) == "cache":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "executescript"):
                wrong.append(f"{name}:{node.lineno} calls .{node.attr}()")
            if isinstance(node, ast.Attribute) and node.attr == "conn":
                wrong.append(f"{name}:{node.lineno} reaches into a store's connection")
    assert not wrong, "\n".join(wrong)
