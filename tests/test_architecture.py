"""The project's shape, read from its source: imports flow one way, without cycles, and files stay small.

Packages are layered ``training → agent → envs → safety → sim_bridge``: a module may import its own
package and the packages below it, never one above. A package's ``__main__`` is a command-line entry point
that no module imports, so it may use any package (``python -m envs rollout --policy expert`` runs the
agent's policies in the environments). Module-level and function-level imports count the same; a
function-level import of a project module must say why in a comment on the line above or on the same line.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("training", "agent", "envs", "safety", "sim_bridge")
"""Top to bottom: each package may import those after it."""
MAX_FILE_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in LAYERS for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names if a.name in MODULES)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, path, child)
                for alias in child.names:
                    # `from pkg import submodule` depends on the submodule, not on the whole package.
                    sub = f"{target}.{alias.name}"
                    if sub in MODULES:
                        found.append((sub, child.lineno, in_function))
                    elif target in MODULES:
                        found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(m, line, fn) for m, line, fn in found if m != module]


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_the_graph_is_read() -> None:
    # A reader that finds nothing would pass every test below.
    assert len(MODULES) > 50
    assert sum(len(v) for v in GRAPH.values()) > 100
    assert "sim_bridge.gcode" in {dep for dep, _, _ in GRAPH["sim_bridge.simulator"]}


def test_no_upward_import() -> None:
    upward = [f"{m} → {dep} (line {line})" for m, deps in GRAPH.items() if not m.endswith("__main__")
              for dep, line, _ in deps if _layer(dep) < _layer(m)]
    assert not upward, "imports against the layering training → agent → envs → safety → sim_bridge:\n" + \
        "\n".join(upward)


def test_no_import_cycle() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for m, deps in GRAPH.items():
        edges[m].update(dep for dep, _, _ in deps)
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_function_level_imports_say_why() -> None:
    silent = []
    for m, deps in GRAPH.items():
        lines = MODULES[m].read_text().splitlines()
        for dep, line, in_function in deps:
            if not in_function:
                continue
            here, above = lines[line - 1], lines[line - 2] if line >= 2 else ""
            if "#" not in here and not above.strip().startswith("#"):
                silent.append(f"{m}:{line} imports {dep} inside a function without saying why")
    assert not silent, "\n".join(silent)


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_FILE_LINES})"
