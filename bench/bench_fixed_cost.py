"""Where a search's time goes when the trials are tiny: the fixed cost of a search, the cost of
each extra trial, the platform's share of a default search, and a soak of many tiny trials.

    .venv/bin/python bench/bench_fixed_cost.py breakdown [--repeat 3]   # 1-trial searches
    .venv/bin/python bench/bench_fixed_cost.py per-trial [--trials 41]  # N tiny trials vs 1
    .venv/bin/python bench/bench_fixed_cost.py soak [--trials 1000]     # driver RSS, store growth
    .venv/bin/python bench/bench_fixed_cost.py share RESULTS_FOLDER     # of a finished search

``--root PATH`` runs another checkout of the project (its folder is put first on PYTHONPATH), so
a "before" and an "after" are measured in the same session. Every search runs in a fresh folder
with its own sqlite store, as ``python -m tuneddml.search`` with ``--json``; its wall time is
measured around the command (interpreter start, imports, Ray start and stop, MLflow, report).
The trial's own time is the results table's ``seconds`` (Ray's ``time_total_s``: everything the
trainable did). fixed = wall - trial time; the driver's own phase timings (``phases`` in the JSON
summary, where the checkout has them) break it down.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": "glyphs-tiny", "split": "val", "epochs": 1, "steps_per_epoch": 1}


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="bfc", dir="/tmp")
    return env


def _space(folder: Path, n: int, fixed: dict) -> Path:
    space = folder / "tiny.yaml"
    space.write_text(
        json.dumps(
            {
                "description": "N tiny fixed trials (benchmark)",
                "metric": "map_at_r",
                "mode": "max",
                "searcher": "grid",
                "scheduler": "fifo",
                "num_samples": n,
                "fixed": fixed,
                "parameters": {"seed": {"choice": list(range(n))}},
            }
        )
    )
    return space


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class Sampler(threading.Thread):
    """The driver's RSS (and its process tree's) every ``every`` seconds, with the number of trials
    that had ended by then (counted from the driver's ``trial ...`` lines)."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.ended = 0
        self.samples: list[tuple[float, int, int, int]] = []  # (t, trials ended, driver rss, tree rss)
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        start = time.monotonic()
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                rss = root.memory_info().rss
                tree = rss
                for child in root.children(recursive=True):
                    try:
                        tree += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.monotonic() - start, self.ended, rss, tree))
            self.stop.wait(self.every)


def run_search(root: Path, n: int, fixed: dict, concurrent: int = 2, sample: bool = False) -> dict:
    """One search of ``n`` fixed tiny trials in a fresh folder; its wall time, summary, trial times."""
    import pyarrow.parquet as pq

    folder = Path(tempfile.mkdtemp(prefix="bench-fixed-"))
    space = _space(folder, n, fixed)
    cmd = [
        sys.executable, "-m", "tuneddml.search", f"--space={space}", "--name", "bench",
        "--max-concurrent", str(concurrent), "--cpus-per-trial", "1", "--json",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=folder, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = Sampler(proc.pid) if sample else None
    if sampler:
        sampler.start()
    first_line = last_line = None
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if first_line is None:
            first_line = time.perf_counter() - start
        lines.append(line)
        last_line = time.perf_counter() - start
        if sampler and re.match(r"trial \S+ ", line):
            sampler.ended += 1
    proc.wait()
    wall = time.perf_counter() - start
    if sampler:
        sampler.stop.set()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"search failed (exit {proc.returncode}):\n" + "".join(lines[-30:]))
    summary = json.loads([ln for ln in lines if ln.startswith("{")][-1])
    table = pq.read_table(summary["results"]).to_pandas()
    out = {
        "wall": wall,
        "first_line": first_line,
        "last_line": last_line,
        "trial_seconds": [float(s) for s in table["seconds"]],
        "phases": summary.get("phases") or {},
        "folder": folder,
        "samples": sampler.samples if sampler else [],
        "store": {
            "mlflow.db": _du(folder / "mlflow.db"),
            "mlruns": _du(folder / "mlruns"),
            "tuneddml_runs": _du(folder / "tuneddml_runs"),
        },
    }
    return out


def imports(root: Path, repeat: int) -> dict[str, float]:
    """Interpreter start alone, and with the search command's imports (best of ``repeat``)."""
    found = {}
    for label, code in (
        ("interpreter", "pass"),
        ("import tuneddml.search", "import tuneddml.search"),
        ("+ request", "import tuneddml.search, tuneddml.tuning.request"),
        ("+ driver", "import tuneddml.search, tuneddml.tuning.driver"),
    ):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=_env(root), check=True)
            times.append(time.perf_counter() - t)
        found[label] = min(times)
    return found


