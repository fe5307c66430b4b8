"""Retrieval metrics as pure functions of a neighbour-label table.

A *neighbour-label table* ``knn_labels`` has one row per query: the labels of the gallery items
ranked by decreasing similarity to that query (the query itself already removed in leave-one-out
evaluation). ``query_labels[i]`` is the label of query ``i`` and ``num_relevant[i]`` its ``R``: the
number of gallery items of its class (other than itself). Position ``j`` (1-based) of row ``i`` is
*relevant*, ``rel_ij = 1``, when ``knn_labels[i, j] == query_labels[i]``.

Queries with ``R = 0`` (a class with a single item in leave-one-out, or a class missing from the
gallery) have nothing to retrieve and are left out of every mean, as in Musgrave et al. and in
pytorch-metric-learning's ``AccuracyCalculator`` (its "lone query labels"). A metric over no query
at all is ``nan``.

Each function returns the mean over the kept queries of a per-query score; the formulas are in
their docstrings. ``P@j = (1/j) sum_{m<=j} rel_im`` is the precision at rank ``j``.
"""

from __future__ import annotations

import numpy as np

from tuneddml.errors import ConfigError


def relevance(knn_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """``rel[i, j] = knn_labels[i, j] == query_labels[i]`` as a boolean ``(n, K)`` array."""
    knn_labels = np.asarray(knn_labels)
    query_labels = np.asarray(query_labels)
    if knn_labels.ndim != 2 or query_labels.shape != (knn_labels.shape[0],):
        raise ConfigError(
            "knn_labels",
            f"shape {knn_labels.shape} with query_labels {query_labels.shape}",
            "a (n, K) table and n query labels",
        )
    return knn_labels == query_labels[:, None]


def _kept(num_relevant: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if num_relevant is None:
        return np.ones(n, dtype=bool), np.zeros(n, dtype=np.int64)
    r = np.asarray(num_relevant, dtype=np.int64)
    if r.shape != (n,) or (r < 0).any():
        raise ConfigError("num_relevant", f"shape {r.shape}", f"{n} non-negative counts")
    return r > 0, r


def _mean(per_query: np.ndarray) -> float:
    return float(per_query.mean()) if per_query.size else float("nan")


def _need_width(rel: np.ndarray, r: np.ndarray, what: str) -> None:
    if r.size and r.max(initial=0) > rel.shape[1]:
        raise ConfigError(
            "knn_labels",
            f"{rel.shape[1]} columns",
            f"at least max(num_relevant) = {r.max()} columns for {what}",
        )


def recall_at_k(
    knn_labels: np.ndarray, query_labels: np.ndarray, k: int, *, num_relevant: np.ndarray | None = None
) -> float:
    """Recall@k of deep metric learning (Song et al., CVPR 2016; Jegou et al.): the fraction of
    queries with at least one relevant item among their ``k`` nearest neighbours,
    ``mean_i [ sum_{j<=k} rel_ij > 0 ]``. Equal to precision@1 for ``k = 1``.

    Without ``num_relevant`` every row counts; with it, rows with ``R = 0`` are left out. A table
    narrower than ``k`` (a gallery smaller than ``k``) uses all its columns.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError("k", k, "an integer >= 1")
    rel = relevance(knn_labels, query_labels)
    keep, _ = _kept(num_relevant, rel.shape[0])
    return _mean(rel[keep, :k].any(axis=1).astype(np.float64))


def r_precision(knn_labels: np.ndarray, query_labels: np.ndarray, num_relevant: np.ndarray) -> float:
    """R-Precision (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020):
    ``mean_i (1/R_i) sum_{j<=R_i} rel_ij``, the precision at rank ``R_i``.

    The table needs at least ``max R`` columns.
    """
    rel = relevance(knn_labels, query_labels)
    keep, r = _kept(num_relevant, rel.shape[0])
    rel, r = rel[keep], r[keep]
    _need_width(rel, r, "R-precision")
    within = np.arange(rel.shape[1])[None, :] < r[:, None]
    return _mean((rel & within).sum(axis=1) / r)


def map_at_r(knn_labels: np.ndarray, query_labels: np.ndarray, num_relevant: np.ndarray) -> float:
    """MAP@R (Musgrave, Belongie & Lim, ECCV 2020): the mean over queries of
    ``(1/R_i) sum_{j<=R_i} P@j * rel_ij``, average precision cut at rank ``R_i`` and divided by
    ``R_i`` (so a relevant item found after rank ``R_i`` earns nothing).

    The table needs at least ``max R`` columns.
    """
    rel = relevance(knn_labels, query_labels)
    keep, r = _kept(num_relevant, rel.shape[0])
    rel, r = rel[keep], r[keep]
    _need_width(rel, r, "MAP@R")
    rank = np.arange(1, rel.shape[1] + 1)
    within = rank[None, :] <= r[:, None]
    hits = rel & within
    precision = np.cumsum(hits, axis=1) / rank[None, :]
    return _mean((precision * hits).sum(axis=1) / r)


def ndcg_at_k(knn_labels: np.ndarray, query_labels: np.ndarray, k: int, num_relevant: np.ndarray) -> float:
    """nDCG@k with binary relevance, the metric proposed for DML in the multi-proxy anchor paper
    (Saeki, Kawahara & Aman, arXiv 2110.03997), in the standard form of Jarvelin & Kekalainen
    (2002):

    ``DCG@k_i = sum_{j<=k} rel_ij / log2(j + 1)``,
    ``IDCG@k_i = sum_{j<=min(k, R_i)} 1 / log2(j + 1)`` (all relevant items ranked first),
    ``nDCG@k = mean_i DCG@k_i / IDCG@k_i``, in ``[0, 1]``.

    A table narrower than ``k`` (a gallery smaller than ``k``) uses all its columns for both sums.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError("k", k, "an integer >= 1")
    rel = relevance(knn_labels, query_labels)
    keep, r = _kept(num_relevant, rel.shape[0])
    rel, r = rel[keep], r[keep]
    kk = min(int(k), rel.shape[1])
    discount = 1.0 / np.log2(np.arange(2, kk + 2))
    if kk == 0:
        return _mean(np.zeros(len(r)))
    dcg = rel[:, :kk] @ discount
    ideal = np.cumsum(discount)[np.minimum(r, kk) - 1]
    return _mean(dcg / ideal)


def average_precision(knn_labels: np.ndarray, query_labels: np.ndarray, num_relevant: np.ndarray) -> float:
    """Mean average precision over full rankings (AP, the area under the precision-recall curve
    of each query, averaged over queries): ``mean_i (1/R_i) sum_j P@j * rel_ij`` over every rank.

    The table must hold every relevant item of each row (in practice: the whole ranked gallery).
    :func:`tuneddml.evaluation.average_precision.exact_average_precision` computes the same value
    from embeddings without building the full table.
    """
    rel = relevance(knn_labels, query_labels)
    keep, r = _kept(num_relevant, rel.shape[0])
    rel, r = rel[keep], r[keep]
    found = rel.sum(axis=1)
    if (found != r).any():
        raise ConfigError(
            "knn_labels", "a truncated ranking", "every relevant item of each row (the full ranking)"
        )
    rank = np.arange(1, rel.shape[1] + 1)
    precision = np.cumsum(rel, axis=1) / rank[None, :]
    return _mean((precision * rel).sum(axis=1) / np.maximum(r, 1))
