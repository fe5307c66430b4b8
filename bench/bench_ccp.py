"""CCP with 1, 2, 4 and 8 proxies per class, with and without its re-initialisations (Gurbuz,
Can & Alatan 2022 report that more proxies per class help under CCP).

Each arm trains ``--seeds`` short glyphs trials (one process each, ``--jobs`` at a time) and
reports the final validation MAP@R (mean +- sd over seeds) and how many re-initialisations
happened. "with" uses the official schedule (patience 3 on map_at_r); "without" the same loss
with a patience no trial reaches (proxies initialised from samples, never moved again, and so no
proximal term either).

    .venv/bin/python bench/bench_ccp.py [--epochs 10] [--seeds 3] [--jobs 2] [KEY=VALUE ...]
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
COUNTS = (1, 2, 4, 8)
ARMS = {"with": {"loss.patience": 3}, "without": {"loss.patience": 1000}}


def trial(settings: dict[str, object]) -> dict:
    """One trial in its own process; its final metrics and the last epoch's loss terms."""
    cmd = [sys.executable, "-m", "tuneddml.train", "--json", *(f"{k}={v}" for k, v in settings.items())]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the last epoch's progress line (on stderr) carries the terms: "reinitialisations=N"
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("epoch ")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)}: no epoch lines to read the re-initialisations from")
    last = lines[-1] if lines else ""
    reinits = next((float(w.split("=")[1]) for w in last.split() if w.startswith("reinitialisations=")), 0.0)
    return {"map_at_r": result["metrics"]["map_at_r"], "reinitialisations": reinits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("settings", nargs="*", help="extra trial settings KEY=VALUE")
    args = parser.parse_args()
    fixed: dict[str, object] = {
        "dataset": "glyphs",
        "loss": "ccp",
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "image_size": 16,
        "eval_nmi": "false",
        "eval_ap": "false",
        "threads": 1,
    }
    fixed.update(dict(s.split("=", 1) for s in args.settings))
    jobs = [
        (k, arm, seed, {**fixed, **extra, "loss.proxies_per_class": k, "seed": seed})
        for k in COUNTS
        for arm, extra in ARMS.items()
        for seed in range(args.seeds)
    ]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: trial(job[3]), jobs))
    seconds = time.perf_counter() - start
    table: dict[tuple[int, str], list[dict]] = {}
    for (k, arm, seed, _), res in zip(jobs, results, strict=True):
        table.setdefault((k, arm), []).append(res)
        print(json.dumps({"proxies_per_class": k, "arm": arm, "seed": seed, **res}), flush=True)
    print(f"\n{today()}, {machine()}, {seconds / 60:.1f} min")
    print(f"fixed: {' '.join(f'{k}={v}' for k, v in fixed.items())}\n")
    print("| proxies per class | MAP@R with re-init | re-inits per trial | MAP@R without re-init |")
    print("|---|---|---|---|")
    for k in COUNTS:
        cells = []
        for arm in ARMS:
            values = [r["map_at_r"] for r in table[(k, arm)]]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} +- {sd:.4f}")
        reinits = [int(r["reinitialisations"]) for r in table[(k, "with")]]
        print(f"| {k} | {cells[0]} | {', '.join(map(str, reinits))} | {cells[1]} |")


if __name__ == "__main__":
    main()
