"""List what a trial or a search space can name: ``python -m tuneddml.catalog [--json]``.

Everything here falls out of the registries: the trial settings, every component with its
parameters (and, for a loss, its family, balance and search ranges), the metrics a trial reports,
the searchers and the schedulers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from tuneddml.config import _TOP_SPECS, component_registries
from tuneddml.registry import Entry, ParamSpec, Registry


def balance_text(prefix: str, name: str) -> str | None:
    """A loss's balance in one line (what its ``lambda`` weighs), None for other components."""
    if prefix != "loss":
        return None
    from tuneddml.losses import LOSSES

    entry = LOSSES.get(name)
    balance = getattr(entry.factory, "balance", None)
    if balance is None:
        return "lambda is passed to the base loss: its balance" if entry.param("lambda") else None
    return (
        f"{balance.formula()}; {balance.first.rstrip('.')}: {balance.first_means}; "
        f"{balance.second.rstrip('.')}: {balance.second_means}"
    )


def _spec(p: ParamSpec) -> dict[str, Any]:
    return {
        "default": p.default,
        "type": p.kind.__name__,
        "choices": list(p.choices) if p.choices else None,
        "range": str(p.interval) if p.interval else None,
    }


def _entry(prefix: str, entry: Entry[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": entry.summary}
    if prefix == "loss":
        out["family"] = entry.factory.family  # type: ignore[attr-defined]
    if b := balance_text(prefix, entry.name):
        out["balance"] = b
    out["params"] = {p.name: _spec(p) for p in entry.params}
    if entry.runtime_params and prefix == "dataset":
        out["trial_sets"] = {p.name: _spec(p) for p in entry.runtime_params}
    if entry.search:
        out["search"] = dict(entry.search)
    if entry.requires:
        out["requires"] = list(entry.requires)
    return out


def other_registries() -> dict[str, Registry[Any]]:
    """The registries a search (not a trial) chooses from."""
    from tuneddml.evaluation import METRICS
    from tuneddml.searchers import SEARCHERS
    from tuneddml.searchers.schedulers import SCHEDULERS

    return {"metric": METRICS, "searcher": SEARCHERS, "scheduler": SCHEDULERS}


def catalog() -> dict[str, object]:
    from tuneddml.evaluation import metric_keys

    out: dict[str, object] = {"trial": {s.name: _spec(s) for s in _TOP_SPECS}}
    for prefix, registry in component_registries().items():
        out[prefix] = {name: _entry(prefix, registry.get(name)) for name in registry.names()}
    for kind, registry in other_registries().items():
        out[kind] = {name: _entry(kind, registry.get(name)) for name in registry.names()}
    out["metric_keys"] = metric_keys()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneddml.catalog", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(catalog(), indent=2, default=str))
        return 0
    print("trial settings (KEY=VALUE):")
    for spec in _TOP_SPECS:
        print(f"  {spec.describe()}")
    for prefix, registry in component_registries().items():
        print(f"\n{prefix} (choose with {prefix}=NAME, parameters as {prefix}.PARAM=VALUE):")
        for name in registry.names():
            entry = registry.get(name)
            print(f"  {name}: {entry.summary}")
            if prefix == "loss":
                print(f"      family: {entry.factory.family}")  # type: ignore[attr-defined]
            balance = balance_text(prefix, name)
            if balance:
                print(f"      balance: {balance}")
            for p in entry.params:
                print(f"      {p.describe()}")
            if prefix == "dataset":
                for p in entry.runtime_params:
                    print(f"      {p.describe()} (the trial's {'data_root' if p.name == 'root' else p.name})")
    from tuneddml.evaluation import metric_keys

    titles = {
        "metric": f"metrics (a space's metric; a trial reports {', '.join(metric_keys())})",
        "searcher": "searchers (a space's searcher, or --searcher NAME)",
        "scheduler": "schedulers (a space's scheduler, or --scheduler NAME)",
    }
    for kind, registry in other_registries().items():
        print(f"\n{titles[kind]}:")
        for name in registry.names():
            entry = registry.get(name)
            needs = f" (needs {', '.join(entry.requires)})" if entry.requires else ""
            print(f"  {name}: {entry.summary}{needs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
