"""A minimal stand-in for ``tuneddml.results.fidelity`` and ``tuneddml.plots.draw_fidelity`` (the
API the multi-fidelity driver calls), installed only where the real module is missing: until the
branch that writes it is merged, the multi-fidelity tests run against this. Once it exists,
:func:`install` does nothing and the tests run against the real one."""

from __future__ import annotations

import importlib
import json
import math
import sys
import types
from pathlib import Path
from typing import Any


def _norm(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float):
        return round(value, 12)
    return value


def config_key(row: dict[str, Any], keys: list[str]) -> tuple:
    return tuple(_norm(row.get(f"config.{k}")) for k in keys)


def _value(row: dict[str, Any], metric: str) -> float | None:
    v = row.get(f"best.{metric}")
    ok = row.get("status") in ("finished", "stopped_early") and v is not None and math.isfinite(float(v))
    return float(v) if ok else None


def promote(rows: list[dict[str, Any]], metric: str, mode: str, k: int) -> list[dict[str, Any]]:
    kept = [r for r in rows if _value(r, metric) is not None]
    kept.sort(key=lambda r: _value(r, metric), reverse=mode == "max")
    return kept[:k]


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 2:
        return None

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        for r, i in enumerate(order):
            out[i] = float(r)
        return out

    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if not sx or not sy:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / (sx * sy)


def fidelity_report(rungs, keys, metric, mode, *, names=None, seconds=None, check=None, top_k=None) -> dict:  # type: ignore[no-untyped-def]
    out: dict[str, Any] = {"metric": metric, "rungs": [], "pairs": []}
    for i, rows in enumerate(rungs):
        top = promote(rows, metric, mode, 1)
        out["rungs"].append(
            {
                "name": (names or [])[i] if names else f"rung{i}",
                "configs": len({config_key(r, keys) for r in rows}),
                "best": _value(top[0], metric) if top else None,
                "seconds": (seconds or [None] * len(rungs))[i],
            }
        )
    for i in range(1, len(rungs)):
        before = {config_key(r, keys): _value(r, metric) for r in promote(rungs[i - 1], metric, mode, len(rungs[i - 1]))}
        pairs = [(before[config_key(r, keys)], _value(r, metric)) for r in rungs[i] if config_key(r, keys) in before]
        pairs = [p for p in pairs if p[1] is not None]
        out["pairs"].append({"from": i - 1, "to": i, "spearman": spearman([a for a, _ in pairs], [b for _, b in pairs])})
    if check is not None:
        truth = {config_key(r, keys): _value(r, metric) for r in check}
        best = max((v for v in truth.values() if v is not None), default=None)
        last = promote(rungs[-1], metric, mode, top_k or 1)
        got = max((truth.get(config_key(r, keys)) or -math.inf for r in last), default=None)
        out["check"] = {"regret": None if best is None or got is None else best - got}
    return out


def write_fidelity_report(report: dict, folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    (folder / "fidelity.json").write_text(json.dumps(report, default=str, indent=2))
    lines = ["# Fidelity report (stand-in)", ""] + [f"- {r['name']}: {r['configs']} configurations, best {r['best']}" for r in report["rungs"]]
    (folder / "fidelity.md").write_text("\n".join(lines) + "\n")
    return {"json": folder / "fidelity.json", "markdown": folder / "fidelity.md"}


def draw_fidelity(report: dict) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3, 2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([r["best"] or 0 for r in report["rungs"]], marker="o")
    return figure


def install() -> bool:
    """Make ``tuneddml.results.fidelity`` and ``tuneddml.plots.draw_fidelity`` importable; True if the
    stand-in was installed (the real module is missing)."""
    try:
        importlib.import_module("tuneddml.results.fidelity")
        return False
    except ImportError:
        pass
    module = types.ModuleType("tuneddml.results.fidelity")
    for fn in (config_key, promote, spearman, fidelity_report, write_fidelity_report):
        setattr(module, fn.__name__, fn)
    sys.modules["tuneddml.results.fidelity"] = module
    import tuneddml.plots
    import tuneddml.results

    tuneddml.results.fidelity = module  # type: ignore[attr-defined]
    if not hasattr(tuneddml.plots, "draw_fidelity"):
        tuneddml.plots.draw_fidelity = draw_fidelity  # type: ignore[attr-defined]
    return True


if __name__ == "__main__":  # python -m tests.tuning.fidelity_standin ARGS: the CLI with the stand-in
    install()
    from tuneddml.multifidelity import main

    raise SystemExit(main(sys.argv[1:]))
