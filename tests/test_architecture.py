"""The package's shape: its import graph, built from the source with ``ast`` (imports inside functions and behind
``if TYPE_CHECKING:`` count alike), has no cycle; every import between stage packages points down the stages;
the library never names the research code; no module is over 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "nncift"

STAGES = ("files", "settings", "data", "models", "gradients", "influence", "selection", "network", "run", "execution",
          "steps", "downstream", "cli")
"""The library's stage packages, bottom first: a module may import its own package and the ones before it."""


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of nncift and nncift_research it imports (module level, inside functions and
    ``if TYPE_CHECKING:`` blocks alike)."""
    modules = {}
    for path in [*PACKAGE.rglob("*.py"), *(SOURCE / "nncift_research").rglob("*.py")]:
        parts = path.relative_to(SOURCE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
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
    assert {"nncift.steps.select", "nncift.execution.executor", "nncift.execution.ray_cluster", "nncift.influence.delift"} <= set(graph)
    assert "nncift.selection" in graph["nncift.steps.select"] and "nncift.execution.executor" in graph["nncift.execution.ray_cluster"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_450_lines() -> None:
    sizes = {path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.rglob("*.py")}
    assert len(sizes) > 40 and max(sizes.values()) > 100
    assert {name: n for name, n in sizes.items() if n > 450} == {}


def test_the_library_never_imports_the_research_code() -> None:
    """``nncift_research`` (experiment, fidelity, sweep, report) sits on top of the library: no library module imports it."""
    graph = import_graph()
    experiments = {name for name in graph if name == "nncift_research" or name.startswith("nncift_research.")}
    assert {"nncift_research.experiment", "nncift_research.fidelity", "nncift_research.sweep"} <= experiments
    assert "nncift.steps.select" in graph["nncift_research.fidelity"]  # the graph sees the research code's imports
    offending = {name: sorted(graph[name] & experiments) for name in set(graph) - experiments if graph[name] & experiments}
    assert not offending, offending


def stage_of(module: str) -> int | None:
    """The stage index of an nncift module (None: the package root, which is the public API on top)."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if parts[0] == "nncift" and len(parts) > 1 else None


def test_every_module_lives_in_a_stage_package() -> None:
    flat = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert flat == []
    assert sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()) == sorted(STAGES)


def test_imports_point_down_the_stages() -> None:
    graph = import_graph()
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() if name.startswith("nncift.")
                    for target in targets if target.startswith("nncift.")
                    and (stage_of(target) is None or (stage_of(name) or 0) < (stage_of(target) or 0)))
    assert {"nncift.network.training", "nncift.run.layout", "nncift.selection"} <= graph["nncift.steps.select"]  # the graph sees its imports
    assert upward == []


def test_the_library_never_names_the_research_code() -> None:
    """Not even as an import string: research commands reach the CLI through the ``nncift.commands`` entry points."""
    named = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if "nncift_research" in path.read_text(encoding="utf-8"))
    assert named == []



LONG_FUNCTIONS_ALLOWED: dict[str, int] = {}
"""``module:function`` → its length, for functions allowed over :data:`MAX_FUNCTION_LINES` lines (none)."""
MAX_FUNCTION_LINES = 60


def is_numba_kernel(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated with numba's ``njit`` or ``jit`` (bare, called, or as ``numba.njit``)."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")) in ("njit", "jit"):
            return True
    return False


def function_lengths(source: str, module: str) -> dict[str, int]:
    """``module:function`` (``Class.method``, ``outer.inner``) → lines from ``def`` to its last line, numba kernels left out."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not is_numba_kernel(child):
                    lengths[f"{module}:{prefix}{child.name}"] = (child.end_lineno or child.lineno) - child.lineno + 1
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def test_no_function_is_over_60_lines_outside_numba_kernels() -> None:
    lengths: dict[str, int] = {}
    for path in [*PACKAGE.rglob("*.py"), *(SOURCE / "nncift_research").rglob("*.py")]:
        lengths.update(function_lengths(path.read_text(encoding="utf-8"), ".".join(path.relative_to(SOURCE).with_suffix("").parts)))
    assert "nncift.steps.select:run_select" in lengths and "nncift.selection.kernels:lazy_greedy" not in lengths  # a numba kernel
    assert {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS_ALLOWED} == {}


def test_the_function_length_check_counts_methods_and_leaves_out_kernels() -> None:
    body = "".join(f"    x = {i}\n" for i in range(60))
    method = body.replace("    x", "        x")
    source = f"import numba\n\n\nclass A:\n    def long(self):\n{method}\n\n@numba.njit(cache=True)\ndef kernel():\n{body}\n\ndef short():\n    pass\n"
    assert function_lengths(source, "m") == {"m:A.long": 61, "m:short": 2}
