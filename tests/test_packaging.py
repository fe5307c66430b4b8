"""The package as a wheel: declared dependencies match what the code imports, the shipped spaces
are package data, and (slow) a wheel built from this checkout installs and runs a search."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tuneddml"
#: import name -> distribution, for optional packages that may not be installed here
NOT_INSTALLED = {"timm": "timm", "pytorch_metric_learning": "pytorch-metric-learning"}
#: declared but never imported by name, and why
NOT_IMPORTED = {
    "cmaes": "Optuna's CmaEsSampler (searcher cmaes) imports it",
    "torchvision": "timm imports it; pinned so that pip takes the build that matches torch",
}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> str:
    return _normal(re.split(r"[\[<>=!~; ]", text.strip(), maxsplit=1)[0])


def _imported_modules() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("tuneddml", "__future__")}


def test_declared_dependencies_match_the_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_requirement(r) for r in project["dependencies"]}
    optional = {_requirement(r) for group in project["optional-dependencies"].values() for r in group}
    by_module = importlib.metadata.packages_distributions()
    used = set()
    for module in _imported_modules():
        dists = {_normal(d) for d in by_module.get(module, [])} or {NOT_INSTALLED.get(module, module)}
        declared = dists & (required | optional)
        assert declared, f"{module} is imported but none of {sorted(dists)} is declared in pyproject.toml"
        used |= declared
    assert required - used <= set(NOT_IMPORTED), f"declared but never imported: {required - used}"


def test_the_shipped_spaces_are_package_data():
    from tuneddml.searchers.space import list_spaces
    from tuneddml.searchers.space_file import space_dirs

    assert space_dirs() == [PACKAGE / "search_spaces"]
    assert {"quick", "contrastive_balance", "seed_methods"} <= set(list_spaces())
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {"search_spaces/*.yaml", "presets/*.yaml"} <= set(config["package-data"]["tuneddml"])


@pytest.mark.slow
@pytest.mark.ray
def test_a_wheel_installs_and_runs_the_quick_search(tmp_path):
    """Build the wheel from a copy of this checkout, install it (not editable, no dependencies:
    the new venv reads the installed ones from this interpreter's site-packages through a .pth
    file) and run ``python -m tuneddml.search --space=quick`` from a folder outside the checkout."""
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "tuneddml_runs", "test-artifacts",
            "mlflow.db", "mlruns", "bench", "tests", ".pytest_cache", ".ruff_cache",
        ),
    )
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("tuneddml-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # the dependencies, not this checkout: a path entry's own .pth files (the editable install's
    # finder) are not run, so tuneddml can only come from the wheel
    (site / "inherited-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "work"
    work.mkdir()
    from tests.tuning.procs import child_env

    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [python, "-c", "import tuneddml, tuneddml.searchers.space_file as f; print(tuneddml.__file__); print(f.space_dirs())"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.splitlines()[0].startswith(str(site)), where.stdout  # the installed copy
    assert str(site / "tuneddml" / "search_spaces") in where.stdout
    search = subprocess.run(
        [python, "-m", "tuneddml.search", "--space=quick", "--num-samples", "2", "--json", "epochs=1", "steps_per_epoch=2"],
        cwd=work, env=env, capture_output=True, text=True, timeout=420,
    )
    assert search.returncode == 0, search.stderr[-3000:]
    assert '"finished": 2' in search.stdout.splitlines()[-1]
    assert (work / "mlflow.db").is_file() and list((work / "tuneddml_runs").glob("quick-*/results.parquet"))
