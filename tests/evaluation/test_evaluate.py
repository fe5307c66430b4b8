"""``evaluate`` end to end: pytorch-metric-learning cross-check, gallery mode, chunking, inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_fixtures import full_ranking, tie_heavy

from tuneddml.errors import ConfigError
from tuneddml.evaluation import (
    EvalOptions,
    FaissKMeans,
    FaissKnn,
    TorchKnn,
    average_precision,
    evaluate,
    l2_normalise,
    map_at_r,
    metric_keys,
    ndcg_at_k,
    r_precision,
    recall_at_k,
)

KEYS = {
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "map_at_r",
    "r_precision",
    "ndcg_at_10",
    "ap",
    "nmi",
}


def clustered(
    n: int, n_classes: int, dim: int, seed: int, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    return rng.standard_normal((n_classes, dim))[y] + noise * rng.standard_normal((n, dim)), y


def _pml(query, query_labels, reference=None, reference_labels=None, *, seed: int):
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
    import faiss

    calc = acc.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI"),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=inference.FaissKNN(index_init_fn=faiss.IndexFlatIP),
        kmeans_func=inference.FaissKMeans(niter=20, seed=seed),
    )

    def as_t(a):
        return None if a is None else torch.from_numpy(np.asarray(a))

    return calc.get_accuracy(as_t(query), as_t(query_labels), as_t(reference), as_t(reference_labels))


def _assert_matches_pml(ours: dict[str, float], pml: dict[str, float]) -> None:
    assert ours["recall_at_1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["nmi"] == pytest.approx(pml["NMI"], abs=1e-6)


def _tie_free(q: np.ndarray, g: np.ndarray, k: int) -> bool:
    """No two equal float32 similarities (as faiss computes them) among any query's top k + 3:
    there our tie rule and faiss's arbitrary order, which pytorch-metric-learning keeps, agree."""
    sims, _ = FaissKnn().search(q, g, min(k + 3, len(g)))
    return bool((np.diff(sims, axis=1) < 0).all())


def test_leave_one_out_matches_pytorch_metric_learning():
    for seed in range(20):
        x, y = clustered(400, 30, 16, seed=seed)
        y[:3] = [1000, 1001, 1002]  # three lone classes: left out of retrieval, kept for NMI
        # pml does not normalise, ours does: hand pml exactly the vectors ours will use.
        x = l2_normalise(x)
        xn = l2_normalise(x)
        if _tie_free(xn, xn, int(np.unique(y, return_counts=True)[1].max())):
            break
    else:
        pytest.fail("no tie-free data set among 20 seeds")
    ours = evaluate(x, y, kmeans=FaissKMeans(seed=5))
    # exactly the registered metrics' keys, the documented ones among them (a metric registered
    # later adds its keys here with no edit)
    assert set(ours) == set(metric_keys()) and KEYS <= set(ours)
    assert all(type(v) is float for v in ours.values())  # plain floats: JSON, MLflow, Ray
    _assert_matches_pml(ours, _pml(xn, y, seed=5))


def test_gallery_mode_matches_pytorch_metric_learning():
    for seed in range(20):
        q, q_y = clustered(150, 20, 12, seed=seed)
        g, g_y = clustered(260, 24, 12, seed=seed)  # same class centres; some query classes absent
        q_y[q_y == 3] = 99  # a query class with no gallery item: R = 0
        q, g = l2_normalise(q), l2_normalise(g)
        qn, gn = l2_normalise(q), l2_normalise(g)
        if _tie_free(qn, gn, int(np.unique(g_y, return_counts=True)[1].max())):
            break
    else:
        pytest.fail("no tie-free data set among 20 seeds")
    ours = evaluate(q, q_y, g, g_y, kmeans=FaissKMeans(seed=2))
    _assert_matches_pml(ours, _pml(qn, q_y, gn, g_y, seed=2))


def test_default_kmeans_nmi_is_close_to_faiss_kmeans():
    x, y = clustered(600, 20, 16, seed=8)
    ours = evaluate(x, y, with_ap=False)["nmi"]
    faiss_nmi = evaluate(x, y, with_ap=False, kmeans=FaissKMeans(seed=0))["nmi"]
    assert ours == pytest.approx(faiss_nmi, abs=0.05)  # different random starts, same algorithm


def test_every_metric_equals_the_pure_functions_on_full_rankings():
    # Tie-heavy data, both modes: evaluate (faiss, chunked) against full sorted rankings.
    for loo in (True, False):
        q, q_y = tie_heavy(90, seed=11, n_classes=20)
        g, g_y = (None, None) if loo else tie_heavy(70, seed=12, n_classes=20)
        table = full_ranking(q, q_y, q if loo else g, q_y if loo else g_y, loo)
        r = (table == q_y[:, None]).sum(axis=1)
        ours = evaluate(q, q_y, g, g_y, batch_size=9, with_nmi=False, knn=FaissKnn(chunk_size=13))
        # AP comes from the 32-wide kNN table for some queries and the full pass for the others.
        covered = (table[:, :32] == q_y[:, None]).sum(axis=1) == r
        assert 0 < covered[r > 0].sum() < (r > 0).sum()
        for k in (1, 2, 4, 8):
            assert ours[f"recall_at_{k}"] == pytest.approx(recall_at_k(table, q_y, k, num_relevant=r))
        assert ours["map_at_r"] == pytest.approx(map_at_r(table, q_y, r))
        assert ours["r_precision"] == pytest.approx(r_precision(table, q_y, r))
        assert ours["ndcg_at_10"] == pytest.approx(ndcg_at_k(table, q_y, 10, r))
        assert ours["ap"] == pytest.approx(average_precision(table, q_y, r))


