"""Distance-weighted sampling (Wu et al. 2017): the density, the weights and the draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.sampling import MINERS
from tuneddml.sampling.distance_weighted import DistanceWeightedMiner, log_inverse_density


def _batch(seed: int = 0, classes: int = 4, per_class: int = 3, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(
        torch.randn(classes * per_class, dim, generator=g, dtype=torch.float64), dim=1
    )
    return e, torch.arange(classes).repeat_interleave(per_class)


def test_density_matches_random_points_on_the_sphere():
    """The histogram of distances between uniform random unit vectors follows q(d)."""
    dim, n = 10, 200_000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim))
    y = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    d = np.linalg.norm(x - y, axis=1)
    edges = np.linspace(0.05, 1.95, 39)
    hist, _ = np.histogram(d, bins=edges)
    # q normalised over (0, 2), integrated over each bin on a fine grid
    grid = torch.linspace(1e-4, 2 - 1e-4, 40001, dtype=torch.float64)
    density = torch.exp(-log_inverse_density(grid, dim))
    density = density / torch.trapezoid(density, grid)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(density, grid)]).numpy()
    expected = np.diff(np.interp(edges, grid.numpy(), cdf)) * n
    # counts are Poisson-like: allow 4.5 standard deviations per bin
    assert (np.abs(hist - expected) < 4.5 * np.sqrt(expected) + 1).all()
    # and not the density of another dimension
    other = np.diff(np.interp(edges, grid.numpy(), _cdf(grid, dim + 2))) * n
    assert not (np.abs(hist - other) < 4.5 * np.sqrt(other) + 1).all()


def _cdf(grid: torch.Tensor, dim: int) -> np.ndarray:
    density = torch.exp(-log_inverse_density(grid, dim))
    density = density / torch.trapezoid(density, grid)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(density, grid)]).numpy()


def test_probabilities_match_a_plain_loop():
    e, labels = _batch()
    miner = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    got = miner.probabilities(e, labels)
    rows, y, dim = e.tolist(), labels.tolist(), e.shape[1]
    for a in range(len(y)):
        weights = []
        for j in range(len(y)):
            d = math.sqrt(sum((u - v) ** 2 for u, v in zip(rows[a], rows[j])))
            if y[j] == y[a] or d >= 1.4:
                weights.append(0.0)
                continue
            d = max(d, 0.5)
            weights.append(d ** (2 - dim) * (1 - d * d / 4) ** (-(dim - 3) / 2))
        total = sum(weights)
        if total == 0:  # the fallback: uniform over negatives
            negs = [j for j in range(len(y)) if y[j] != y[a]]
            weights, total = [1.0 if j in negs else 0.0 for j in range(len(y))], len(negs)
        np.testing.assert_allclose(got[a].numpy(), np.array(weights) / total, rtol=1e-9, atol=1e-12)


def test_weights_agree_with_pytorch_metric_learning(monkeypatch):
    import pytorch_metric_learning.miners.distance_weighted_miner as pml_module

    e, labels = _batch(seed=2, dim=16)
    captured = {}

    def capture(labels, ref_labels=None, t_per_anchor=None, weights=None):
        captured["weights"] = weights
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty

    monkeypatch.setattr(pml_module.lmu, "get_random_triplet_indices", capture)
    pml_module.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)(e, labels)
    theirs = captured["weights"]
    ours = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4).probabilities(e, labels)
    rows = torch.isfinite(theirs).all(dim=1) & (theirs.sum(dim=1) > 0)
    assert rows.sum() >= len(labels) - 2
    torch.testing.assert_close(ours[rows], theirs[rows].to(ours.dtype), atol=1e-5, rtol=1e-5)


def test_triplets_are_valid_and_cover_every_positive_pair():
    e, labels = _batch(seed=1)
    torch.manual_seed(0)
    a, p, n = DistanceWeightedMiner()(e, labels)
    probs = DistanceWeightedMiner().probabilities(e, labels)
    assert len(a) == 4 * 3 * 2  # P K (K-1)
    assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()
    assert (probs[a, n] > 0).all()
    assert len(set(zip(a.tolist(), p.tolist()))) == len(a)


def test_draws_follow_the_probabilities():
    e, labels = _batch(seed=4, per_class=8)
    miner = DistanceWeightedMiner()
    probs = miner.probabilities(e, labels)[0]
    torch.manual_seed(1)
    counts = torch.zeros(len(labels), dtype=torch.float64)
    draws = 0
    for _ in range(400):
        a, _, n = miner(e, labels)
        picked = n[a == 0]
        counts += torch.bincount(picked, minlength=len(labels))
        draws += len(picked)
    assert draws == 400 * 7
    np.testing.assert_allclose((counts / draws).numpy(), probs.numpy(), atol=0.03)


def test_far_negatives_fall_back_to_uniform():
    e = torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64
    )
    labels = torch.tensor([0, 0, 1, 1])
    probs = DistanceWeightedMiner().probabilities(e, labels)
    np.testing.assert_allclose(probs[0].numpy(), [0, 0, 0.5, 0.5])


def test_seeded_draws_reproduce():
    e, labels = _batch(seed=5)
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        results.append(torch.stack(DistanceWeightedMiner()(e, labels)))
    assert torch.equal(results[0], results[1])


def test_registered_with_checked_parameters():
    assert MINERS.get("distance_weighted").factory.output == "triplets"
    with pytest.raises(ConfigError):
        MINERS.build("distance_weighted", {"cutoff": 2.5})
    with pytest.raises(ConfigError) as err:
        MINERS.build("distance_weighted", {"cutoff": 1.0, "nonzero_loss_cutoff": 0.8}, field="miner")
    assert err.value.field == "miner.cutoff"
