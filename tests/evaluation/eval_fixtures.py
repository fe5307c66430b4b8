"""Shared test data for the evaluation tests: tie-heavy embeddings and a full-sort reference."""

from __future__ import annotations

import itertools

import numpy as np


def tie_heavy(n: int, seed: int, n_classes: int = 4, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors with entries +-1/2 in 4 of ``dim`` dimensions: 16 distinct points, so most
    similarities tie, and every dot product is a multiple of 1/4, exact in any summation order."""
    rng = np.random.default_rng(seed)
    patterns = np.array(list(itertools.product([-0.5, 0.5], repeat=4)), dtype=np.float32)
    x = np.zeros((n, dim), dtype=np.float32)
    x[:, :4] = patterns[rng.integers(0, len(patterns), n)]
    return x, rng.integers(0, n_classes, n)


def full_ranking(q, q_y, g, g_y, loo: bool) -> np.ndarray:
    """Labels of the whole gallery per query, by decreasing similarity, irrelevant first on ties."""
    rows = []
    for i in range(len(q)):
        keep = np.arange(len(g)) != i if loo else np.ones(len(g), dtype=bool)
        sims = g[keep].astype(np.float64) @ q[i].astype(np.float64)
        labels = g_y[keep]
        order = np.lexsort((labels == q_y[i], -sims))
        rows.append(labels[order])
    return np.array(rows)
