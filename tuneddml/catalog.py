"""List what a trial or a search space can name: ``python -m tuneddml.catalog [--json]``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from tuneddml.config import _TOP_SPECS, component_registries


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


def catalog() -> dict[str, object]:
    out: dict[str, object] = {
        "trial": {
            s.name: {
                "default": s.default,
                "type": s.kind.__name__,
                "choices": list(s.choices) if s.choices else None,
                "range": str(s.interval) if s.interval else None,
            }
            for s in _TOP_SPECS
        },
    }
    for prefix, registry in component_registries().items():
        entries = {}
        for name in registry.names():
            entry = registry.get(name)
            entries[name] = {
                "summary": entry.summary,
                **({"balance": b} if (b := balance_text(prefix, name)) else {}),
                "params": {
                    p.name: {
                        "default": p.default,
                        "type": p.kind.__name__,
                        "choices": list(p.choices) if p.choices else None,
                        "range": str(p.interval) if p.interval else None,
                    }
                    for p in entry.params
                },
            }
        out[prefix] = entries
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneddml.catalog", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(catalog(), indent=2, default=str))
        return 0
    registries = component_registries()
    print("trial settings (KEY=VALUE):")
    for spec in _TOP_SPECS:
        print(f"  {spec.describe()}")
    for prefix, registry in registries.items():
        print(f"\n{prefix} (choose with {prefix}=NAME, parameters as {prefix}.PARAM=VALUE):")
        for name in registry.names():
            entry = registry.get(name)
            print(f"  {name}: {entry.summary}")
            balance = balance_text(prefix, name)
            if balance:
                print(f"      balance: {balance}")
            for p in entry.params:
                print(f"      {p.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
