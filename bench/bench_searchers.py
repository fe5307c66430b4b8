# Long file: one benchmark script (virtual clock, cached trials, every searcher, figures) meant to be read top to bottom.
"""Searchers at equal budgets: which one finds the best configuration of a space, and how fast.

    python bench/bench_searchers.py                       # everything (hours on 2 cores; resumable)
    python bench/bench_searchers.py --spaces contrastive_balance --datasets glyphs --seeds 2
    python bench/bench_searchers.py --report-only         # tables and figures from what is done

For every space x dataset x searcher x budget x searcher seed, one search runs through the
searcher's ask/tell interface (the same cores and Optuna samplers the Ray Tune driver uses, built
the same way as :func:`tuneddml.searchers.make_ray_searcher`), with ``--concurrency`` trials in
flight on a virtual clock: a trial's duration is a deterministic cost model of its work
(:func:`trial_cost`), so the order in which results come back, hence every search, is reproducible,
and slot utilisation (busy trial-seconds / (slots x wall)) is measured on that clock. The trials
themselves are real: :func:`tuneddml.training.run_trial` on one CPU thread, short
(``TRIAL_SETTINGS``), with training seed = searcher seed, so the noise of a trial is part of what
each searcher faces. Results are cached by (dataset, full trial config), so two searchers that
propose the same point share one training (the value is the same: trials are deterministic).

Then the best configuration of each search (by its observed value, the rule the driver uses) is
re-trained with ``RETRAIN_SEEDS`` training seeds, and the report gives, per space, dataset and
budget: the mean best observed value and the mean re-trained value of each searcher (+- sd over
searcher seeds), the trials each needed to reach 95% / 99% of the best value any search found, the
trials the default searcher needed to reach random search's best at the largest budget, slot
utilisation, and best-so-far curves with bands (``bench/figures/searchers_*.png``).

Datasets: ``glyphs`` (the built-in data every default was chosen on) and ``fonts``: ``glyphs-xl``
with only fonts that ``glyphs`` does not have (Debian's ``fonts-liberation``,
``fonts-freefont-ttf``, ``fonts-urw-base35``; install them first), never used to choose a default.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import heapq
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuneddml.searchers.coordinate_descent import FINISHED  # noqa: E402

DATASETS: dict[str, dict[str, Any]] = {
    "glyphs": {"dataset": "glyphs"},
    "fonts": {
        "dataset": "glyphs-xl",
        "dataset.font_dirs": os.pathsep.join(
            [
                "/usr/share/fonts/truetype/liberation",
                "/usr/share/fonts/truetype/freefont",
                "/usr/share/fonts/opentype/urw-base35",
            ]
        ),
        "dataset.matplotlib_fonts": False,
        "dataset.min_fonts": 20,
    },
}
# short, real trials: 40 steps of a narrow small_cnn, one evaluation on the validation fold
TRIAL_SETTINGS: dict[str, Any] = {
    "split": "val",
    "epochs": 1,
    "steps_per_epoch": 40,
    "backbone.width": 8,
    "eval_ap": False,
    "eval_nmi": False,
    "threads": 1,
}
SEARCHERS = ("balance", "coordinate_descent", "tpe", "random", "grid", "cmaes", "balance_wait")
RETRAIN_SEEDS = (1000, 1001, 1002)
DEFAULT_SEARCHER = "balance"
OUT = ROOT / "bench" / "searchers"
CACHE = ROOT / ".cache" / "bench_searchers"
FIGURES = ROOT / "bench" / "figures"


# ---- trials ---------------------------------------------------------------------------------
def trial_cost(flat: dict[str, Any]) -> float:
    """Virtual seconds of a trial: its training work (samples seen) plus one evaluation per epoch,
    calibrated on this machine (about 900 samples/s for the width-8 CNN on one thread, 1.5 s per
    evaluation of a validation fold)."""
    epochs = int(flat.get("epochs", 1))
    steps = int(flat.get("steps_per_epoch") or 40)
    return epochs * (steps * int(flat.get("batch_size", 64)) / 900.0 + 1.5)


class Objective:
    """Real trials, cached in a JSON-lines file shared by the worker processes."""

    def __init__(self, cache_file: Path) -> None:
        self.file = cache_file
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.values: dict[str, dict[str, Any]] = {}
        self.trained = 0
        self._reload()

    def _reload(self) -> None:
        if not self.file.exists():
            return
        for line in self.file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a killed process
            self.values[row["key"]] = row

    @staticmethod
    def key_of(flat: dict[str, Any]) -> str:
        return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()

    def __call__(self, flat: dict[str, Any], metric: str) -> float | None:
        from tuneddml.config import TrialConfig
        from tuneddml.errors import TrialDiverged
        from tuneddml.training import run_trial

        config = TrialConfig.from_flat(flat)
        full = config.to_flat()
        key = self.key_of(full)
        if key not in self.values:
            self._reload()  # another process may have trained it meanwhile
        if key not in self.values:
            start = time.perf_counter()
            try:
                result = run_trial(config)
                value = max(float(r.metrics[metric]) for r in result.history)
                value = value if math.isfinite(value) else None
            except TrialDiverged:
                value = None
            row = {"key": key, "value": value, "seconds": round(time.perf_counter() - start, 2)}
            with open(self.file, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.write(json.dumps(row) + "\n")
            self.values[key] = row
            self.trained += 1
        return self.values[key]["value"]


# ---- searchers through one ask/tell interface ------------------------------------------------
class OptunaAskTell:
    """An Optuna sampler over a SearchSpace, as the Ray driver's ``SpaceOptunaSearch`` uses it:
    the space's define-by-run function, the start point (every start point) enqueued first."""

    def __init__(self, space: Any, sampler: Any, mode: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.study = optuna.create_study(sampler=sampler, direction="maximize" if mode == "max" else "minimize")
        for config in space.start_points or (space.config_of(space.start_point()),):  # in order
            self.study.enqueue_trial(space.names_of(config))
        self.pending: dict[str, Any] = {}

    def ask(self) -> Any:
        trial = self.study.ask()
        self.space.define_by_run(trial)
        key = f"o{trial.number:05d}"
        self.pending[key] = trial
        return key, self.space.keys_of(trial.params)

    def tell(self, key: str, value: float | None) -> None:
        import optuna

        trial = self.pending.pop(key)
        if value is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, value)


