"""A small synthetic metric-learning problem shared by the quick "does it learn" tests: class means
in a few signal dimensions, large noise in the others, and a plain Recall@1."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIGNAL, NUISANCE, DIM = 6, 26, 16


def make_data(rng: np.random.Generator, classes: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means live in the first SIGNAL input dimensions; the others carry large noise."""
    means = rng.normal(size=(classes, SIGNAL)) * 1.5
    labels = np.repeat(np.arange(classes), per_class)
    x = np.concatenate(
        [
            means[labels] + 0.3 * rng.normal(size=(len(labels), SIGNAL)),
            2.0 * rng.normal(size=(len(labels), NUISANCE)),
        ],
        axis=1,
    )
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)


def recall_at_1(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out Recall@1 by cosine similarity."""
    e = F.normalize(emb, dim=1)
    s = e @ e.T
    s.fill_diagonal_(-2.0)
    return float((labels[s.argmax(dim=1)] == labels).float().mean())
