"""The same proxy loss with and without class generation (``embedding_aug=class_generation``), a
few training seeds each, everything else equal; MAP@R and Recall@1 on the validation classes,
mean +- sample standard deviation over the seeds. Run by hand (not a test):

    .venv/bin/python bench/bench_class_generation.py [--seeds 0 1 2] [--jobs 2] [KEY=VALUE ...]

The KEY=VALUE settings go to both arms (default: glyphs, proxy_anchor, 4 epochs at 16 px).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today

ROOT = Path(__file__).resolve().parents[1]
BASE = ["loss=proxy_anchor", "epochs=4", "image_size=16", "eval_nmi=false", "eval_ap=false", "threads=1"]
ARMS = {"none": [], "class_generation": ["embedding_aug=class_generation"]}
METRICS = ("map_at_r", "recall_at_1")


def _run(settings: list[str]) -> dict:
    cmd = [sys.executable, "-m", "tuneddml.train", *settings, "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("settings", nargs="*", help="KEY=VALUE for both arms")
    args = parser.parse_args(argv)
    base = [*BASE, *args.settings]
    runs = [
        (arm, seed, [*base, *extra, f"seed={seed}"]) for arm, extra in ARMS.items() for seed in args.seeds
    ]
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda r: _run(r[2]), runs))
    print(f"# {today()} | {machine()} | {time.time() - start:.0f}s, {args.jobs} at a time")
    print(f"# settings: {' '.join(base)}; seeds {args.seeds}")
    print(
        "| embedding_aug | "
        + " | ".join(f"{m} (mean +- sd)" for m in METRICS)
        + " | per seed (map_at_r) | s/run |"
    )
    print("|---|" + "---|" * (len(METRICS) + 2))
    for arm in ARMS:
        mine = [res for (a, _, _), res in zip(runs, results) if a == arm]
        cells = []
        for m in METRICS:
            values = [r["metrics"][m] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.4f} +- {sd:.4f}")
        seeds = ", ".join(f"{r['metrics']['map_at_r']:.4f}" for r in mine)
        secs = statistics.mean(r["seconds"] for r in mine)
        print(f"| {arm} | " + " | ".join(cells) + f" | {seeds} | {secs:.0f} |")


if __name__ == "__main__":
    main()
