"""Platform overhead of a search: the same N fixed trial configurations through
``python -m tuneddml.search`` (Ray Tune + MLflow + searcher) and through a plain Python process
pool running the trial function, with the same threads per trial and the same concurrency (2).

overhead = (search wall - plain wall) / plain wall; goal <= 10% for trials of about a minute.

    .venv/bin/python bench/bench_overhead.py [--trials 4] [--long-steps 60] [--short-steps 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today

ROOT = Path(__file__).resolve().parents[1]


def one_trial(flat: dict) -> float:
    import torch

    from tuneddml.config import TrialConfig
    from tuneddml.training import run_trial

    torch.set_num_threads(1)
    return run_trial(TrialConfig.from_flat(flat)).metrics["map_at_r"]


def plain(configs: list[dict]) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:  # fresh worker processes import torch, as Ray's do
        list(pool.map(one_trial, configs))
    return time.perf_counter() - start


def search(fixed: dict, seeds: list[int], folder: Path) -> float:
    space = folder / "fixed_configs.yaml"
    space.write_text(
        json.dumps(
            {
                "description": "N fixed configurations (benchmark)",
                "metric": "map_at_r",
                "mode": "max",
                "searcher": "grid",
                "scheduler": "fifo",
                "num_samples": len(seeds),
                "fixed": fixed,
                "parameters": {"seed": {"choice": seeds}},
            }
        )
    )
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneddml.search",
            f"--space={space}",
            "--max-concurrent",
            "2",
            "--cpus-per-trial",
            "1",
            "--storage",
            str(folder / "runs"),
            "--tracking-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def measure(steps: int, epochs: int, trials: int) -> tuple[float, float]:
    fixed = {"dataset": "glyphs", "split": "val", "epochs": epochs, "steps_per_epoch": steps, "threads": 1}
    seeds = list(range(trials))
    configs = [{**fixed, "seed": s} for s in seeds]
    with tempfile.TemporaryDirectory() as tmp:
        s = search(fixed, seeds, Path(tmp))
    p = plain(configs)
    return s, p


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--long-steps", type=int, default=60, help="steps per epoch of the ~1 minute trials")
    parser.add_argument("--short-steps", type=int, default=3, help="steps per epoch of the few-second trials")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for label, steps in (("about a minute", args.long_steps), ("a few seconds", args.short_steps)):
        s, p = measure(steps, args.epochs, args.trials)
        rows.append((label, steps, s, p))
        print(f"{label}: search {s:.1f} s, plain {p:.1f} s, overhead {(s - p) / p:+.1%}", flush=True)
    print(f"\n{today()} | {machine()}")
    for label, steps, s, p in rows:
        print(
            f"| {label} ({args.epochs} epochs x {steps} steps) | {args.trials} | {s / args.trials * 2:.0f} | "
            f"{s:.1f} | {p:.1f} | {(s - p) / p:+.1%} |"
        )


if __name__ == "__main__":
    main()