def make_searcher(name: str, space: Any, *, seed: int, budget: int, concurrency: int) -> Any:
    """The ask/tell searcher ``name``, built with the options ``make_ray_searcher`` gives it."""
    mode = space.mode
    if name == "coordinate_descent":
        from tuneddml.searchers.coordinate_descent import CoordinateDescent

        return CoordinateDescent(space, seed=seed, mode=mode, max_trials=budget)
    if name in ("balance", "balance_wait"):
        from tuneddml.searchers.balance import BalanceOptions, BalanceSearch

        options = BalanceOptions(fill_slots=name == "balance")
        return BalanceSearch(space, seed=seed, mode=mode, max_trials=budget, options=options)
    if name == "grid":
        from tuneddml.searchers.grid import GridSearch

        return GridSearch(space, seed=seed, mode=mode, max_trials=budget)
    if name not in ("tpe", "cmaes", "random"):
        raise SystemExit(f"unknown searcher {name!r}: one of {', '.join(SEARCHERS)}")
    from tuneddml.searchers.optuna_searchers import optuna_sampler

    sampler = optuna_sampler(name, seed=seed, max_concurrent=concurrency, num_samples=budget)
    return OptunaAskTell(space, sampler, mode)


def simulate(
    searcher: Any, evaluate: Any, *, budget: int, concurrency: int, cost: Any
) -> dict[str, Any]:
    """Run ``searcher`` with ``concurrency`` trials in flight on a virtual clock.

    ``evaluate(config) -> value`` (None: failed); ``cost(config) -> seconds``. Returns the trials
    in the order they were asked (config, value, start, end) and the slot utilisation."""
    clock, seq, issued = 0.0, 0, 0
    running: list[tuple[float, int, str, float | None]] = []
    trials: list[dict[str, Any]] = []
    finished = False
    while True:
        while not finished and len(running) < concurrency and issued < budget:
            got = searcher.ask()
            if got is None:
                break
            if got == FINISHED:
                finished = True
                break
            key, config = got
            value = evaluate(config)
            duration = cost(config)
            heapq.heappush(running, (clock + duration, seq, key, value))
            trials.append({"config": config, "value": value, "start": clock, "end": clock + duration})
            seq += 1
            issued += 1
        if not running:
            break
        clock, _, key, value = heapq.heappop(running)
        searcher.tell(key, value)
    wall = max((t["end"] for t in trials), default=0.0)
    busy = sum(t["end"] - t["start"] for t in trials)
    return {"trials": trials, "wall": wall, "utilisation": busy / (concurrency * wall) if wall else 0.0}


