"""``evaluate``: every retrieval and clustering metric of a trial, from embeddings and labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tuneddml.errors import ConfigError
from tuneddml.evaluation.average_precision import exact_average_precision
from tuneddml.evaluation.clustering import KMeans, nmi
from tuneddml.evaluation.kmeans import LloydKMeans
from tuneddml.evaluation.knn import FaissKnn, KnnBackend, faiss_threads, torch_threads, worth_threads
from tuneddml.evaluation.neighbours import ranked_neighbour_labels
from tuneddml.evaluation.ranking import average_precision, map_at_r, ndcg_at_k, r_precision, recall_at_k

# Neighbours kept per query when AP is wanted: a query whose R relevant items all fall within
# them gets its AP from the table, without the full-ranking pass (faiss's cost barely grows).
_AP_TABLE_WIDTH = 32


def _mean_ap(
    table: np.ndarray,
    q: np.ndarray,
    q_codes: np.ndarray,
    g: np.ndarray | None,
    g_codes: np.ndarray | None,
    num_relevant: np.ndarray,
    batch_size: int,
) -> float:
    """Mean full-ranking AP over queries with ``R > 0``. Where the exact kNN table holds all ``R``
    relevant items of a query, the rest of its ranking cannot change its AP, so the table gives
    it exactly; the other queries go through the full-ranking pass."""
    wanted = num_relevant > 0
    if not wanted.any():
        return float("nan")
    covered = wanted & ((table == q_codes[:, None]).sum(axis=1) == num_relevant)
    total = 0.0
    if covered.any():
        total += average_precision(table[covered], q_codes[covered], num_relevant[covered]) * covered.sum()
    rest = np.flatnonzero(wanted & ~covered)
    if rest.size:
        total += float(
            exact_average_precision(q, q_codes, g, g_codes, batch_size=batch_size, rows=rest)[rest].sum()
        )
    return float(total / int(wanted.sum()))


def l2_normalise(x: Any, field: str = "query") -> np.ndarray:
    """Rows of ``x`` (numpy or torch, any float dtype incl. float16) as float32 unit vectors.

    The norm is taken in float32 after the cast, so float16 input loses nothing more; a zero row
    stays zero (it is then equally similar, 0, to everything).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float().numpy() if x.is_floating_point() else x.numpy()
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(field, f"an array of shape {arr.shape}", "a non-empty (n, dim) array of embeddings")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(field, f"dtype {arr.dtype}", "floating-point embeddings")
    arr = arr.astype(np.float32, copy=True)
    if not np.isfinite(arr).all():
        raise ConfigError(field, "embeddings with NaN or inf", "finite embeddings")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    np.divide(arr, np.maximum(norms, np.finfo(np.float32).tiny), out=arr)
    return arr


