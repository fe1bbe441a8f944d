"""The architecture, read from the code: commands import the engine, the engine imports components, never the
other way; no import cycle; no function-level import that hides one; functions stay short."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dlexp"
# top to bottom: a module may import its own layer's modules and those of the layers below, never above
LAYERS = [
    ("entry", ["dlexp.cli", "dlexp.__main__"]),
    ("commands", ["dlexp.commands"]),
    ("sweeps", ["dlexp.sweeps", "dlexp.hydra_plugin"]),
    ("engine", ["dlexp.engine"]),
    ("config", ["dlexp.config"]),
    ("components", ["dlexp.data", "dlexp.nets", "dlexp.tasks", "dlexp.losses", "dlexp.callbacks", "dlexp.metrics",
                    "dlexp.optim"]),
    ("base", ["dlexp.errors", "dlexp.io", "dlexp.plots", "dlexp"]),
]
MAX_FUNCTION_LINES = 50


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """Index of the layer that owns `module` (the longest matching prefix wins)."""
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py"
    return best[1]


def imports(tree: ast.Module, module: str) -> list[tuple[str, int, bool]]:
    """(imported dlexp module, line, inside a function) for every import of dlexp code in a module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                base = child.module.replace("hydra_plugins.dlexp", "dlexp.hydra_plugin")
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names]
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            found.extend((n, child.lineno, in_function) for n in names if n == "dlexp" or n.startswith("dlexp."))
            visit(child, nested)

    visit(tree, False)
    return found


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = set(SOURCES)
TREES = {m: ast.parse(p.read_text()) for m, p in SOURCES.items()}
EDGES = {m: imports(tree, m) for m, tree in TREES.items()}


def test_every_import_points_down():
    upward = [f"{m}:{line} imports {target} ({LAYERS[layer(target)][0]} above {LAYERS[layer(m)][0]})"
              for m, edges in EDGES.items() for target, line, _ in edges if layer(target) < layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in edges if t in MODULES and t != m} for m, edges in EDGES.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    cycles = [cycle for m in sorted(graph) if m not in state and (cycle := visit(m, []))]
    assert not cycles, " -> ".join(cycles[0])


def test_components_do_not_import_each_other_in_a_circle():
    """Component packages (data, nets, ...) form no cycle either, counted package by package."""
    packages = LAYERS[layer("dlexp.data")][1]

    def package(module: str) -> str | None:
        return next((p for p in packages if module == p or module.startswith(p + ".")), None)

    graph: dict[str, set[str]] = {p: set() for p in packages}
    for m, edges in EDGES.items():
        if package(m):
            graph[package(m)] |= {package(t) for t, _, _ in edges if package(t) and package(t) != package(m)}
    order, seen = [], set()

    def visit(p: str, stack: tuple[str, ...]) -> None:
        assert p not in stack, f"component packages import each other in a circle: {' -> '.join(stack + (p,))}"
        if p not in seen:
            for q in sorted(graph[p]):
                visit(q, stack + (p,))
            seen.add(p)
            order.append(p)

    for p in packages:
        visit(p, ())


def test_function_level_imports_of_dlexp_are_deferrals_with_a_reason():
    """A dlexp import inside a function is allowed only to defer a heavy import, said on its line ("deferred")."""
    hidden = []
    for m, edges in EDGES.items():
        lines = SOURCES[m].read_text().splitlines()
        hidden += [f"{m}:{line}: {lines[line - 1].strip()}" for _, line, inside in edges
                   if inside and "deferred" not in lines[line - 1]]
    assert not hidden, "\n".join(hidden)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_are_short(module):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(TREES[module]) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: {', '.join(long)}"


def test_the_checks_see_a_violation(tmp_path):
    """The checks can fail: an upward import is found in a made-up component."""
    tree = ast.parse("from dlexp.engine.build import build\n")
    target, line, inside = imports(tree, "dlexp.nets.fake")[0]
    assert layer(target) < layer("dlexp.nets.fake") and (target, line, inside) == ("dlexp.engine.build", 1, False)
