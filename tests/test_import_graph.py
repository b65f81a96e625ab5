"""The import graph of ``src/llmrec`` stays layered: no module imports, even lazily, one that imports it back.

A circle hides which module is the lower one: lazy imports inside functions make it run, but then any module of the
circle can only be understood (and tested, and loaded) with all the others. The graph here counts every
``import llmrec...`` and ``from llmrec... import ...`` statement, at module level and inside functions, except those
under ``if TYPE_CHECKING:`` (never executed). ``from llmrec.x import y`` where ``y`` is a submodule is an edge to
``llmrec.x.y``; otherwise (a name, or ``import llmrec.x``) it is an edge to ``llmrec.x`` (its ``__init__.py`` for
a package).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Edges allowed to close a circle, as (importer, imported): none. The test fails when a circle appears and
# when an entry here is no longer in the code (so the list only shrinks; the last two went when the feature
# store's staleness check moved to features/sources.py and the trainer came to know models by type only).
ALLOWED_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` outside ``if TYPE_CHECKING:`` bodies (its ``else`` still counts)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                walk(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the ``llmrec`` modules it imports (see the module docstring for what counts; built once, read only)."""
    files = {_module_name(p): p for p in sorted((SRC / "llmrec").rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative import: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(
                        package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                    )
                else:
                    base = node.module or ""
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
                elif target.startswith("llmrec.") and target not in files:
                    # ``import llmrec.x.y as z`` of a missing module would be a bug elsewhere; keep the nearest one.
                    while target and target not in files:
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(found, key=lambda c: (-len(c), c))


def _subgraph(graph: dict[str, set[str]], prefix: str) -> dict[str, set[str]]:
    inside = {m for m in graph if m == prefix or m.startswith(prefix + ".")}
    return {m: {t for t in graph[m] if t in inside} for m in inside}


def test_graph_sees_lazy_and_package_imports() -> None:
    graph = import_graph()
    # a lazy import inside a function is an edge (get_importer loads the built-in importers on first use)
    assert "llmrec.data.importers.table" in graph["llmrec.data.importers"]
    # ``from llmrec.data.importers import ImportSpec`` is an edge to the package's __init__.py
    assert any("llmrec.data.importers" in graph[m] for m in graph if m.startswith("llmrec.data."))
    # a cycle is found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_data_layer_has_no_import_cycle() -> None:
    graph = import_graph()
    for component in cycles(graph):
        print("modules importing each other in a cycle:", ", ".join(component))
    assert cycles(_subgraph(graph, "llmrec.data")) == []


def test_package_has_no_import_cycle_beyond_the_allow_list() -> None:
    graph = import_graph()
    for source, target in ALLOWED_EDGES:
        assert target in graph.get(source, set()), f"allow-list entry no longer needed: {source} -> {target}"
    pruned = {m: {t for t in targets if (m, t) not in ALLOWED_EDGES} for m, targets in graph.items()}
    assert cycles(pruned) == []
