"""Structural checks of the package: no import circles, modules and functions of a readable size.

Imports are read with :mod:`ast`, not by importing anything.

How imports count
-----------------
- A **module-level** import (at the top of a module, or inside a module-level ``if``/``try``) is an
  edge of the import graph, and the graph must have no circle.
- A **function-level** import (inside a ``def``) runs only when the function is called. Such an import
  is allowed for optional or heavy third-party packages (torch, distributed, rasterio, ...) and for
  startup time, and it is *also* an edge of a second graph -- all imports, both levels -- which must
  have no circle either. So a function-level import can no longer hide a circle: a module that needs
  another one lazily must not be needed by it.
- ``if TYPE_CHECKING:`` imports are for type checkers only and are not counted.
- ``from . import x`` counts as an import of ``xr_unmix.x`` when ``x`` is a module, and importing
  ``a.b.c`` imports the packages ``a`` and ``a.b`` too (their ``__init__``).

Sizes
-----
A module over :data:`MAX_MODULE_LINES` lines or a function (counted without its docstring: the
numpydoc parameter tables are documentation, not logic) over over :data:`MAX_FUNCTION_LINES` lines fails unless it is
listed in an allowlist below with the reason it still is. An entry that no longer needs its exception
fails too, so the lists only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "xr_unmix"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

#: modules still over MAX_MODULE_LINES, with the reason (a helper is splitting most of them)
MODULE_ALLOW: dict[str, str] = {
}

#: functions still over MAX_FUNCTION_LINES (``module:qualname``), with the reason
FUNCTION_ALLOW: dict[str, str] = {
}

#: function-level import edges (``importer -> imported``) that close a circle of the all-imports graph,
#: with the reason; module-level circles have no allowlist
LAZY_EDGE_ALLOW: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import node with ``True`` if it is at module level (not inside a function)."""

    def walk(node: ast.AST, in_func: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, not in_func
            func = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, in_func or func)

    yield from walk(tree, False)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The xr_unmix modules an import statement in ``module`` loads."""
    is_pkg = MODULES[module].name == "__init__.py"
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        names = [mod] + [f"{mod}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            cand = ".".join(parts[:i])
            if cand in MODULES and cand != module:
                out.add(cand)
    return out


def _graph(include_function_level: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, top in _imports(tree):
            if top or include_function_level:
                graph[mod] |= _targets(mod, node)
    return graph


def _drop_parent_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package importing its own submodules (``xr_unmix`` -> ``xr_unmix.api``) while a submodule
    imports the package's ``__init__`` implicitly is how Python packages work, not a circle: edges from a
    module to one of its parent packages are dropped."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circle_at_module_level() -> None:
    cycle = find_cycle(_drop_parent_edges(_graph(False)))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_import_circle_with_function_level_imports() -> None:
    graph = _drop_parent_edges(_graph(True))
    for (a, b) in LAZY_EDGE_ALLOW:
        assert b in graph[a], f"{a} no longer imports {b}: drop it from LAZY_EDGE_ALLOW"
        graph[a].discard(b)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle through a function-level import: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_circle() -> None:
    # the check itself can fail: a -> b -> c -> a is found, a DAG is not
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_function_level_imports_are_seen() -> None:
    tree = ast.parse("import os\ndef f():\n    from . import api\nif TYPE_CHECKING:\n    import x\n")
    found = [(type(n).__name__, top) for n, top in _imports(tree)]
    assert found == [("Import", True), ("ImportFrom", False)]


def _rel(path: Path) -> str:
    return path.relative_to(PKG.parent).as_posix()


def test_module_sizes() -> None:
    over = {_rel(p): len(p.read_text().splitlines()) for p in MODULES.values()}
    over = {k: n for k, n in over.items() if n > MAX_MODULE_LINES}
    unexpected = {k: n for k, n in over.items() if k not in MODULE_ALLOW}
    assert not unexpected, f"modules over {MAX_MODULE_LINES} lines: {unexpected}"
    stale = sorted(set(MODULE_ALLOW) - set(over))
    assert not stale, f"no longer over the limit, drop from MODULE_ALLOW: {stale}"


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + node.name
            n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                n -= body[0].end_lineno - body[0].lineno + 1  # type: ignore[operator]
            yield name, n
            yield from _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")


def test_function_sizes() -> None:
    over = {}
    for path in MODULES.values():
        for name, n in _functions(ast.parse(path.read_text())):
            if n > MAX_FUNCTION_LINES:
                over[f"{_rel(path)}:{name}"] = n
    unexpected = {k: n for k, n in over.items() if k not in FUNCTION_ALLOW}
    assert not unexpected, f"functions over {MAX_FUNCTION_LINES} lines: {unexpected}"
    stale = sorted(set(FUNCTION_ALLOW) - set(over))
    assert not stale, f"no longer over the limit, drop from FUNCTION_ALLOW: {stale}"


ARCHITECTURE = PKG.parent / "docs" / "architecture.md"


def test_architecture_md_names_every_module() -> None:
    """docs/architecture.md's table has one row per module of the package, and no row for a module
    that is gone: the map of the code stays true to it."""
    import re

    rows = set(re.findall(r"^\| `([\w/]+\.py)` \|", ARCHITECTURE.read_text(), flags=re.MULTILINE))
    have = {p.relative_to(PKG).as_posix() for p in MODULES.values()}
    assert not have - rows, f"modules without a row in docs/architecture.md: {sorted(have - rows)}"
    assert not rows - have, f"rows of docs/architecture.md for no module: {sorted(rows - have)}"
