"""Training throughput: tuneddml's trainer against a plain PyTorch loop with the
pytorch-metric-learning version of the same loss (contrastive, cosine similarity margins).

Both sides train the same model on the same glyphs batches (same sampler, same augmentation,
same threads); the ratio ours/plain is the figure (goal >= 1.0).

    .venv/bin/python bench/bench_throughput.py [--steps 150] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today

from tuneddml.config import TrialConfig
from tuneddml.data.transforms import augment
from tuneddml.training import Trainer


def ours(config: TrialConfig) -> float:
    trainer = Trainer(config)
    trainer.train_epoch()  # warm-up epoch (allocations, caches)
    start = time.perf_counter()
    trainer.train_epoch()
    return config.steps_per_epoch * config.batch_size / (time.perf_counter() - start)


def plain(config: TrialConfig) -> float:
    from pytorch_metric_learning import distances, losses

    trainer = Trainer(config)  # only for the same data, model and sampler
    model, data, sampler = trainer.model, trainer.data, trainer.sampler
    loss_fn = losses.ContrastiveLoss(
        pos_margin=config.loss_params["pos_margin"],
        neg_margin=config.loss_params["neg_margin"],
        distance=distances.CosineSimilarity(),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    def epoch() -> None:
        model.train()
        batches = sampler.batches(data.train.labels, config.batch_size, rng)
        for _, idx in zip(range(config.steps_per_epoch), batches):
            x = augment(data.train.load(idx), data.augmentation, generator)
            y = torch.from_numpy(data.train.labels[idx])
            loss = loss_fn(F.normalize(model(x), dim=1), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    epoch()
    start = time.perf_counter()
    epoch()
    return config.steps_per_epoch * config.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = TrialConfig.from_flat(
        {
            "dataset": "glyphs",
            "loss": "contrastive",
            "steps_per_epoch": args.steps,
            "threads": args.threads,
            "split": "test",
        }
    )
    torch.set_num_threads(args.threads)
    rows = []
    for r in range(args.repeats):  # interleaved, so drifting machine load hits both sides alike
        a, b = ours(config), plain(config)
        rows.append((a, b))
        print(
            f"repeat {r + 1}: ours {a:.0f} samples/s, plain {b:.0f} samples/s, ratio {a / b:.3f}", flush=True
        )
    ours_med = float(np.median([a for a, _ in rows]))
    plain_med = float(np.median([b for _, b in rows]))
    print(f"median: ours {ours_med:.0f}, plain {plain_med:.0f}, ratio {ours_med / plain_med:.3f}")
    print(
        f"\n| {today()} | {machine()} | {args.steps} steps x {config.batch_size}, {args.threads} threads, "
        f"{args.repeats} repeats | {ours_med:.0f} | {plain_med:.0f} | {ours_med / plain_med:.2f} |"
    )


if __name__ == "__main__":
    main()
