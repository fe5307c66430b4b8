"""Issue 14's three figures from the searches `bench/bench_fidelity.sh` ran (read from their
folders; nothing is trained here):

1. trials per CPU-hour on cached features against full trials at the same batch size: from each
   check run, where the same configurations ran as cached trials (rung 0) and as full trials
   (the check, fifo), on the same machine in the same hour; both per trial as run and per
   configuration matched (same batch size, same epochs when the cached one was not stopped early);
2. Spearman between the cached and the full fidelity over every configuration of a check run;
3. the multi-fidelity searches against the full searches: best full-fidelity MAP@R, mean +- sd over
   training seeds, and compute (the sum of the trials' seconds, each trial on one CPU).

    python bench/fidelity_summary.py RUNS_FOLDER
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pandas as pd

METRIC = "best.map_at_r"


def table(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "results.parquet")


def per_hour(seconds: pd.Series) -> float:
    return 3600.0 / float(seconds.mean())


def rates(runs: Path, name: str) -> None:
    cheap = table(runs / name / "searches" / "rung0")
    full = table(runs / name / "searches" / "check")
    keys = [c for c in cheap.columns if c.startswith("config.") and cheap[c].nunique(dropna=False) > 1]
    whole = cheap[cheap["epochs"] == cheap["epochs"].max()]
    print(f"### {name}: trials per CPU-hour (1 CPU per trial)")
    print(f"- cached trials as run (ASHA may stop them early): {len(cheap)} trials, mean {cheap.seconds.mean():.2f} s "
          f"-> {per_hour(cheap.seconds):.0f} trials/CPU-hour")
    print(f"- cached trials that ran every epoch: {len(whole)}, mean {whole.seconds.mean():.2f} s "
          f"-> {per_hour(whole.seconds):.0f} trials/CPU-hour")
    print(f"- full trials (the check, every epoch): {len(full)}, mean {full.seconds.mean():.2f} s "
          f"-> {per_hour(full.seconds):.0f} trials/CPU-hour")
    print(f"- ratio, every-epoch cached to full: {full.seconds.mean() / whole.seconds.mean():.1f}x")
    merged = whole.merge(full, on=keys, suffixes=("_cached", "_full"))
    if len(merged):
        ratio = merged["seconds_full"] / merged["seconds_cached"]
        print(f"- per configuration matched ({len(merged)}, same batch size and epochs): median {ratio.median():.1f}x "
              f"(range {ratio.min():.1f}-{ratio.max():.1f}x)")
    report = json.loads((runs / name / "fidelity.json").read_text())
    check = report.get("check") or {}
    print(f"- Spearman cached vs full over {check.get('matched')} configurations: {check.get('spearman'):.3f}")
    regrets = ", ".join(f"k={r['k']}: {r['regret']:.4f}" for r in check.get("regret_top_k", []))
    print(f"- regret of promoting the top k from the cached rung: {regrets}")
    print(f"- best full MAP@R in the check {check.get('best_full'):.4f}; the search's pick "
          f"{(check.get('search_best') or {}).get('check_value')}")
    print()


def search_compute(folder: Path) -> tuple[float, float]:
    t = table(folder)
    return float(t[METRIC].max()), float(t.seconds.sum())


def targets(runs: Path, full: list[str], mf: list[str]) -> None:
    print("### full searches against multi-fidelity searches (same training seed per row)")
    print("| seed | full: best MAP@R | full: trial-seconds | mf: best full-fidelity MAP@R | mf: trial-seconds (cached + full) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    fb, mb, ratios = [], [], []
    for seed, (f, m) in enumerate(zip(full, mf)):
        best_f, sec_f = search_compute(runs / f)
        rungs = sorted((runs / m / "searches").glob("rung*"))
        parts = [search_compute(r) for r in rungs]
        best_m, sec_m = parts[-1][0], sum(p[1] for p in parts)
        fb.append(best_f)
        mb.append(best_m)
        ratios.append(sec_m / sec_f)
        print(f"| {seed} | {best_f:.4f} | {sec_f:.0f} | {best_m:.4f} | {' + '.join(f'{p[1]:.0f}' for p in parts)} = {sec_m:.0f} "
              f"| {sec_m / sec_f:.2f} |")
    sd = statistics.stdev
    print(f"| mean +- sd | {statistics.mean(fb):.4f} +- {sd(fb):.4f} | | {statistics.mean(mb):.4f} +- {sd(mb):.4f} | "
          f"| {statistics.mean(ratios):.2f} |")
    print()


if __name__ == "__main__":
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs")
    for name in ("check16", "check24-random"):
        if (runs / name / "fidelity.json").is_file():
            rates(runs, name)
    full = [f"full16-seed{s}" for s in range(3)]
    mf = [f"mf16x2-seed{s}" for s in range(3)]
    if all((runs / n).is_dir() for n in full + mf):
        targets(runs, full, mf)
