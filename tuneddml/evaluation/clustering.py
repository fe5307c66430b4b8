"""Clustering quality: k-means on the embeddings, then NMI against the class labels.

NMI (normalised mutual information; Strehl & Ghosh 2002, used for DML since Song et al. 2016) of
the class labels ``U`` and the cluster ids ``V`` of ``n`` items, from their contingency table
``n_ij`` (items of class ``i`` in cluster ``j``) with marginals ``a_i``, ``b_j``:

    ``MI = sum_ij (n_ij / n) log(n n_ij / (a_i b_j))``,
    ``H(U) = -sum_i (a_i / n) log(a_i / n)``, ``H(V)`` likewise,
    ``NMI = MI / ((H(U) + H(V)) / 2)`` (the arithmetic normalisation, scikit-learn's default).

Limit cases as in scikit-learn: one class and one cluster (or no items) is a perfect match, 1;
``MI = 0`` otherwise gives 0. Only the non-zero cells of the table are formed, so 11,000 classes
by 11,000 clusters cost memory in the number of items, not classes x clusters.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tuneddml.errors import ConfigError
from tuneddml.evaluation.knn import faiss_threads, worth_threads


class KMeans(Protocol):
    """Clusters the rows of ``x`` into ``num_clusters`` groups; returns one cluster id per row."""

    def __call__(self, x: np.ndarray, num_clusters: int) -> np.ndarray: ...


class FaissKMeans:
    """Lloyd's k-means with faiss (``faiss.Kmeans``), seeded: ``niter`` iterations from
    ``num_clusters`` distinct points drawn at random, L2 distance, then each row assigned to its
    nearest centroid. The defaults match pytorch-metric-learning's ``AccuracyCalculator``
    (``niter=20``, faiss's ``max_points_per_centroid=256``, beyond which faiss trains on a sample).
    ``min_points_per_centroid=1`` only silences faiss's warning for few points per centroid
    (SOP has about 5 per class), it does not change the algorithm.
    """

    def __init__(self, *, niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256) -> None:
        if isinstance(niter, bool) or not isinstance(niter, int) or niter < 1:
            raise ConfigError("niter", niter, "an integer >= 1")
        self.niter = niter
        self.seed = seed
        self.max_points_per_centroid = max_points_per_centroid

    def __call__(self, x: np.ndarray, num_clusters: int) -> np.ndarray:
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        if not 1 <= num_clusters <= len(x):
            raise ConfigError("num_clusters", num_clusters, f"an integer in [1, {len(x)}]")
        kmeans = faiss.Kmeans(
            x.shape[1],
            int(num_clusters),
            niter=self.niter,
            seed=int(self.seed),
            max_points_per_centroid=self.max_points_per_centroid,
            min_points_per_centroid=1,
            verbose=False,
        )
        with faiss_threads(None if worth_threads(x.size * num_clusters * self.niter) else 1):
            kmeans.train(x)
            _, assignment = kmeans.index.search(x, 1)
        return assignment[:, 0].astype(np.int64)


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Normalised mutual information with arithmetic normalisation (formula in the module doc)."""
    u = np.asarray(labels_true)
    v = np.asarray(labels_pred)
    if u.ndim != 1 or u.shape != v.shape:
        raise ConfigError("labels_pred", f"shape {v.shape}", f"the shape of labels_true, {u.shape}")
    n = len(u)
    _, u_codes = np.unique(u, return_inverse=True)
    _, v_codes = np.unique(v, return_inverse=True)
    a = np.bincount(u_codes)
    b = np.bincount(v_codes)
    if n == 0 or (len(a) == 1 and len(b) == 1):
        return 1.0
    # Non-zero cells of the contingency table: one code per (class, cluster) pair that occurs.
    cells, n_ij = np.unique(u_codes.astype(np.int64) * len(b) + v_codes, return_counts=True)
    i, j = np.divmod(cells, len(b))
    n_ij = n_ij.astype(np.float64)
    mi = float((n_ij / n * (np.log(n_ij) + np.log(n) - np.log(a[i] * 1.0) - np.log(b[j] * 1.0))).sum())
    mi = max(mi, 0.0)
    if mi == 0.0:
        return 0.0
    normaliser = max((_entropy(a, n) + _entropy(b, n)) / 2.0, np.finfo(np.float64).eps)
    return float(mi / normaliser)