def _labels(y: Any, n: int, field: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ConfigError(field, f"shape {arr.shape}", f"one label per embedding, shape ({n},)")
    return arr


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(field, value, "an integer >= 1")
    return int(value)


def evaluate(
    query: np.ndarray | torch.Tensor,
    query_labels: np.ndarray | torch.Tensor | Sequence[Any],
    gallery: np.ndarray | torch.Tensor | None = None,
    gallery_labels: np.ndarray | torch.Tensor | Sequence[Any] | None = None,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    ndcg_k: int = 10,
    with_nmi: bool = True,
    with_ap: bool = True,
    seed: int = 0,
    batch_size: int = 512,
    knn: KnnBackend | None = None,
    kmeans: KMeans | None = None,
    num_threads: int | None = None,
) -> dict[str, float]:
    """Zero-shot retrieval metrics of embeddings on held-out classes.

    Embeddings are L2-normalised here and compared by cosine similarity. Without ``gallery`` each
    query retrieves from the query set minus itself (leave-one-out: CUB, Cars, SOP); with one,
    queries retrieve from the gallery (In-Shop). ``R`` of a query is the number of gallery items
    of its class other than itself; queries with ``R = 0`` are left out of the retrieval metrics
    (see :mod:`tuneddml.evaluation.ranking`). Equal similarities are ranked irrelevant first (see
    :mod:`tuneddml.evaluation.neighbours`), so ties never earn credit.

    Returns (keys exactly):

    - ``recall_at_{k}`` for each ``k`` in ``ks``: Recall@k (:func:`~.ranking.recall_at_k`);
    - ``map_at_r``, ``r_precision``: MAP@R and R-Precision of Musgrave et al., ECCV 2020;
    - ``ndcg_at_{ndcg_k}``: binary-relevance nDCG@k (:func:`~.ranking.ndcg_at_k`);
    - ``ap`` (if ``with_ap``): mean average precision over the *full* ranking of the gallery,
      exact: from the kNN table (kept at least 32 wide then) for queries whose relevant items all
      lie in it, by the chunked full-ranking pass of :mod:`tuneddml.evaluation.average_precision`
      for the others (one more matrix product for those rows: turn it off for speed on large sets);
    - ``nmi`` (if ``with_nmi``): NMI (:func:`~.clustering.nmi`) of a seeded k-means of the query
      embeddings with ``k`` = the number of query classes (default :class:`~.kmeans.LloydKMeans`:
      exact Lloyd iterations, 20, computed incrementally).

    Memory stays bounded: the kNN table is ``n_query x k`` with ``k = max(max(ks), ndcg_k, max R)``
    (plus one column for ties, plus one for the query itself in leave-one-out); brute-force passes
    hold at most ``batch_size x n_gallery`` similarities (and at most 2**25) at a time. ``knn``
    (default :class:`FaissKnn`) and ``kmeans`` (default :class:`LloydKMeans` with ``seed``;
    :class:`FaissKMeans` runs ``faiss.Kmeans`` itself) are injected backends. faiss and torch run
    with ``num_threads`` threads (default: ``torch.get_num_threads()``, so a trial's thread budget
    holds for faiss too), and with one thread for small sets (under ~7e7 multiply-adds for the
    similarities).
    """
    q = l2_normalise(query, "query")
    q_y = _labels(query_labels, len(q), "query_labels")
    if (gallery is None) != (gallery_labels is None):
        raise ConfigError(
            "gallery",
            "given without its labels" if gallery is not None else None,
            "both gallery and gallery_labels, or neither",
        )
    g = g_y = None
    if gallery is not None:
        g = l2_normalise(gallery, "gallery")
        g_y = _labels(gallery_labels, len(g), "gallery_labels")
        if g.shape[1] != q.shape[1]:
            raise ConfigError("gallery", f"dimension {g.shape[1]}", f"the query dimension {q.shape[1]}")
    ks = tuple(_positive_int(k, "ks") for k in ks)
    if not ks:
        raise ConfigError("ks", (), "at least one k >= 1")
    ndcg_k = _positive_int(ndcg_k, "ndcg_k")
    batch_size = _positive_int(batch_size, "batch_size")
    threads = torch.get_num_threads() if num_threads is None else _positive_int(num_threads, "num_threads")
    if not worth_threads(len(q) * (q if g is None else g).size):
        threads = 1  # a small set: thread start-up would cost more than the work
    with faiss_threads(threads), torch_threads(threads):
        return _metrics(q, q_y, g, g_y, ks, ndcg_k, with_nmi, with_ap, seed, batch_size, knn, kmeans)


def _metrics(
    q: np.ndarray,
    q_y: np.ndarray,
    g: np.ndarray | None,
    g_y: np.ndarray | None,
    ks: tuple[int, ...],
    ndcg_k: int,
    with_nmi: bool,
    with_ap: bool,
    seed: int,
    batch_size: int,
    knn: KnnBackend | None,
    kmeans: KMeans | None,
) -> dict[str, float]:
    knn = FaissKnn() if knn is None else knn

    # Integer codes shared by query and gallery labels (any hashable, sortable label type works).
    both = q_y if g_y is None else np.concatenate([q_y, g_y])
    _, codes = np.unique(both, return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    q_codes, g_codes = codes[: len(q)], (None if g_y is None else codes[len(q) :])

    counts = np.bincount(q_codes if g_codes is None else g_codes, minlength=int(codes.max()) + 1)
    num_relevant = counts[q_codes] - (1 if g_codes is None else 0)
    k = max(max(ks), ndcg_k, int(num_relevant.max(initial=0)))
    if with_ap:
        k = max(k, _AP_TABLE_WIDTH)  # a wider table lets more queries take their AP from it
    table = ranked_neighbour_labels(q, q_codes, g, g_codes, k, knn=knn, batch_size=batch_size)

    metrics: dict[str, float] = {}
    for kk in ks:
        metrics[f"recall_at_{kk}"] = recall_at_k(table, q_codes, kk, num_relevant=num_relevant)
    metrics["map_at_r"] = map_at_r(table, q_codes, num_relevant)
    metrics["r_precision"] = r_precision(table, q_codes, num_relevant)
    metrics[f"ndcg_at_{ndcg_k}"] = ndcg_at_k(table, q_codes, ndcg_k, num_relevant)
    if with_ap:
        metrics["ap"] = _mean_ap(table, q, q_codes, g, g_codes, num_relevant, batch_size)
    if with_nmi:
        kmeans = LloydKMeans(seed=seed) if kmeans is None else kmeans
        num_classes = len(np.unique(q_codes))
        metrics["nmi"] = nmi(q_codes, kmeans(q, num_classes))
    return metrics
