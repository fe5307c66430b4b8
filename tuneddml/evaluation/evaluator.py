"""``evaluate``: every retrieval and clustering metric of a trial, from embeddings and labels.

The metrics themselves are the registered :data:`~tuneddml.evaluation.metrics.METRICS`; this module
validates the input, builds the one neighbour table they all read and runs each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tuneddml.errors import ConfigError
from tuneddml.evaluation.clustering import KMeans
from tuneddml.evaluation.knn import FaissKnn, KnnBackend, faiss_threads, torch_threads, worth_threads
from tuneddml.evaluation.metrics import METRICS, EvalOptions, Ranking
from tuneddml.evaluation.neighbours import ranked_neighbour_labels


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

    Returns the keys of every registered metric (:data:`~tuneddml.evaluation.metrics.METRICS`),
    in registration order; the built-in ones are:

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
    options = EvalOptions(ks, ndcg_k, with_ap, with_nmi, seed, batch_size, kmeans)

    # Integer codes shared by query and gallery labels (any hashable, sortable label type works).
    both = q_y if g_y is None else np.concatenate([q_y, g_y])
    _, codes = np.unique(both, return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    q_codes, g_codes = codes[: len(q)], (None if g_y is None else codes[len(q) :])

    counts = np.bincount(q_codes if g_codes is None else g_codes, minlength=int(codes.max()) + 1)
    num_relevant = counts[q_codes] - (1 if g_codes is None else 0)
    metrics = [METRICS.build(name) for name in METRICS]
    max_relevant = int(num_relevant.max(initial=0))
    k = max([1, *(m.width(options, max_relevant) for m in metrics)])
    table = ranked_neighbour_labels(q, q_codes, g, g_codes, k, knn=knn, batch_size=batch_size)
    ranking = Ranking(table, q, q_codes, g, g_codes, num_relevant, options)

    out: dict[str, float] = {}
    for metric in metrics:
        out.update(metric(ranking))
    return out