def _header(args: argparse.Namespace) -> Path:
    """The checkout measured; when, where and which, printed first."""
    root = Path(args.root).resolve()
    print(f"{today()} | {machine()} | checkout {root}")
    return root


def breakdown(args: argparse.Namespace) -> None:
    root = _header(args)
    for label, seconds in imports(root, args.repeat).items():
        print(f"  {label}: {seconds:.2f} s")
    for i in range(args.repeat):
        got = run_search(root, 1, {"dataset": "glyphs-tiny", "split": "val", "epochs": 2})
        trial = sum(got["trial_seconds"])
        phases = ", ".join(f"{k} {v:.2f}" for k, v in got["phases"].items())
        print(
            f"1-trial search {i + 1}: wall {got['wall']:.2f} s, trial {trial:.2f} s, "
            f"fixed {got['wall'] - trial:.2f} s, first line at {got['first_line']:.2f} s, "
            f"exit {got['wall'] - got['last_line']:.2f} s after the last | {phases}",
            flush=True,
        )


def per_trial(args: argparse.Namespace) -> None:
    root = _header(args)
    for _ in range(args.repeat):
        one = run_search(root, 1, TINY)
        many = run_search(root, args.trials, TINY)
        extra = many["wall"] - one["wall"] - (sum(many["trial_seconds"]) - sum(one["trial_seconds"])) / 2
        print(
            f"1 trial: wall {one['wall']:.2f} s; {args.trials} trials: wall {many['wall']:.2f} s, "
            f"mean trial {sum(many['trial_seconds']) / args.trials:.3f} s (2 at once); "
            f"per extra trial beyond its own time / 2 slots: {extra / (args.trials - 1):.3f} s",
            flush=True,
        )


def soak(args: argparse.Namespace) -> None:
    root = _header(args)
    got = run_search(root, args.trials, TINY, sample=True)
    samples = got["samples"]

    def at(k: int) -> tuple[float, int, int, int]:
        return next((s for s in samples if s[1] >= k), samples[-1])

    first, last = at(int(args.trials * 0.2)), samples[-1]
    peak = max(s[2] for s in samples)
    print(
        f"{args.trials} tiny trials in {got['wall']:.0f} s (mean trial {sum(got['trial_seconds']) / args.trials:.3f} s)"
    )
    print(
        f"driver RSS at trial {first[1]}: {first[2] / 2**20:.0f} MiB; at the end ({last[1]} trials): "
        f"{last[2] / 2**20:.0f} MiB (growth {(last[2] - first[2]) / first[2]:+.1%}); peak {peak / 2**20:.0f} MiB"
    )
    print(f"process tree RSS at trial {first[1]}: {first[3] / 2**20:.0f} MiB; at the end: {last[3] / 2**20:.0f} MiB")
    for name, size in got["store"].items():
        print(f"store {name}: {size / 2**20:.1f} MiB, {size / args.trials / 1024:.1f} KiB per trial")
    curve = Path(args.curve)
    curve.parent.mkdir(parents=True, exist_ok=True)
    curve.write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    print(f"RSS curve (t, trials ended, driver rss, tree rss): {curve}")


def share(args: argparse.Namespace) -> None:
    """Platform share of a finished search: 1 - (sum of trial seconds / slots) / wall."""
    import pyarrow.parquet as pq

    folder = Path(args.folder)
    table = pq.read_table(folder / "results.parquet").to_pandas()
    wall, slots = args.wall, args.slots
    busy = table["seconds"].astype(float).sum() / slots
    print(f"{len(table)} trials, {busy:.0f} s of trials per slot over {wall:.0f} s: platform {1 - busy / wall:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="checkout to measure (default: this one)")
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("breakdown")
    b.add_argument("--repeat", type=int, default=3)
    p = sub.add_parser("per-trial")
    p.add_argument("--trials", type=int, default=41)
    p.add_argument("--repeat", type=int, default=1)
    s = sub.add_parser("soak")
    s.add_argument("--trials", type=int, default=1000)
    s.add_argument("--curve", default=str(ROOT / "bench" / "soak_rss.jsonl"))
    sh = sub.add_parser("share")
    sh.add_argument("folder")
    sh.add_argument("--wall", type=float, required=True, help="the search's wall time in seconds")
    sh.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    {"breakdown": breakdown, "per-trial": per_trial, "soak": soak, "share": share}[args.what](args)


if __name__ == "__main__":
    main()
