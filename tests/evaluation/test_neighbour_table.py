"""Leave-one-out and pessimistic ties: the neighbour table against a full-sort reference."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import full_ranking, tie_heavy

from tuneddml.evaluation import FaissKnn, TorchKnn, ranked_neighbour_labels
from tuneddml.evaluation.neighbours import ordered_int_key


@pytest.mark.parametrize(
    "knn", [FaissKnn(), TorchKnn(), FaissKnn(chunk_size=3)], ids=["faiss", "torch", "chunked"]
)
@pytest.mark.parametrize("loo", [True, False], ids=["leave-one-out", "gallery"])
def test_table_equals_full_sort_reference_under_ties(knn, loo):
    q, q_y = tie_heavy(60, seed=1)
    g, g_y = (None, None) if loo else tie_heavy(45, seed=2)
    ref = full_ranking(q, q_y, q if loo else g, q_y if loo else g_y, loo)
    for k in (1, 5, 12):
        table = ranked_neighbour_labels(q, q_y, g, g_y, k, knn=knn, batch_size=7)
        # Relevance pattern, not labels: irrelevant items of equal similarity may come in any order.
        np.testing.assert_array_equal(table == q_y[:, None], ref[:, :k] == q_y[:, None])


def test_collapsed_embeddings_rank_every_other_class_first():
    x = np.ones((12, 3), dtype=np.float32) / np.sqrt(np.float32(3))
    y = np.repeat([0, 1, 2], 4)
    table = ranked_neighbour_labels(x, y, None, None, 11, knn=FaissKnn(), batch_size=4)
    rel = table == y[:, None]
    assert not rel[:, :8].any() and rel[:, 8:].all()


def test_leave_one_out_never_returns_the_query_itself():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(30)  # every item its own class: the query itself would be the only hit
    table = ranked_neighbour_labels(x, ids, None, None, 29, knn=FaissKnn(), batch_size=8)
    assert table.shape == (30, 29)
    assert not (table == ids[:, None]).any()
    assert all(sorted(row) == sorted(set(range(30)) - {i}) for i, row in enumerate(table.tolist()))


def test_k_is_capped_by_the_available_gallery():
    x, y = tie_heavy(5, seed=3)
    assert ranked_neighbour_labels(x, y, None, None, 10, knn=FaissKnn(), batch_size=2).shape == (5, 4)
    assert ranked_neighbour_labels(x[:1], y[:1], None, None, 3, knn=FaissKnn(), batch_size=2).shape == (1, 0)


def test_ordered_int_key_preserves_order():
    import torch

    values = torch.tensor([-np.inf, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, np.inf], dtype=torch.float32)
    keys = ordered_int_key(values)
    assert torch.all(keys[1:] >= keys[:-1])
    assert keys[3] == keys[4]  # -0.0 == +0.0
    assert torch.all(keys[[0, 1, 2, 4, 5, 6, 7]] < keys[[1, 2, 4, 5, 6, 7, 8]])
