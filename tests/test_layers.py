"""The layer order of ../shared/DESIGN.md §8 (and CONTRIBUTING.md), read from the source: every import of
`engine/` and `htkernels/` (module level and inside functions) goes down the order, never up, so there is no
cycle between the units, and `htkernels` imports nothing from `engine`.

Run as a script (`python tests/test_layers.py [ROOT]`) it prints the cycles and upward imports of a tree.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A unit is `htkernels`, or a module or subpackage directly under `engine/` (`engine/__init__.py`, the
# public facade, is the unit `engine` and sits on top; `engine/__main__.py` belongs to `cli`).
LAYERS = (
    "htkernels",
    "errors", "version", "settings", "runner", "fileio", "devices", "threads", "cpuinfo",
    "config",
    "package",
    "_frame_resize", "preprocess", "postprocess", "images", "synthetic", "phantom", "dicom_seg",
    "model",
    "weights",
    "optimize",
    "export",
    "artifacts",
    "backends",
    "autoselect",
    "runtime",
    "stream",
    "holoscan",
    "serve",
    "bench",
    "commands",
    "cli",
    "engine",
)
RANK = {unit: rank for rank, unit in enumerate(LAYERS)}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "htkernels":
        return "htkernels"
    if parts[0] != "engine":
        return None
    if len(parts) == 1:
        return "engine"
    return "cli" if parts[1] == "__main__" else parts[1]


def _module_name(path: Path, root: Path) -> tuple[str, str]:
    """`(module, package)` of a source file: the package is where relative imports start."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imports(root: Path = REPO):
    """Every `(importing module, line, imported module)` in engine/ and htkernels/, at any depth of the code."""
    for path in sorted(list(root.glob("engine/**/*.py")) + list(root.glob("htkernels/**/*.py"))):
        module, package = _module_name(path, root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield module, node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                # `from engine import stream` imports engine.stream; `from engine import Predictor` the facade.
                named = [f"{target}.{alias.name}" for alias in node.names]
                yield from ((module, node.lineno, name if unit_of(name) != unit_of(target) and
                             _is_submodule(root, name) else target) for name in named)


def _is_submodule(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def unit_edges(root: Path = REPO) -> dict:
    """`{(from unit, to unit): [where, ...]}` for imports that cross units."""
    edges = defaultdict(set)
    for module, line, target in imports(root):
        source, dest = unit_of(module), unit_of(target)
        if dest is not None and source != dest:
            edges[(source, dest)].add(f"{module}:{line} imports {target}")
    return {edge: sorted(where) for edge, where in edges.items()}


def cycles(edges) -> list:
    """The strongly connected components with more than one unit (Tarjan), each sorted."""
    graph = defaultdict(set)
    for source, dest in edges:
        graph[source].add(dest)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def upward(edges) -> dict:
    """Edges that go up the order (or to a unit the order does not know)."""
    return {(s, d): where for (s, d), where in edges.items()
            if s not in RANK or d not in RANK or RANK[d] >= RANK[s]}


def test_every_unit_is_in_the_layer_order():
    units = {unit_of(module) for module, _, _ in imports()}
    assert units - set(RANK) == set(), "add new units of engine/ to LAYERS (and CONTRIBUTING.md) at their place"


def test_htkernels_imports_nothing_from_engine():
    edges = unit_edges()
    assert [where for (s, d), where in edges.items() if s == "htkernels"] == []


def test_no_cycle_between_units():
    assert cycles(unit_edges()) == []


def test_every_import_goes_down_the_layer_order():
    assert upward(unit_edges()) == {}


def test_the_analysis_sees_function_level_and_relative_imports(tmp_path):
    (tmp_path / "engine" / "backends").mkdir(parents=True)
    (tmp_path / "htkernels").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text("")
    (tmp_path / "engine" / "errors.py").write_text("")
    (tmp_path / "engine" / "runtime.py").write_text("")
    (tmp_path / "engine" / "backends" / "__init__.py").write_text("def load():\n    from ..runtime import x\n")
    (tmp_path / "engine" / "backends" / "onnx.py").write_text("from engine import errors\n")
    (tmp_path / "htkernels" / "op.py").write_text("def f():\n    import engine.errors\n")
    edges = unit_edges(tmp_path)
    assert set(edges) == {("backends", "runtime"), ("backends", "errors"), ("htkernels", "errors")}
    assert set(upward(edges)) == {("backends", "runtime"), ("htkernels", "errors")}
    (tmp_path / "engine" / "runtime.py").write_text("import engine.backends.onnx\n")
    assert cycles(unit_edges(tmp_path)) == [["backends", "runtime"]]


if __name__ == "__main__":
    tree = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    found = unit_edges(tree)
    print(f"cycles: {len(cycles(found))}")
    for component in cycles(found):
        print("  " + " <-> ".join(component))
    ups = upward(found)
    print(f"upward unit edges: {len(ups)} ({sum(len(w) for w in ups.values())} import statements)")
    for (source, dest), where in sorted(ups.items()):
        print(f"  {source} -> {dest}: {where[0]}" + (f" (+{len(where) - 1} more)" if len(where) > 1 else ""))
