"""Exact full-ranking AP: against scikit-learn's AUPRC and against full ranked tables with ties."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import full_ranking, tie_heavy

from tuneddml.evaluation import average_precision, exact_average_precision, l2_normalise


def _clustered(n: int, n_classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.standard_normal((n_classes, dim))[y] + 1.2 * rng.standard_normal((n, dim))
    return l2_normalise(x), y


@pytest.mark.parametrize("batch_size", [5, 16, 1000])
def test_matches_sklearn_average_precision_leave_one_out(batch_size):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    x, y = _clustered(150, 12, 8, seed=0)
    ours = exact_average_precision(x, y, None, None, batch_size=batch_size)
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    for i in range(len(x)):
        others = np.arange(len(x)) != i
        relevant = y[others] == y[i]
        if relevant.any():
            ref = sklearn_metrics.average_precision_score(relevant, sims[i, others])
            assert ours[i] == pytest.approx(ref, abs=1e-9)
        else:
            assert np.isnan(ours[i])


def test_matches_sklearn_average_precision_with_gallery():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    q, q_y = _clustered(40, 6, 8, seed=1)
    g, g_y = _clustered(90, 8, 8, seed=2)  # classes 6 and 7 only in the gallery
    ours = exact_average_precision(q, q_y, g, g_y, batch_size=9)
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    for i in range(len(q)):
        relevant = g_y == q_y[i]
        expected = sklearn_metrics.average_precision_score(relevant, sims[i]) if relevant.any() else np.nan
        np.testing.assert_allclose(ours[i], expected, atol=1e-9)


@pytest.mark.parametrize("loo", [True, False], ids=["leave-one-out", "gallery"])
def test_ties_follow_the_pessimistic_full_ranking(loo):
    q, q_y = tie_heavy(70, seed=4)
    g, g_y = (None, None) if loo else tie_heavy(50, seed=5)
    table = full_ranking(q, q_y, q if loo else g, q_y if loo else g_y, loo)
    r = (table == q_y[:, None]).sum(axis=1)
    ours = exact_average_precision(q, q_y, g, g_y, batch_size=11)
    assert np.isnan(ours[r == 0]).all()
    assert np.nanmean(ours) == pytest.approx(average_precision(table, q_y, r), abs=1e-12)
    for i in np.flatnonzero(r > 0)[:20]:
        assert ours[i] == pytest.approx(average_precision(table[i : i + 1], q_y[i : i + 1], r[i : i + 1]))


def test_collapsed_embeddings_by_hand():
    # 3 classes x 4 identical embeddings: each query ties with all 11 others; the 8 irrelevant
    # ones are ranked first, so its p-th relevant item is at rank 8 + p.
    x = np.ones((12, 4), dtype=np.float32) / 2
    y = np.repeat([0, 1, 2], 4)
    ours = exact_average_precision(x, y, None, None, batch_size=5)
    np.testing.assert_allclose(ours, (1 / 9 + 2 / 10 + 3 / 11) / 3)


def test_a_perfect_ranking_has_ap_one():
    x = np.repeat(np.eye(5, dtype=np.float32), 3, axis=0)
    y = np.repeat(np.arange(5), 3)
    np.testing.assert_allclose(exact_average_precision(x, y, None, None, batch_size=4), 1.0)
