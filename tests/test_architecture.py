"""The package's shape: its import graph has no circle, and no module grows past one concept's size.

Every ``import`` of a ``resunet_trt`` module is read from the source with :mod:`ast`, at module level and inside
functions alike (a lazy import inside a function still ties the two modules together); imports under
``if TYPE_CHECKING:`` are left out, since they never run. The graph is then checked for cycles, and a found
cycle is named module by module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "resunet_trt"
ROOT = Path(__file__).resolve().parents[1] / "python" / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules ``tree`` imports (absolute or relative), TYPE_CHECKING blocks left out."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def resolve(name: str) -> None:
        # ``from . import kernels`` names a module; ``from .io import load_ct`` names a module and an attribute.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == PACKAGE:
                for alias in node.names:
                    resolve(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, parents of a module left out (Python imports them anyway)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = _imports(tree, name, path.name == "__init__.py", known)
        # ``from .. import backends`` inside resunet_trt.backends.x is the package importing itself: no edge
        # to one's own parent packages, which Python has imported before the module runs.
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None when it is acyclic."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_known_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_reads_relative_lazy_and_skips_type_checking():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .. import kernels\n"
        "from ..io import load_ct\n"
        "if TYPE_CHECKING:\n"
        "    from .segmenter import Result\n"
        "def f():\n"
        "    from ..metadata import ModelMetadata\n"
        "    import resunet_trt.files\n"
    )
    known = {"resunet_trt", "resunet_trt.kernels", "resunet_trt.io", "resunet_trt.segmenter",
             "resunet_trt.metadata", "resunet_trt.files", "resunet_trt.backends", "resunet_trt.backends.x"}
    got = _imports(ast.parse(source), "resunet_trt.backends.x", False, known)
    assert got == {"resunet_trt.kernels", "resunet_trt.io", "resunet_trt.metadata", "resunet_trt.files"}
    got = _imports(ast.parse("from . import kernels\n"), "resunet_trt.x", False, known)
    assert got == {"resunet_trt.kernels"}


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "resunet_trt.segmenter" in graph
    assert "resunet_trt.kernels" in graph["resunet_trt.segmenter"]


@pytest.mark.parametrize("level", ["module and function level"])
def test_no_import_cycle_in_the_package(level):
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle ({level}): {' -> '.join(cycle or [])}"


MAX_MODULE_LINES = 500


def test_every_module_is_under_the_size_of_one_concept():
    """A module past 500 lines holds more than one concept: split it (the issue that set this limit, #14)."""
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in ROOT.rglob("*.py")
    }
    too_long = {name: n for name, n in sizes.items() if n >= MAX_MODULE_LINES}
    assert not too_long, f"modules of {MAX_MODULE_LINES} lines or more: {too_long}"
