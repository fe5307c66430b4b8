"""NMI by hand and against scikit-learn; k-means: ours against faiss from the same start."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneddml.errors import ConfigError
from tuneddml.evaluation import FaissKMeans, LloydKMeans, l2_normalise, nmi


def test_perfect_clustering_is_one_whatever_the_cluster_ids():
    y = np.repeat([3, 1, 4, 5], [2, 3, 1, 4])
    assert nmi(y, y) == pytest.approx(1.0)
    assert nmi(y, np.array([9, 7, 2, 8])[np.unique(y, return_inverse=True)[1]]) == pytest.approx(1.0)


def test_nmi_by_hand():
    # classes (0,0,1,1), clusters (0,0,0,1): cells n_00 = 2, n_10 = 1, n_11 = 1; a = (2, 2),
    # b = (3, 1); MI = 2/4 log(4*2/(2*3)) + 1/4 log(4*1/(2*3)) + 1/4 log(4*1/(2*1)),
    # H(U) = log 2, H(V) = -(3/4 log 3/4 + 1/4 log 1/4).
    u, v = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_u = math.log(2)
    h_v = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nmi(u, v) == pytest.approx(mi / ((h_u + h_v) / 2))


def test_limit_cases():
    assert nmi(np.zeros(5), np.zeros(5)) == 1.0  # one class, one cluster
    assert nmi(np.array([0, 0, 1, 1]), np.zeros(4)) == 0.0  # everything in one cluster
    assert nmi(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == 0.0  # independent
    with pytest.raises(ConfigError, match="labels_pred"):
        nmi(np.zeros(3), np.zeros(4))


def test_matches_sklearn_on_random_labellings():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for n, a, b in [(50, 5, 7), (300, 40, 30), (200, 1, 9), (30, 30, 2), (1000, 200, 200)]:
        u, v = rng.integers(0, a, n), rng.integers(0, b, n)
        assert nmi(u, v) == pytest.approx(sk.normalized_mutual_info_score(u, v), abs=1e-12)


def _blobs(n: int, k: int, dim: int, seed: int, noise: float = 0.8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return l2_normalise(
        rng.standard_normal((k, dim))[rng.integers(0, k, n)] + noise * rng.standard_normal((n, dim))
    )


@pytest.mark.parametrize(("n", "k", "dim"), [(400, 8, 6), (2500, 50, 16)])
def test_lloyd_equals_faiss_kmeans_from_the_same_start(n, k, dim):
    import faiss

    x = _blobs(n, k, dim, seed=n)
    init = x[np.random.default_rng(1).choice(n, k, replace=False)]
    ref = faiss.Kmeans(dim, k, niter=20, seed=0, min_points_per_centroid=1)
    ref.train(x, init_centroids=init)
    assert sum(s["nsplit"] for s in ref.iteration_stats) == 0  # no empty cluster: same algorithm
    ours = LloydKMeans(niter=20)
    centroids, assignment = ours.fit(x, init)
    np.testing.assert_array_equal(assignment, ref.index.search(x, 1)[1][:, 0])
    np.testing.assert_allclose(centroids, ref.centroids, atol=1e-6)
    assert ours.moved_per_iteration[0] > ours.moved_per_iteration[-1]


def test_lloyd_result_is_a_fixed_point_and_reseeds_empty_clusters():
    # Many exact duplicates: some initial centroids coincide and one of each pair goes empty.
    rng = np.random.default_rng(2)
    base = _blobs(12, 4, 5, seed=3, noise=1.0)
    x = base[rng.integers(0, 12, 300)]
    km = LloydKMeans(niter=50, seed=0)
    assignment = km(x, 10)
    assert km.iterations_run < 50  # stopped at a fixed point
    centroids = np.stack([x[assignment == c].mean(axis=0) for c in np.unique(assignment)])
    dist = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    # Every point sits at a nearest centroid (ties between duplicate centroids allowed).
    own = dist[np.arange(len(x)), np.searchsorted(np.unique(assignment), assignment)]
    assert np.all(own <= dist.min(axis=1) + 1e-6)
    np.testing.assert_array_equal(assignment, LloydKMeans(niter=50, seed=0)(x, 10))


def test_lloyd_trains_on_a_sample_when_points_per_centroid_exceed_the_cap():
    x = _blobs(600, 3, 4, seed=5)
    assignment = LloydKMeans(seed=1, max_points_per_centroid=50)(x, 3)
    assert assignment.shape == (600,) and set(assignment.tolist()) == {0, 1, 2}


def test_kmeans_backends_validate_their_arguments():
    x = _blobs(10, 2, 3, seed=6)
    for km in (LloydKMeans(), FaissKMeans()):
        with pytest.raises(ConfigError, match="num_clusters"):
            km(x, 11)
    with pytest.raises(ConfigError, match="niter"):
        LloydKMeans(niter=0)


def test_faiss_kmeans_is_seeded():
    x = _blobs(500, 10, 8, seed=7)
    a, b = FaissKMeans(seed=3)(x, 10), FaissKMeans(seed=3)(x, 10)
    np.testing.assert_array_equal(a, b)
