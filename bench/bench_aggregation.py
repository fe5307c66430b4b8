"""Aggregation of the contrastive margin loss and batch size (issue 7, item 2; Sors et al. 2021).

Sors et al. (arXiv 2112.11743) say that how a contrastive loss aggregates its loss elements over
the batch decides whether the best balance ``lambda`` stays put as the batch size grows. This
benchmark measures, for each aggregation of ``contrastive`` (``nonzero``, ``all``,
``anchor_sum``; ``total = 2 lambda pos + 2 (1 - lambda) neg``):

(a) the gradient-norm ratio ``||d neg / d e|| / ||d pos / d e||`` at the embeddings ``e`` of real
    glyphs batches (m-per-class, K = 4, margins 0.8 / 0.3) of 32 ... 256 samples, from a
    ``small_cnn`` trained for one epoch; every batch size sees the same number of samples (the
    ratio is averaged over ``--ratio-samples / batch`` batches). ``lambda = r / (1 + r)`` is the
    balance at which the two terms' gradients have equal norms;
(b) validation MAP@R (``dataset=glyphs split=val``) of real trials for every aggregation x batch
    size x ``lambda`` x seed, and the best ``lambda`` per (aggregation, batch size).

Trials see a fixed number of *samples* (``steps = --samples / batch``, one epoch, evaluated once
at the end), so a larger batch takes fewer, larger steps on the same data budget -- the fair
comparison between batch sizes (fixed steps would give large batches several times more data).
Every trial runs in this process with one thread. Each result is appended to a JSON-lines cache
(``--cache``), keyed by its settings, so a rerun skips what is done. Where a best ``lambda`` lies
at the edge of its grid, up to ``--extend`` further points are added beyond it (a step of the
grid's outermost spacing in log-odds).

    .venv/bin/python bench/bench_aggregation.py [--samples 12288] [--seeds 0 1] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today

from tuneddml.config import TrialConfig
from tuneddml.losses.contrastive import AGGREGATIONS, ContrastiveLoss
from tuneddml.training import Trainer, run_trial

HERE = Path(__file__).resolve().parent
BATCH_SIZES = (32, 64, 128, 256)
K = 4
#: about even steps in log-odds; anchor_sum's reaches towards 1, where its equal-gradient lambda
#: lies on glyphs (0.98-0.998, see (a)); a pilot (seed 0, 8192 samples) put the others' optima inside
GRID = {
    "nonzero": (0.03, 0.1, 0.25, 0.5, 0.75, 0.9, 0.97),
    "all": (0.03, 0.1, 0.25, 0.5, 0.75, 0.9, 0.97),
    "anchor_sum": (0.5, 0.75, 0.9, 0.97, 0.99, 0.997, 0.999),
}


def base_flat(args: argparse.Namespace) -> dict:
    return {
        "dataset": "glyphs",
        "split": "val",
        "loss": "contrastive",
        "loss.pos_margin": 0.8,
        "loss.neg_margin": 0.3,
        "sampler.samples_per_class": K,
        "backbone.width": args.width,
        "epochs": 1,
        "threads": 1,
        "eval_ap": False,
        "eval_nmi": False,
    }


# -- (a) gradient-norm ratio -------------------------------------------------------------------
def gradient_ratios(args: argparse.Namespace) -> dict[tuple[str, int], list[float]]:
    """``(aggregation, batch) -> [ratio of each embedding model]``: per model, the mean over its
    batches of ``||d neg / d e||`` divided by the mean of ``||d pos / d e||`` (a batch whose
    positives all satisfy their margin has ``d pos = 0``, so a mean of ratios could be infinite)."""
    from tuneddml.data.transforms import augment

    out: dict[tuple[str, int], list[float]] = {}
    for seed in args.seeds:
        flat = {**base_flat(args), "loss.aggregation": "nonzero", "loss.lambda": 0.5, "batch_size": 64}
        trainer = Trainer(TrialConfig.from_flat({**flat, "seed": seed}))
        trainer.train_epoch()  # one full pass over the training items
        train = trainer.data.train
        generator = torch.Generator().manual_seed(1000 + seed)
        trainer.model.train()  # the embeddings as the loss sees them in training: augmented, BN in train mode
        for n in BATCH_SIZES:
            rng = np.random.default_rng(1000 + seed)
            batches = []
            for batch in trainer.sampler.batches(train.labels, n, rng):
                batches.append(batch)
                if len(batches) * n >= args.ratio_samples:
                    break
            embeddings = []
            with torch.no_grad():
                for b in batches:
                    x = augment(train.load(b), trainer.data.augmentation, generator)
                    embeddings.append(torch.nn.functional.normalize(trainer.model(x), dim=1))
            for aggregation in AGGREGATIONS:
                loss = ContrastiveLoss(pos_margin=0.8, neg_margin=0.3, aggregation=aggregation)
                pos_norms, neg_norms = [], []
                for b, e in zip(batches, embeddings, strict=True):
                    e = e.clone().requires_grad_(True)
                    terms = loss(e, torch.from_numpy(train.labels[b]))
                    (d_pos,) = torch.autograd.grad(terms["pos"], e, retain_graph=True)
                    (d_neg,) = torch.autograd.grad(terms["neg"], e)
                    pos_norms.append(float(d_pos.norm()))
                    neg_norms.append(float(d_neg.norm()))
                out.setdefault((aggregation, n), []).append(float(np.mean(neg_norms) / np.mean(pos_norms)))
        print(f"gradient ratios from the model of seed {seed} done", flush=True)
    return out


def print_ratio_table(ratios: dict[tuple[str, int], list[float]]) -> None:
    head = " | ".join(f"batch {n}" for n in BATCH_SIZES)
    print(f"\n| aggregation | {head} | 32 -> 256 | lambda at equal gradient norms, 32 -> 256 |")
    print("|---|" + "---:|" * (len(BATCH_SIZES) + 2))
    for a in AGGREGATIONS:
        means = [float(np.mean(ratios[a, n])) for n in BATCH_SIZES]
        cells = " | ".join(_pm(ratios[a, n], 3) for n in BATCH_SIZES)
        lam = [m / (1 + m) for m in (means[0], means[-1])]
        print(f"| {a} | {cells} | x{means[-1] / means[0]:.2f} | {lam[0]:.3f} -> {lam[1]:.3f} |")


# -- (b) trials ---------------------------------------------------------------------------------
def trial_key(aggregation: str, batch: int, lam: float, seed: int, args: argparse.Namespace) -> str:
    return json.dumps(
        {
            "aggregation": aggregation,
            "batch": batch,
            "lambda": lam,
            "seed": seed,
            "samples": args.samples,
            "width": args.width,
        },
        sort_keys=True,
    )


def load_cache(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    return done


def run_one(aggregation: str, batch: int, lam: float, seed: int, args: argparse.Namespace) -> dict:
    flat = {
        **base_flat(args),
        "loss.aggregation": aggregation,
        "loss.lambda": lam,
        "batch_size": batch,
        "steps_per_epoch": args.samples // batch,
        "seed": seed,
    }
    t0 = time.perf_counter()
    result = run_trial(TrialConfig.from_flat(flat))
    report = result.history[-1]
    return {
        "key": trial_key(aggregation, batch, lam, seed, args),
        "map_at_r": result.metrics["map_at_r"],
        "recall_at_1": result.metrics["recall_at_1"],
        "terms": report.terms,
        "train_s": report.train_seconds,
        "seconds": time.perf_counter() - t0,
    }


def extend_grid(grid: list[float], best: float) -> float | None:
    """One more point beyond the edge ``best`` of ``grid`` (log-odds step of the outer spacing)."""
    logit = [math.log(x / (1 - x)) for x in sorted(grid)]
    if best == min(grid):
        new = logit[0] - (logit[1] - logit[0])
    elif best == max(grid):
        new = logit[-1] + (logit[-1] - logit[-2])
    else:
        return None
    return round(1 / (1 + math.exp(-new)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=12288, help="training samples per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--width", type=int, default=8, help="small_cnn width")
    parser.add_argument("--aggregations", nargs="+", default=list(AGGREGATIONS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--lambdas", type=float, nargs="+", help="one grid for every aggregation")
    parser.add_argument("--extend", type=int, default=2, help="points added beyond a best lambda at an edge")
    parser.add_argument("--ratio-samples", type=int, default=4096, help="samples per batch size in (a)")
    parser.add_argument("--skip-ratios", action="store_true")
    parser.add_argument("--skip-trials", action="store_true")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache" / "aggregation_trials.jsonl")
    parser.add_argument("--plot", type=Path, default=HERE / "figures" / "aggregation_balance.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"start {today()}, {machine()}", flush=True)
    t_start = time.perf_counter()

    if not args.skip_ratios:
        ratios = gradient_ratios(args)
        print_ratio_table(ratios)
    if args.skip_trials:
        return

    args.cache.parent.mkdir(parents=True, exist_ok=True)
    done = load_cache(args.cache)
    grids = {a: sorted(args.lambdas or GRID[a]) for a in args.aggregations}
    per_batch = {(a, n): list(grids[a]) for a in args.aggregations for n in args.batch_sizes}

    def ensure(a: str, n: int, lam: float) -> None:
        for seed in args.seeds:
            key = trial_key(a, n, lam, seed, args)
            if key in done:
                continue
            row = run_one(a, n, lam, seed, args)
            done[key] = row
            with args.cache.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{a:10s} batch {n:3d} lambda {lam:<6g} seed {seed}: MAP@R {row['map_at_r']:.4f} "
                f"({row['seconds']:.1f} s, {time.perf_counter() - t_start:.0f} s so far)",
                flush=True,
            )

    for (a, n), grid in per_batch.items():
        for lam in grid:
            ensure(a, n, lam)
        for _ in range(args.extend):
            best = max(grid, key=lambda lam, a=a, n=n: mean_map(done, a, n, lam, args)[0])
            new = extend_grid(grid, best)
            if new is None or not 0 < new < 1:
                break
            grid.append(new)
            grid.sort()
            ensure(a, n, new)

    for a in args.aggregations:  # the smallest batch's best lambda, measured at every batch size
        small = min(args.batch_sizes)
        ref = max(per_batch[a, small], key=lambda lam, a=a: mean_map(done, a, small, lam, args)[0])
        for n in args.batch_sizes:
            if ref not in per_batch[a, n]:
                per_batch[a, n] = sorted([*per_batch[a, n], ref])
                ensure(a, n, ref)

    summarise(done, per_batch, args)
    plot(done, per_batch, args)
    print(f"\nend {today()}, {machine()}; {time.perf_counter() - t_start:.0f} s in all")


# -- summary ------------------------------------------------------------------------------------
def seed_values(done: dict, a: str, n: int, lam: float, args: argparse.Namespace) -> list[float]:
    return [done[trial_key(a, n, lam, s, args)]["map_at_r"] for s in args.seeds]


def mean_map(done: dict, a: str, n: int, lam: float, args: argparse.Namespace) -> tuple[float, float]:
    """Mean MAP@R over the seeds and its standard error (half the range for 2 seeds)."""
    v = seed_values(done, a, n, lam, args)
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(np.mean(v)), se


def _pm(values: list[float], digits: int) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    half = (max(values) - min(values)) / 2
    return f"{np.mean(values):.{digits}f} +- {half:.{digits}f}"


def summarise(done: dict, per_batch: dict, args: argparse.Namespace) -> None:
    print(
        "\nBest lambda per (aggregation, batch size): MAP@R mean +- half-range over seeds "
        f"{', '.join(map(str, args.seeds))}; per-seed best lambda in brackets; 'regret': mean MAP@R "
        "lost at this batch size by keeping the best lambda of the smallest batch (+- its standard "
        "error); moved = regret > 2 standard errors."
    )
    print(
        "\n| aggregation | batch | grid | best lambda [per seed] | MAP@R at best | best lambda of batch "
        f"{min(args.batch_sizes)} here | regret | moved |"
    )
    print("|---|---:|---|---|---:|---:|---:|---|")
    for a in args.aggregations:
        ref = None
        for n in args.batch_sizes:
            grid = per_batch[a, n]
            best = max(grid, key=lambda lam, a=a, n=n: mean_map(done, a, n, lam, args)[0])
            seed_best = [
                max(grid, key=lambda lam, s=s, a=a, n=n: done[trial_key(a, n, lam, s, args)]["map_at_r"])
                for s in args.seeds
            ]
            if ref is None:
                ref = best
            m_best, se_best = mean_map(done, a, n, best, args)
            at_ref, se_ref = mean_map(done, a, n, ref, args) if ref in grid else (float("nan"),) * 2
            regret = m_best - at_ref
            se = math.sqrt(se_best**2 + se_ref**2) if best != ref else 0.0
            moved = "yes" if regret > 2 * se and best != ref else "no"
            edge = " (edge)" if best in (min(grid), max(grid)) else ""
            print(
                f"| {a} | {n} | {min(grid):g}-{max(grid):g} ({len(grid)}) | {best:g}{edge} "
                f"[{', '.join(f'{x:g}' for x in seed_best)}] | "
                f"{_pm(seed_values(done, a, n, best, args), 4)} | {at_ref:.4f} | "
                f"{regret:.4f} +- {se:.4f} | {moved} |"
            )
    seconds = [
        done[trial_key(a, n, lam, s, args)]["seconds"]
        for (a, n), g in per_batch.items()
        for lam in g
        for s in args.seeds
    ]
    print(
        f"\n{len(seconds)} trials, {np.mean(seconds):.1f} s each on average, {sum(seconds):.0f} s of trials"
    )


def plot(done: dict, per_batch: dict, args: argparse.Namespace) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggs = args.aggregations
    fig, axes = plt.subplots(1, len(aggs), figsize=(5 * len(aggs), 4), sharey=True, squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(args.batch_sizes)))
    for ax, a in zip(axes[0], aggs, strict=True):
        for colour, n in zip(colours, args.batch_sizes, strict=True):
            grid = per_batch[a, n]
            stats = [mean_map(done, a, n, lam, args) for lam in grid]
            means = [m for m, _ in stats]
            spread = [(max(v) - min(v)) / 2 for v in (seed_values(done, a, n, lam, args) for lam in grid)]
            ax.errorbar(
                grid, means, yerr=spread, color=colour, marker="o", ms=3, capsize=2, label=f"batch {n}"
            )
            i = int(np.argmax(means))
            ax.plot(grid[i], means[i], marker="*", ms=16, color=colour, markeredgecolor="black", zorder=5)
        ax.set_xscale("logit")
        ticks = sorted({lam for n in args.batch_sizes for lam in per_batch[a, n]})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], rotation=60, fontsize=8)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"aggregation = {a}")
        ax.set_xlabel("lambda (weight of pos; logit scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"validation MAP@R (mean +- half-range, {len(args.seeds)} seeds)")
    axes[0][0].legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"contrastive loss on glyphs val: {args.samples} training samples per trial, K = {K}; "
        "star = best lambda"
    )
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
