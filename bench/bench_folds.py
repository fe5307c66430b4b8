"""Folds inside one trial against one trial per fold (issue 12).

A cross-validated trial (``cross_validate=true``, :class:`tuneddml.training.folds.FoldsTrainer`)
trains its ``num_folds`` fold models in one process, round-robin per epoch. The alternative is one
Ray trial per fold (``cross_validate=false fold=i``), the searcher waiting for all of them. For
k = 2 and 4 this measures

- (a) one cross-validated trial, ``run_trial`` in a fresh child process;
- (b) k single-fold trials (``fold=0..k-1``, same settings), each in its own fresh child process,
  one after the other (what one Ray slot would do; on an idle cluster they could run side by side).

Every child is a fresh interpreter, so the imports count, as a Ray trial's process pays them when
its actor starts (Ray's own actor start is not included). Per design: wall seconds around the
children, CPU seconds (user + sys of each child, from ``os.wait4``), peak RSS (the largest
child's), and inside the children the imports, the set-up (dataset build, split, model: the time
of ``run_trial`` less the trial's own training-and-evaluation seconds) and the training and
evaluation. The validation MAP@R of (a) (mean over its fold models) is compared with the mean of
(b)'s, and fold by fold. Batches and augmentation draw from each trainer's own generator, so with
the defaults they agree exactly; a configuration that draws from the global torch random state while
training (which (a)'s fold models share) would make them differ.

    .venv/bin/python bench/bench_folds.py [--folds 2 4] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today

ROOT = Path(__file__).resolve().parents[1]
#: the settings of the issue's measurement: glyphs, batch 64, 3 epochs x 25 steps, 1 thread
SETTINGS = {"dataset": "glyphs", "split": "val", "batch_size": 64, "epochs": 3, "steps_per_epoch": 25, "threads": 1}


def child(flat: dict) -> None:
    """Run one trial in this (fresh) process; print one JSON line with its timings and metrics."""
    t0 = time.perf_counter()
    from tuneddml.config import TrialConfig
    from tuneddml.training.folds import run_trial

    t1 = time.perf_counter()
    result = run_trial(TrialConfig.from_flat(flat))
    t2 = time.perf_counter()
    metrics = {k: v for k, v in result.metrics.items() if k.endswith("map_at_r")}
    out = {"imports": t1 - t0, "setup": (t2 - t1) - result.seconds, "train_eval": result.seconds}
    print(json.dumps({**out, "metrics": metrics}), flush=True)


def run_child(flat: dict) -> dict:
    """One fresh child process running ``flat``; its wall, CPU (user + sys) and peak RSS."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(flat)], env=env, stdout=subprocess.PIPE, text=True
    )
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {flat}")
    out = json.loads(stdout.strip().splitlines()[-1])
    out.update(wall=wall, cpu=usage.ru_utime + usage.ru_stime, peak_mb=usage.ru_maxrss / 1024.0)
    return out


def measure(k: int, overrides: dict) -> dict[str, dict]:
    """(a) one cross-validated trial of k folds, then (b) k single-fold trials; totals of each."""
    base = {**SETTINGS, **overrides, "num_folds": k}
    print(f"k={k}: (a) one cross-validated trial", flush=True)
    one = run_child({**base, "cross_validate": True})
    folds = []
    for i in range(k):
        print(f"k={k}: (b) fold {i}", flush=True)
        folds.append(run_child({**base, "cross_validate": False, "fold": i}))
    a = {key: one[key] for key in ("wall", "cpu", "peak_mb", "imports", "setup", "train_eval")}
    a["map_at_r"] = one["metrics"]["map_at_r"]
    a["per_fold"] = [one["metrics"][f"fold{i}/map_at_r"] for i in range(k)]
    b = {key: sum(f[key] for f in folds) for key in ("wall", "cpu", "imports", "setup", "train_eval")}
    b["peak_mb"] = max(f["peak_mb"] for f in folds)
    b["per_fold"] = [f["metrics"]["map_at_r"] for f in folds]
    b["map_at_r"] = sum(b["per_fold"]) / k
    return {"a": a, "b": b}


def table(results: dict[int, dict[str, dict]]) -> str:
    lines = [
        "| k | design | wall (s) | CPU (s) | peak RSS (MB) | imports (s) | set-up (s) | train + eval (s) "
        "| val MAP@R (mean over folds) | per fold |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    names = {"a": "(a) 1 trial, cross_validate", "b": "(b) k trials, 1 fold each"}
    for k, r in results.items():
        for side in ("a", "b"):
            x = r[side]
            per = ", ".join(f"{v:.4f}" for v in x["per_fold"])
            lines.append(
                f"| {k} | {names[side]} | {x['wall']:.1f} | {x['cpu']:.1f} | {x['peak_mb']:.0f} | "
                f"{x['imports']:.1f} | {x['setup']:.1f} | {x['train_eval']:.1f} | {x['map_at_r']:.4f} | {per} |"
            )
        a, b = r["a"], r["b"]
        lines.append(
            f"| {k} | ratio (b)/(a) | {b['wall'] / a['wall']:.2f} | {b['cpu'] / a['cpu']:.2f} | "
            f"{b['peak_mb'] / a['peak_mb']:.2f} | {b['imports'] / a['imports']:.2f} | "
            f"{b['setup'] / a['setup']:.2f} | {b['train_eval'] / a['train_eval']:.2f} | "
            f"{b['map_at_r'] - a['map_at_r']:+.4f} (difference) | |"
        )
    for k, r in results.items():
        gap = max(abs(x - y) for x, y in zip(r["a"]["per_fold"], r["b"]["per_fold"]))
        lines.append(f"\nk={k}: largest |(a) - (b)| over the fold models' MAP@R: {gap:.3g}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, nargs="+", default=[2, 4], help="values of k")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    from tuneddml.cli import parse_overrides

    overrides = parse_overrides(args.overrides)
    where = machine()
    started = today()
    results = {k: measure(k, overrides) for k in args.folds}
    command = " ".join(["python", "bench/bench_folds.py", *sys.argv[1:]])
    settings = " ".join(f"{k}={v}" for k, v in {**SETTINGS, **overrides}.items())
    print(f"\n{started}; {where}; load average at the end {os.getloadavg()[0]:.2f}")
    print(f"Command: `{command}`; settings: {settings}\n")
    print(table(results))


if __name__ == "__main__":
    main()
