"""The package's layers point one way. Every import in toolchain/ (module level or inside
a function) goes to the same layer or one below, and no modules import each other in a
circle. Layers, bottom first, as docs/architecture.md draws them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "toolchain"
LAYERS = [
    ["errors", "contract", "version"],
    ["ir"],
    ["targets"],
    ["schedules"],
    ["kernel"],
    ["ops"],
    ["passes", "interpreter"],
    ["frontend"],
    ["memory"],
    ["backends"],
    ["emit", "integration", "cache"],
    ["inspect"],
    ["compiler", "library"],
    ["harness", "inprocess", "inprocess_grad"],
    ["bench", "compare", "firmware", "finetune", "profile", "quantize", "cli", "__main__", ""],
]
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    rest = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if rest in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def imports(module: str) -> set[str]:
    """The toolchain modules `module` imports, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "toolchain"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "toolchain":
                continue
            for alias in node.names:  # `from . import nn` imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    upward = sorted(dep for dep in GRAPH[module] if layer(dep) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports from higher layers: {upward}"


def test_no_import_cycles():
    """Tarjan's strongly connected components: any component of two or more is a cycle."""
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

    for m in GRAPH:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_upward_and_lazy_imports(tmp_path, monkeypatch):
    """The walk must find an import inside a function, resolve relative imports, and
    place it: a lazy upward import like the ones this test exists for is caught."""
    fake = PACKAGE / "ir.py"
    source = "def verify():\n    from .ops import registry\n    from . import compiler\n"
    monkeypatch.setitem(MODULES, "toolchain.ir", tmp_path / "ir.py")
    (tmp_path / "ir.py").write_text(source)
    found = imports("toolchain.ir")
    assert found == {"toolchain.ops", "toolchain.compiler"} and fake.exists()
    assert all(layer(dep) > layer("toolchain.ir") for dep in found)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (at most {MAX_LINES})"