# ---- one search -----------------------------------------------------------------------------
def run_file(space: str, dataset: str, searcher: str, budget: int, seed: int) -> Path:
    return OUT / "runs" / f"{space}__{dataset}__{searcher}__b{budget}__s{seed}.json"


def run_one(task: tuple[str, str, str, int, int, int]) -> str:
    space_name, dataset, searcher_name, budget, seed, concurrency = task
    out = run_file(space_name, dataset, searcher_name, budget, seed)
    if out.exists():
        return f"{out.name}: done before"
    import torch

    from tuneddml.searchers.space import load_space

    torch.set_num_threads(1)
    space = load_space(space_name)
    objective = Objective(CACHE / "trials.jsonl")
    base = {**space.fixed, **DATASETS[dataset], **TRIAL_SETTINGS}

    def flat_of(config: dict[str, Any], train_seed: int) -> dict[str, Any]:
        return {**base, **config, "seed": train_seed}

    start = time.perf_counter()
    searcher = make_searcher(searcher_name, space, seed=seed, budget=budget, concurrency=concurrency)
    result = simulate(
        searcher,
        lambda config: objective(flat_of(config, seed), space.metric),
        budget=budget,
        concurrency=concurrency,
        cost=lambda config: trial_cost(flat_of(config, seed)),
    )
    scored = [t for t in result["trials"] if t["value"] is not None]
    sign = 1 if space.mode == "max" else -1
    best = max(scored, key=lambda t: sign * t["value"]) if scored else None
    retrained = []
    if best is not None:
        retrained = [objective(flat_of(best["config"], s), space.metric) for s in RETRAIN_SEEDS]
    record = {
        "space": space_name,
        "dataset": dataset,
        "searcher": searcher_name,
        "budget": budget,
        "seed": seed,
        "concurrency": concurrency,
        "trials": result["trials"],
        "utilisation": result["utilisation"],
        "virtual_wall": result["wall"],
        "best_config": best["config"] if best else None,
        "best_value": best["value"] if best else None,
        "retrained": retrained,
        "trained_here": objective.trained,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=str))
    tmp.replace(out)
    return f"{out.name}: best {record['best_value']}, {objective.trained} trained, {record['seconds']} s"


# ---- report -----------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def best_so_far(record: dict[str, Any], sign: int) -> list[float]:
    out, best = [], -math.inf
    for t in record["trials"]:
        if t["value"] is not None:
            best = max(best, sign * t["value"])
        out.append(sign * best if best > -math.inf else math.nan)
    return out


def trials_to_reach(curve: list[float], target: float, sign: int) -> int | None:
    for i, v in enumerate(curve, start=1):
        if not math.isnan(v) and sign * v >= sign * target:
            return i
    return None


