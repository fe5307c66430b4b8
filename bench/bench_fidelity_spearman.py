"""Spearman between the cached and the full fidelity with no early stopping on either side: every
configuration of a multi-fidelity check run (its `check` search: full trials, fifo) trained again
in this process as a cached-feature trial for every epoch, its best MAP@R over the epochs (what a
search ranks by) against the check's. ASHA inside a search's cached rung scores the trials it
stops early on fewer epochs; this takes that out.

    python bench/bench_fidelity_spearman.py RUNS/CHECK_NAME KEY=VALUE ...   (the search's overrides)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from tuneddml.config import TrialConfig
from tuneddml.results.fidelity import spearman
from tuneddml.training import run_trial


def main() -> None:
    folder = Path(sys.argv[1])
    overrides = dict(a.split("=", 1) for a in sys.argv[2:])
    check = pd.read_parquet(folder / "searches" / "check" / "results.parquet")
    keys = [c for c in check.columns if c.startswith("config.")]
    full, cached, losses = [], [], []
    for _, row in check.iterrows():
        flat = {k[len("config.") :]: row[k] for k in keys if not (isinstance(row[k], float) and math.isnan(row[k]))}
        flat = {k: (v.item() if hasattr(v, "item") else v) for k, v in flat.items()}
        config = TrialConfig.from_flat({**flat, **overrides, "features": "cached", "threads": 1})
        result = run_trial(config)
        best = max(r.metrics["map_at_r"] for r in result.history)
        full.append(float(row["best.map_at_r"]))
        cached.append(best)
        losses.append(config.loss)
        print(f"{config.loss:12s} full {full[-1]:.4f} cached {best:.4f}", flush=True)
    print(f"Spearman over all {len(full)} configurations: {spearman(cached, full):.3f}")
    for loss in sorted(set(losses)):
        idx = [i for i, name in enumerate(losses) if name == loss]
        if len(idx) >= 3:
            rho = spearman([cached[i] for i in idx], [full[i] for i in idx])
            print(f"Spearman within {loss} ({len(idx)} configurations: its balance and temperature/margins): {rho}")


if __name__ == "__main__":
    main()
