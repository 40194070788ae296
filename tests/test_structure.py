"""The package's shape: no import cycle (``TYPE_CHECKING`` and function-level imports
included), the shared wire types at the bottom, and no module, class or function past
the sizes STYLE.md sets."""

from __future__ import annotations

import ast
from pathlib import Path

import customerio_logging

PACKAGE = "customerio_logging"
ROOT = Path(customerio_logging.__file__).parent


def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``from ... import ...`` names (a name may be a submodule)."""
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    if base in MODULES and len(found) < len(node.names):
        found.append(base)
    return found


def imports_of(module: str) -> set[str]:
    """Every package module ``module`` imports, wherever the import statement sits."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(module, node))
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _without_the_facade(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # Importing any ``customerio_logging.x`` runs the package's __init__ (the facade that
    # re-exports the public names) first: Python's order, not a dependency of x's.
    # Only the integrations import from the facade, as an app would.
    return {module: deps - {PACKAGE} for module, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


class TestImportGraph:
    def test_the_checker_finds_a_cycle(self) -> None:
        assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
        assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None

    def test_the_checker_sees_every_kind_of_import(self) -> None:
        # _config imports the transport protocol only under TYPE_CHECKING, and the CLI
        # imports the demo inside a function: both are edges.
        assert f"{PACKAGE}._wire" in GRAPH[f"{PACKAGE}._config"]
        assert any(
            "demo" in dep
            for dep in GRAPH[f"{PACKAGE}.__main__"]
            | set().union(*(GRAPH[m] for m in GRAPH if m.startswith(f"{PACKAGE}.cli")))
        )

    def test_no_cycle(self) -> None:
        assert find_cycle(_without_the_facade(GRAPH)) is None

    def test_the_wire_types_import_nothing_of_ours(self) -> None:
        assert GRAPH[f"{PACKAGE}._wire"] == set()

    def test_queue_and_spool_do_not_import_http(self) -> None:
        prefixes = tuple(f"{PACKAGE}.{name}" for name in ("_dispatch", "_spool", "_storage"))
        below_http = [module for module in MODULES if module.startswith(prefixes)]
        assert below_http
        for module in below_http:
            assert f"{PACKAGE}._delivery" not in GRAPH[module], module


MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


def oversized(source: str, where: str) -> list[str]:
    """What in ``source`` is past STYLE.md's sizes, one line each."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{where}: module of {lines} lines")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        size = (node.end_lineno or node.lineno) - node.lineno + 1
        if size > limit:
            found.append(f"{where}: {node.name} of {size} lines")
    return found


class TestSizes:
    def test_the_checker_sees_a_long_function_and_class(self) -> None:
        body = "\n".join(f"        x{i} = {i}" for i in range(MAX_CLASS_LINES))
        source = f"class Big:\n    def f(self):\n{body}\n"
        assert oversized(source, "big.py") == [
            f"big.py: Big of {MAX_CLASS_LINES + 2} lines",
            f"big.py: f of {MAX_CLASS_LINES + 1} lines",
        ]

    def test_no_module_class_or_function_is_too_long(self) -> None:
        found = [
            problem
            for module, path in MODULES.items()
            for problem in oversized(path.read_text(), module)
        ]
        assert found == []