def report(out_md: Path | None = None) -> str:
    records = [json.loads(p.read_text()) for p in sorted((OUT / "runs").glob("*.json"))]
    if not records:
        return "no runs yet"
    lines: list[str] = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["space"], r["dataset"]), []).append(r)
    summary: dict[str, Any] = {}
    for (space, dataset), runs in sorted(groups.items()):
        sign = 1  # every shipped space maximises map_at_r
        budgets = sorted({r["budget"] for r in runs})
        # the training seed is the searcher seed, and some seeds train better than others: each
        # search is measured against the best that any search of the same seed found
        by_seed: dict[int, float] = {}
        for r in runs:
            if r["best_value"] is not None:
                by_seed[r["seed"]] = max(by_seed.get(r["seed"], -math.inf), r["best_value"])
        lines.append(f"\n### {space} on {dataset}\n")
        lines.append(
            "Columns: best observed validation MAP@R (mean +- sd over searcher seeds); the same "
            "configuration re-trained with 3 other training seeds (mean over searches of each "
            "search's 3-seed mean, +- sd of those means; in brackets the mean seed-to-seed sd within "
            "a search); trials to reach 95% / 99% of the best value any search of the same seed "
            f"found ({', '.join(f'{v:.4f}' for _, v in sorted(by_seed.items()))} for seeds "
            f"{', '.join(str(k) for k in sorted(by_seed))}; mean over the searches that reached it, "
            "reached/searches); slot utilisation at the run's concurrency.\n"
        )
        lines.append("| budget | searcher | seeds | best observed | re-trained (3 seeds) | trials to 95% | trials to 99% | utilisation |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|")
        for budget in budgets:
            for searcher in SEARCHERS:
                sel = [r for r in runs if r["budget"] == budget and r["searcher"] == searcher]
                if not sel:
                    continue
                obs = _mean_sd([r["best_value"] for r in sel])
                means = [statistics.fmean(r["retrained"]) for r in sel if r["retrained"]]
                within = [statistics.stdev(r["retrained"]) for r in sel if len(r["retrained"]) > 1]
                ret = _mean_sd(means)
                cells = []
                for frac in (0.95, 0.99):
                    hits = [trials_to_reach(best_so_far(r, sign), frac * by_seed[r["seed"]], sign) for r in sel]
                    got = [h for h in hits if h is not None]
                    cells.append(f"{statistics.fmean(got):.1f} ({len(got)}/{len(sel)})" if got else f"- (0/{len(sel)})")
                util = statistics.fmean(r["utilisation"] for r in sel)
                within_text = f" [{statistics.fmean(within):.3f}]" if within else ""
                lines.append(
                    f"| {budget} | {searcher} | {len(sel)} | {obs[0]:.4f} +- {obs[1]:.4f} | "
                    f"{ret[0]:.4f} +- {ret[1]:.4f}{within_text} | {cells[0]} | {cells[1]} | {util:.2f} |"
                )
                summary[f"{space}/{dataset}/{budget}/{searcher}"] = {
                    "observed": obs,
                    "retrained": ret,
                    "seeds": len(sel),
                    "utilisation": util,
                }
        lines.extend(paired_table(runs, budgets))
        top = max(budgets)
        randoms = {r["seed"]: r for r in runs if r["searcher"] == "random" and r["budget"] == top}
        defaults = {r["seed"]: r for r in runs if r["searcher"] == DEFAULT_SEARCHER and r["budget"] == top}
        pairs = [(randoms[s], defaults[s]) for s in sorted(set(randoms) & set(defaults))]
        if pairs:
            needed = [trials_to_reach(best_so_far(d, sign), r["best_value"], sign) for r, d in pairs]
            text = ", ".join("-" if n is None else str(n) for n in needed)
            lines.append(
                f"\n{DEFAULT_SEARCHER} at budget {top}: trials to reach random search's {top}-trial best "
                f"(same seed): {text} (target: <= {top // 3})."
            )
        plot_curves(space, dataset, runs, sign, by_seed)
    text = "\n".join(lines)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    if out_md is not None:
        out_md.write_text(text + "\n")
    return text


def _wtl(differences: list[float]) -> str:
    won = sum(d > 0 for d in differences)
    lost = sum(d < 0 for d in differences)
    return f"{won}/{len(differences) - won - lost}/{lost}"


