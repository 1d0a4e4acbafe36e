"""The package's shape: layers import only downwards, no import cycle (function-level imports included),
no module over 400 lines, and the architecture page states the same layers as this test."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyro_vae"
MAX_LINES = 400

# layer -> the modules and subpackages in it (names below pyro_vae); a module may import its own layer and below.
# docs/guide/architecture.md draws the same table (test_architecture_page_states_these_layers).
LAYERS = {
    0: ["errors"],
    1: ["registry", "rundir"],
    2: ["components", "data", "model"],
    3: ["config"],
    4: ["build"],
    5: ["inference"],
    6: ["evaluation"],
    7: ["training"],
    8: ["runs"],
    9: ["baselines"],
    10: ["compare"],
    11: ["commands", "cli", "__main__", "__init__"],
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def modules():
    """``{dotted name: path}`` of every module of the package (a package by its ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(path: Path):
    """Every package module ``path`` imports, at any depth of the file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the package imports absolutely)"
            if node.module and node.module.startswith("pyro_vae"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pyro_vae")}
    return {m for m in found if m in MODULES}


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    assert top in LAYER_OF, f"{module}: in no layer; add it to LAYERS and to docs/guide/architecture.md"
    return LAYER_OF[top]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    upward = sorted(t for t in GRAPH[module] if layer(t) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports a higher layer: {upward}"


def test_no_import_cycle():
    """Tarjan's strongly connected components of the import graph: every one a single module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
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

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_short_enough_to_read(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines (at most {MAX_LINES})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_says_what_it_holds(module):
    assert ast.get_docstring(ast.parse(MODULES[module].read_text())), f"{module}: no module docstring"


def test_architecture_page_states_these_layers():
    """The page's layer table (``| layer | holds |`` rows) names exactly the modules of each layer here."""
    page = (ROOT / "docs" / "guide" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", page, flags=re.M)
    stated = {int(n): sorted(re.findall(r"`([\w.]+?)/?`", cell)) for n, cell in rows}
    assert stated == {n: sorted(names) for n, names in LAYERS.items()}
