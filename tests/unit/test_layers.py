"""The package's import graph: no circles, arrows pointing down the layers only, no
import hidden inside a function. Built from the source (ast), no module is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mpisgd"

# Lowest first. A module may import its own package and anything on a lower layer;
# modules of different packages on one layer do not import each other.
LAYERS = [
    ("mpisgd", "mpisgd.errors"),                 # the version; the error hierarchy
    ("mpisgd.runtime", "mpisgd.models"),         # process runtime; the model registry
    ("mpisgd.config",),                          # the job
    ("mpisgd.store",),                           # files: atomic writes, run folder, checkpoints
    ("mpisgd.data", "mpisgd.optim", "mpisgd.optim_sparse"),  # shards, row ownership; updates
    ("mpisgd.kernels",),                         # compiled loss, gradient, schedule
    ("mpisgd.predictor",),                       # a trained model in one process (no MPI)
    ("mpisgd.comm",),                            # everything that talks MPI
    ("mpisgd.report",),                          # metrics, cost, memory, timeline
    ("mpisgd.context",),
    ("mpisgd.evaluation", "mpisgd.oracle"),
    ("mpisgd.modes",),
    ("mpisgd.train",),
    ("mpisgd.commands",),
    ("mpisgd.cli",),                             # the entry: parse, run, end cleanly
    ("mpisgd.__main__",),
]
# Imports allowed inside a function: optional dependencies, and the entry point, which
# decides when MPI starts (after the supervisor and the MPI environment are set).
OPTIONAL = {"matplotlib", "torch"}
ENTRY = {"mpisgd.cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level > 1:
        base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: set[str]):
    """(imported mpisgd module, line, inside a function) for every import statement;
    ``from pkg import sub`` counts as an import of the submodule."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, is_pkg, child) if child.level else child.module
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    found.append((sub if sub in known else target, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


def _graph():
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, p, known) for m, p in modules.items()}, known


def _layer(module: str) -> tuple[int, str]:
    """(layer index, the package or module of LAYERS that holds ``module``)."""
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > len(best[1]):
                    best = (index, name)
    assert best is not None, f"{module} is on no layer: add it to LAYERS"
    return best


def test_every_module_is_on_a_layer():
    for module in _modules():
        _layer(module)


def test_arrows_point_down_the_layers():
    graph, known = _graph()
    wrong = []
    for module, imports in graph.items():
        here, home = _layer(module)
        for target, line, _ in imports:
            if target not in known and not target.startswith("mpisgd"):
                continue
            there, target_home = _layer(target)
            if there > here or (there == here and target_home != home):
                wrong.append(f"{module}:{line} imports {target} "
                             f"(layer {here} {home} -> layer {there} {target_home})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_circles():
    graph, known = _graph()
    edges = {m: sorted({t for t, _, _ in imps if t in known and t != m})
             for m, imps in graph.items()}
    # Tarjan's strongly connected components: a component of two or more is a circle.
    index, low, stack, on, circles = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in edges:
        if v not in index:
            connect(v)
    assert not circles, f"import circles: {circles}"


def test_no_import_inside_a_function():
    graph, _ = _graph()
    hidden = [f"{module}:{line} imports {target}"
              for module, imports in graph.items() if module not in ENTRY
              for target, line, inner in imports
              if inner and target.split(".")[0] not in OPTIONAL]
    assert not hidden, "imports inside functions:\n" + "\n".join(hidden)


@pytest.mark.parametrize("limit", [450])
def test_no_module_is_longer_than(limit):
    long = {m: n for m, p in _modules().items()
            if (n := len(p.read_text().splitlines())) > limit}
    assert not long, f"modules over {limit} lines: {long}"


def test_no_function_is_longer_than_60_lines_without_a_reason():
    """A function over 60 lines needs a comment on its def line's block saying why
    (``# long: <reason>``)."""
    long = []
    for module, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                above = lines[first - 2] if first >= 2 else ""
                if size > 60 and "# long:" not in above:
                    long.append(f"{module}:{node.lineno} {node.name} ({size} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)
