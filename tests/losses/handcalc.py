"""Plain-Python helpers for the hand computations in the loss tests (no vectorised code)."""

from __future__ import annotations

import math

import torch


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def cos_table(e: torch.Tensor, others: torch.Tensor | None = None) -> list[list[float]]:
    """Cosine similarities by a Python loop."""
    rows = e.tolist()
    cols = rows if others is None else others.tolist()
    return [[dot(u, v) / math.sqrt(dot(u, u) * dot(v, v)) for v in cols] for u in rows]


def small_batch(seed: int = 7, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Six float64 unit vectors; classes 0 and 1 have positives, class 2 is a singleton."""
    g = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(6, dim, generator=g, dtype=torch.float64), dim=1)
    return e, torch.tensor([0, 0, 1, 1, 1, 2])


def pk_batch(
    seed: int = 0, classes: int = 4, per_class: int = 4, dim: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(classes * per_class, dim, generator=g), dim=1)
    return e, torch.arange(classes).repeat_interleave(per_class)


def pairs(labels: torch.Tensor) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Ordered positive and negative pairs, listed by a loop."""
    y = labels.tolist()
    pos = [(i, j) for i in range(len(y)) for j in range(len(y)) if i != j and y[i] == y[j]]
    neg = [(i, j) for i in range(len(y)) for j in range(len(y)) if y[i] != y[j]]
    return pos, neg


def triplets(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    y = labels.tolist()
    r = range(len(y))
    return [(a, p, n) for a in r for p in r for n in r if a != p and y[a] == y[p] and y[a] != y[n]]
