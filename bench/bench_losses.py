"""Every loss under the same small search budget on ``glyphs`` (the fair-comparison idea of
"A Metric Learning Reality Check", Musgrave et al. 2020).

For each loss of the ``seed_methods`` space, the space is narrowed to that loss (its own
parameters keep the space's ranges and conditions) and searched with the same searcher, budget,
seed and fixed settings; the table lists each loss's best validation MAP@R and its Recall@1.

    .venv/bin/python bench/bench_losses.py [--num-samples 3] [--searcher random] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today

ROOT = Path(__file__).resolve().parents[1]


def _spec(domain: Any) -> dict:
    """A compiled domain back in space-file form (``when`` apart)."""
    if domain.kind == "choice":
        spec: dict = {"choice": list(domain.choices)}
    else:
        kind = "int" if domain.kind == "int" else domain.kind
        low, high = (int(domain.low), int(domain.high)) if kind == "int" else (domain.low, domain.high)
        spec = {kind: [low, high]}
        if kind == "int" and domain.log:
            spec["log"] = True
    spec["start"] = domain.start
    return spec


def narrowed_space(loss: str, folder: Path) -> Path:
    """seed_methods with ``loss`` fixed: keep the domains that apply to it (the loss blocks
    compiled), drop the rest and whatever depends on a dropped parameter."""
    from tuneddml.searchers.space import load_space

    loaded = load_space("seed_methods", validate=lambda flat: None)
    space = yaml.safe_load(loaded.path.read_text())
    space["fixed"]["loss"] = loss
    kept: dict = {}
    for key, variants_of_key in loaded.parameters.items():
        if key == "loss":
            continue
        variants = []
        for domain in variants_of_key:
            when = {k: list(v) for k, v in domain.when}
            if "loss" in when:
                if loss not in when.pop("loss"):
                    continue
            variant = _spec(domain)
            if when:
                variant["when"] = when
            variants.append(variant)
        if variants:
            kept[key] = variants if len(variants) > 1 else variants[0]
    changed = True
    while changed:  # a condition on a dropped parameter drops the dependent one too
        changed = False
        for key, value in list(kept.items()):
            variants = value if isinstance(value, list) else [value]
            alive = [v for v in variants if all(_possible(k, want, kept, space["fixed"])
                                                for k, want in v.get("when", {}).items())]
            if len(alive) != len(variants):
                changed = True
                if alive:
                    kept[key] = alive if len(alive) > 1 else alive[0]
                else:
                    del kept[key]
    space["parameters"] = kept
    path = folder / f"only_{loss}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _possible(key: str, wanted: object, kept: dict, fixed: dict) -> bool:
    """Can ``key`` still take one of the ``wanted`` values?"""
    wanted = set(wanted if isinstance(wanted, list) else [wanted])
    if key in fixed:
        return fixed[key] in wanted
    if key not in kept:
        return False
    variants = kept[key] if isinstance(kept[key], list) else [kept[key]]
    choices = [c for v in variants for c in v.get("choice", [])]
    return any("choice" not in v for v in variants) or bool(wanted & set(choices))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-samples", type=int, default=3)
    parser.add_argument("--searcher", default="random")
    parser.add_argument("--losses", help="comma-separated subset (default: every loss of seed_methods)")
    parser.add_argument("overrides", nargs="*", help="trial settings fixed for every loss, e.g. epochs=3")
    args = parser.parse_args()
    from tuneddml.searchers.space import load_space

    (loss_domain,) = load_space("seed_methods", validate=lambda flat: None).parameters["loss"]
    losses = args.losses.split(",") if args.losses else list(loss_domain.choices)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for loss in losses:
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "tuneddml.search", f"--space={narrowed_space(loss, folder)}",
                 "--searcher", args.searcher, "--num-samples", str(args.num_samples), "--scheduler", "fifo",
                 "--storage", str(folder / "runs"), "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
                 "--name", f"bench-{loss}", "--json", *args.overrides],
                cwd=folder, capture_output=True, text=True,
            )
            seconds = time.perf_counter() - start
            if proc.returncode != 0 and not proc.stdout.strip():
                print(f"{loss}: search failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                rows.append((loss, None, None, {}, seconds))
                continue
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            best = summary.get("best_metrics") or {}
            rows.append((loss, best.get("best_map_at_r"), best.get("recall_at_1"), summary["trials"], seconds))
            print(f"{loss}: MAP@R {best.get('best_map_at_r')}, R@1 {best.get('recall_at_1')}, "
                  f"{summary['trials']} in {seconds:.0f} s", flush=True)
    fixed = " ".join(args.overrides) or "the space's fixed settings"
    print(f"\n{today()} | {machine()} | searcher {args.searcher}, {args.num_samples} trials per loss, "
          f"seed 0, {fixed}")
    print("| loss | best MAP@R (val) | Recall@1 (val) | trials | wall (s) |\n|---|---:|---:|---|---:|")
    for loss, map_r, r1, trials, seconds in sorted(rows, key=lambda r: -(r[1] or -1)):
        shown = ", ".join(f"{n} {s}" for s, n in trials.items()) if trials else "failed"
        print(f"| {loss} | {map_r:.4f} | {r1:.4f} | {shown} | {seconds:.0f} |" if map_r is not None
              else f"| {loss} | - | - | {shown} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