def test_chunking_gives_the_same_answer_as_one_chunk():
    x, y = clustered(300, 25, 8, seed=3)
    one = evaluate(x, y, batch_size=10_000, knn=FaissKnn(chunk_size=10_000))
    many = evaluate(x, y, batch_size=7, knn=FaissKnn(chunk_size=32))
    brute = evaluate(x, y, batch_size=50, knn=TorchKnn(chunk_size=11))
    assert one == many == brute
    without_ap = evaluate(x, y, with_ap=False)  # a narrower kNN table, the same metrics
    assert without_ap == {key: v for key, v in one.items() if key != "ap"}


def test_collapsed_model_scores_as_badly_as_possible():
    x = np.ones((12, 4), dtype=np.float32)
    y = np.repeat([0, 1, 2], 4)
    m = evaluate(x, y, ks=(1, 8, 9), seed=0)
    assert m["recall_at_1"] == m["recall_at_8"] == m["map_at_r"] == m["r_precision"] == 0.0
    assert m["recall_at_9"] == 1.0
    assert m["ap"] == pytest.approx((1 / 9 + 2 / 10 + 3 / 11) / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_10"] == pytest.approx((1 / math.log2(10) + 1 / math.log2(11)) / ideal)


def test_float16_torch_and_numpy_inputs_agree():
    x, y = clustered(200, 15, 8, seed=4)
    x16 = x.astype(np.float16)
    ref = evaluate(x16.astype(np.float32), y)
    assert evaluate(x16, y) == ref
    assert evaluate(torch.from_numpy(x16), torch.from_numpy(y)) == ref
    assert evaluate(torch.from_numpy(x16.astype(np.float32) * 3.0), y.tolist()) == ref  # scale-free


def test_string_labels_and_custom_ks():
    x, y = clustered(120, 6, 5, seed=5)
    names = np.array([f"class-{i}" for i in y])
    a = evaluate(x, y, ks=(1, 3), ndcg_k=5, with_nmi=False, with_ap=False)
    b = evaluate(x, names, ks=(1, 3), ndcg_k=5, with_nmi=False, with_ap=False)
    options = EvalOptions(ks=(1, 3), ndcg_k=5, with_nmi=False, with_ap=False)
    assert a == b and set(a) == set(metric_keys(options)) and not {"ap", "nmi"} & set(a)
    assert {"recall_at_1", "recall_at_3", "map_at_r", "r_precision", "ndcg_at_5"} <= set(a)


def test_a_well_separated_set_scores_one():
    x = np.repeat(np.eye(6, dtype=np.float32), 4, axis=0) + 0.01 * np.random.default_rng(6).standard_normal(
        (24, 6)
    )
    y = np.repeat(np.arange(6), 4)
    m = evaluate(x, y)
    assert all(v == pytest.approx(1.0) for k, v in m.items() if k != "nmi")
    assert 0.0 < m["nmi"] <= 1.0


def test_only_lone_queries_give_nan_retrieval_metrics():
    x, _ = clustered(5, 5, 3, seed=7)
    m = evaluate(x, np.arange(5))
    assert all(math.isnan(v) for k, v in m.items() if k != "nmi")
    assert m["nmi"] == pytest.approx(1.0)  # 5 points, 5 clusters: each its own


def test_faiss_follows_the_thread_budget_and_is_restored():
    import faiss

    seen = []

    class Recording(FaissKnn):
        def search(self, query, gallery, k):
            seen.append((faiss.omp_get_max_threads(), torch.get_num_threads()))
            return super().search(query, gallery, k)

    big = clustered(1500, 100, 32, seed=9)  # 1500^2 x 32 multiply-adds: worth threads
    small = clustered(60, 5, 4, seed=9)
    before = (faiss.omp_get_max_threads(), torch.get_num_threads())
    quick = {"with_nmi": False, "with_ap": False}
    evaluate(*big, knn=Recording(), num_threads=1, **quick)
    evaluate(*big, knn=Recording(), num_threads=2, **quick)
    evaluate(*big, knn=Recording(), **quick)
    evaluate(*small, knn=Recording(), num_threads=2, **quick)
    assert seen == [(1, 1), (2, 2), (before[1], before[1]), (1, 1)]
    assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": np.zeros((0, 3))}, "query"),
        ({"query": np.zeros(3)}, "query"),
        ({"query": np.array([[1.0, np.nan]])}, "query"),
        ({"query": np.ones((2, 2), dtype=np.int64)}, "query"),
        ({"query_labels": np.zeros(5)}, "query_labels"),
        ({"gallery": np.ones((3, 2))}, "gallery"),
        ({"gallery": np.ones((3, 5)), "gallery_labels": np.zeros(3)}, "gallery"),
        ({"gallery": np.ones((3, 2)), "gallery_labels": np.zeros(2)}, "gallery_labels"),
        ({"ks": (1, 0)}, "ks"),
        ({"ks": ()}, "ks"),
        ({"ndcg_k": 0}, "ndcg_k"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_threads": 0}, "num_threads"),
    ],
)
def test_bad_input_raises_config_error_naming_the_field(kwargs, field):
    args = {"query": np.ones((4, 2)), "query_labels": np.array([0, 0, 1, 1])} | kwargs
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        evaluate(**args)
