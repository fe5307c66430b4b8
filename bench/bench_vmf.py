"""vMF proxies on glyphs-tiny: Recall@1 of the untrained and the trained model, for one similarity
(``mc``, the paper's Monte Carlo form, or ``closed_form``) and one seed; run by hand, results in
bench/RESULTS.md ("Methods as their papers define them").

Usage: ``PYTHONPATH=. python bench/bench_vmf.py SIMILARITY SEED [KEY=VALUE ...]`` (one JSON line).
"""

from __future__ import annotations

import json
import sys
import time

from tuneddml.config import TrialConfig
from tuneddml.training import Trainer, run_trial


def main(argv: list[str]) -> None:
    similarity, seed = argv[0], int(argv[1])
    extra: dict[str, object] = {}
    for arg in argv[2:]:
        key, value = arg.split("=", 1)
        try:
            extra[key] = json.loads(value)
        except ValueError:
            extra[key] = value
    flat = {"dataset": "glyphs-tiny", "loss": "vmf_proxies", "loss.similarity": similarity, "seed": seed}
    config = TrialConfig.from_flat({**flat, "device": "cpu", "threads": 1, **extra})
    start = time.time()
    untrained = Trainer(config).evaluate()
    trained = run_trial(config).metrics
    row = {"similarity": similarity, "seed": seed, "extra": extra, "seconds": round(time.time() - start, 1)}
    row |= {f"untrained_{k}": untrained[k] for k in ("recall_at_1", "map_at_r")}
    row |= {f"trained_{k}": trained[k] for k in ("recall_at_1", "map_at_r")}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
