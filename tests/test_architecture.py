"""The package's shape: its import graph, built from the source with ``ast``, has no cycle (imports inside
functions count; ``if TYPE_CHECKING:`` imports, which never run, do not), and no module is over 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "nncift"


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (module level and inside functions alike)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {id(inner) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                     for statement in block.body for inner in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in type_only:  # `if TYPE_CHECKING:` imports exist for annotations only, never at run time
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                module = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                submodules = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [module, *submodules]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert {"nncift.pipeline", "nncift.executor", "nncift.ray_executor", "nncift.influence.delift"} <= set(graph)
    assert "nncift.selection" in graph["nncift.pipeline"] and "nncift.executor" in graph["nncift.ray_executor"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_450_lines() -> None:
    sizes = {path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.rglob("*.py")}
    assert len(sizes) > 40 and max(sizes.values()) > 100
    assert {name: n for name, n in sizes.items() if n > 450} == {}


def test_the_library_never_imports_the_research_code() -> None:
    """``nncift.experiments`` (experiment, fidelity, sweep, report) sits on top of the library: no library module imports it."""
    graph = import_graph()
    experiments = {name for name in graph if name == "nncift.experiments" or name.startswith("nncift.experiments.")}
    assert {"nncift.experiments.experiment", "nncift.experiments.fidelity", "nncift.experiments.sweep"} <= experiments
    assert "nncift.pipeline" in graph["nncift.experiments.fidelity"]  # the graph sees the research code's imports
    offending = {name: sorted(graph[name] & experiments) for name in set(graph) - experiments if graph[name] & experiments}
    assert not offending, offending