def paired_table(runs: list[dict[str, Any]], budgets: list[int]) -> list[str]:
    """The default searcher against each other one, paired by seed (same searcher and training seed).

    Seeds differ more from each other (some training seeds train better) than searchers do, so the
    per-seed difference is the fair comparison: mean +- sd of (default - other) over the seeds both
    ran, and how many seeds the default won, on the observed best and on the re-trained mean.
    """
    out = [
        f"\nPaired by seed: {DEFAULT_SEARCHER} minus each searcher (mean +- sd over seeds; seeds won / "
        "tied / lost).\n",
        "| budget | other | seeds | observed: difference | W/T/L | re-trained: difference | W/T/L |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for budget in budgets:
        mine = {r["seed"]: r for r in runs if r["budget"] == budget and r["searcher"] == DEFAULT_SEARCHER}
        for searcher in SEARCHERS:
            if searcher == DEFAULT_SEARCHER:
                continue
            other = {r["seed"]: r for r in runs if r["budget"] == budget and r["searcher"] == searcher}
            seeds = [
                s for s in sorted(set(mine) & set(other))
                if mine[s]["best_value"] is not None and other[s]["best_value"] is not None
            ]
            if not seeds:
                continue
            obs = [mine[s]["best_value"] - other[s]["best_value"] for s in seeds]
            ret = [
                statistics.fmean(mine[s]["retrained"]) - statistics.fmean(other[s]["retrained"])
                for s in seeds
                if mine[s]["retrained"] and other[s]["retrained"]
            ]
            o, r = _mean_sd(obs), _mean_sd(ret) if ret else (math.nan, math.nan)
            out.append(
                f"| {budget} | {searcher} | {len(seeds)} | {o[0]:+.4f} +- {o[1]:.4f} | "
                f"{_wtl(obs)} | {r[0]:+.4f} +- {r[1]:.4f} | {_wtl(ret)} |"
            )
    return out


def plot_curves(
    space: str, dataset: str, runs: list[dict[str, Any]], sign: int, by_seed: dict[int, float]
) -> Path | None:
    """Best-so-far curves at the largest budget: the value (left) and the value as a share of the
    best any search of the same seed found (right: seeds differ in level more than searchers do)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    budget = max(r["budget"] for r in runs)
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6))
    for index, searcher in enumerate(SEARCHERS):
        sel = [r for r in runs if r["budget"] == budget and r["searcher"] == searcher]
        if not sel:
            continue
        curves = np.full((len(sel), budget), np.nan)
        for i, r in enumerate(sel):
            c = best_so_far(r, sign)
            curves[i, : len(c)] = c
            if len(c) < budget and c:  # a search that ended early keeps its best
                curves[i, len(c) :] = c[-1]
        shares = curves / np.array([by_seed[r["seed"]] for r in sel])[:, None]
        x = np.arange(1, budget + 1)
        width = 2.6 if searcher == DEFAULT_SEARCHER else 1.3
        for ax, values in zip(axes, (curves, shares)):
            mean, sd = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
            ax.plot(x, mean, lw=width, color=colours[index], label=f"{searcher} ({len(sel)} seeds)")
            ax.fill_between(x, mean - sd, mean + sd, color=colours[index], alpha=0.10)
    axes[0].set_ylabel("best validation MAP@R so far")
    axes[0].set_title(f"{space} on {dataset}: best so far (mean +- sd over seeds)", fontsize=10)
    axes[1].set_ylabel("share of the best any search of the seed found")
    axes[1].set_title("the same, relative to each seed's best", fontsize=10)
    for level in (0.95, 0.99):
        axes[1].axhline(level, color="grey", lw=0.8, ls="--")
    for ax in axes:
        ax.set_xlabel("trials started")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"searchers_{space}_{dataset}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- slot utilisation with a fake trainable ---------------------------------------------------
def utilisation_table(concurrencies: tuple[int, ...] = (2, 8, 32), budget: int = 256) -> str:
    """Slot utilisation of each searcher on ``contrastive_balance`` with a fake fast trainable: a
    smooth function of the config plus seeded noise, a cost from :func:`trial_cost` times a seeded
    factor in [0.5, 1.5] (trials of unequal length)."""
    import random

    from tuneddml.searchers.space import load_space

    space = load_space("contrastive_balance")
    rows = ["| searcher | " + " | ".join(f"{c} slots" for c in concurrencies) + " |", "|---|" + "---:|" * len(concurrencies)]
    for name in SEARCHERS:
        cells = []
        for c in concurrencies:
            rng = random.Random(0)

            def fake(config: dict[str, Any], rng: random.Random = rng) -> float:
                lam = float(config.get("loss.lambda", 0.5))
                return 0.5 - (lam - 0.4) ** 2 + 0.02 * rng.random()

            def cost(config: dict[str, Any], rng: random.Random = rng) -> float:
                return trial_cost({**space.fixed, **TRIAL_SETTINGS, **config}) * rng.uniform(0.5, 1.5)

            searcher = make_searcher(name, space, seed=0, budget=budget, concurrency=c)
            result = simulate(searcher, fake, budget=budget, concurrency=c, cost=cost)
            cells.append(f"{result['utilisation']:.2f} ({len(result['trials'])} trials)")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", nargs="+", default=["contrastive_balance", "proxy_counts"])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--searchers", nargs="+", default=list(SEARCHERS), choices=list(SEARCHERS))
    parser.add_argument("--budgets", nargs="+", type=int, default=[16, 48])
    parser.add_argument("--seeds", type=int, default=5, help="searcher seeds 0 .. N-1 (training seed = searcher seed)")
    parser.add_argument("--concurrency", type=int, default=2, help="trials in flight (virtual clock)")
    parser.add_argument("--workers", type=int, default=2, help="processes running searches (1 thread each)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--utilisation", action="store_true", help="only the fake-trainable utilisation table")
    args = parser.parse_args(argv)
    if args.utilisation:
        print(utilisation_table())
        return 0
    if not args.report_only:
        tasks = [
            (space, dataset, searcher, budget, seed, args.concurrency)
            for seed in range(args.seeds)
            for space in args.spaces
            for dataset in args.datasets
            for budget in sorted(args.budgets, reverse=True)
            for searcher in args.searchers
        ]
        todo = [t for t in tasks if not run_file(*t[:5]).exists()]
        print(f"{len(tasks)} searches, {len(todo)} to run", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for i, line in enumerate(pool.map(run_one, todo), start=1):
                print(f"[{i}/{len(todo)}] {line}", flush=True)
    print(report(OUT / "summary.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
