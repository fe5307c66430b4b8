"""The layout of ARCHITECTURE.md, held to the code: packages in layers, no module importing a
higher layer, no import cycle between modules, mlflow and ray only at the edges, and no file over
about 400 lines without a reason written at its top.

Imports are read from the source (module level and inside functions alike); imports made only for
type checking (under ``if TYPE_CHECKING:``) are not dependencies and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tuneddml"

#: bottom to top, as in ARCHITECTURE.md; a module may import its own layer's packages and lower
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("registry", "cli"),
    ("similarity",),
    ("data", "models", "evaluation", "sampling"),
    ("losses",),
    ("config", "presets"),
    ("results",),
    ("training", "tracking"),
    ("searchers",),
    ("plots",),
    ("tuning",),
    ("report", "catalog", "train", "search", "benchmark", "multifidelity"),
]
#: third-party packages only these parts of tuneddml may import
EDGES = {"mlflow": ("tracking",), "ray": ("tuning", "searchers"), "optuna": ("searchers",)}
MAX_LINES = 400
REASON = "# Long file:"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[str]:
    """Every module a file imports (submodules named in ``from x import y`` included)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
               for child in node.body for n in ast.walk(child)}
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append(full if full in MODULES else base)
    return found


GRAPH = {name: sorted({m for m in _imports(path) if m in MODULES and m != name}) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module}: its package {top!r} is in no layer of ARCHITECTURE.md")


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "tuneddml"))
def test_no_module_imports_a_higher_layer(module):
    own = _layer(module)
    for imported in GRAPH[module]:
        if imported == "tuneddml":
            continue
        assert _layer(imported) <= own, f"{module} (layer {own}) imports {imported} (layer {_layer(imported)})"
        if _layer(imported) == own:
            assert _package(imported) == _package(module), f"{module} imports {imported}, a sibling of its layer"


def test_no_import_cycles():
    """Tarjan's strongly connected components of the module graph; a submodule import also runs
    its package's ``__init__``, so it counts as an import of the package."""
    edges = {m: set(ts) for m, ts in GRAPH.items()}
    for m, targets in GRAPH.items():
        for t in targets:
            parent = t.rpartition(".")[0]
            while parent and parent in MODULES and parent != m and not m.startswith(parent + "."):
                edges[m].add(parent)
                parent = parent.rpartition(".")[0]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize(("library", "allowed"), sorted(EDGES.items()))
def test_heavy_backends_stay_at_the_edges(library, allowed):
    for module, path in MODULES.items():
        if _package(module) in allowed:
            continue
        used = [m for m in _imports(path) if m.split(".")[0] == library]
        assert not used, f"{module} imports {used}: only {', '.join(allowed)} may"


def _long_files() -> list[Path]:
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("*.py")]
    return sorted(p for p in files if len(p.read_text().splitlines()) > MAX_LINES)


@pytest.mark.parametrize("path", _long_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_long_file_says_why_at_its_top(path):
    head = path.read_text().splitlines()[:3]
    assert any(line.startswith(REASON) for line in head), f"{path} is over {MAX_LINES} lines with no {REASON!r}"


def test_architecture_md_names_every_package_in_its_layers():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for layer in LAYERS:
        for package in layer:
            assert f"`{package}" in text, package
    for name in MODULES:
        top = _package(name)
        assert not top or any(top in layer for layer in LAYERS), top
