"""The metrics :func:`~tuneddml.evaluation.evaluate` reports, by name: :data:`METRICS`.

A metric is a :class:`Metric` registered in :data:`METRICS`: it says which keys it reports
(``recall_at_1`` ... for ``recall_at_k``), how wide a neighbour table it needs, and computes its
values from one :class:`Ranking` (the neighbour-label table and the embeddings of one
evaluation). ``evaluate`` runs every registered metric, in registration order, so a metric
registered here (or in any module imported with :mod:`tuneddml.evaluation`) reaches the trial's
per-epoch record, MLflow, the results table (``metric.<key>``), the best trial's summary and the
report without another edit; the catalog lists it and a space may name it as its ``metric``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tuneddml.evaluation.average_precision import exact_average_precision
from tuneddml.evaluation.clustering import nmi
from tuneddml.evaluation.kmeans import LloydKMeans
from tuneddml.evaluation.ranking import average_precision, map_at_r, ndcg_at_k, r_precision, recall_at_k
from tuneddml.registry import Registry

# Neighbours kept per query when AP is wanted: a query whose R relevant items all fall within
# them gets its AP from the table, without the full-ranking pass (faiss's cost barely grows).
AP_TABLE_WIDTH = 32


@dataclass(frozen=True)
class EvalOptions:
    """What ``evaluate`` was asked for (its keyword arguments of the same names)."""

    ks: tuple[int, ...] = (1, 2, 4, 8)
    ndcg_k: int = 10
    with_ap: bool = True
    with_nmi: bool = True
    seed: int = 0
    batch_size: int = 512
    kmeans: Any = None  # a KMeans backend; None: LloydKMeans(seed)


@dataclass(frozen=True)
class Ranking:
    """One evaluation, as every metric reads it: ``table[i]`` holds the labels (integer codes) of
    query ``i``'s nearest gallery items, best first; ``num_relevant[i]`` is its ``R``; ``q``/``g``
    are the L2-normalised query and gallery embeddings (``g`` None: leave-one-out on ``q``)."""

    table: np.ndarray
    q: np.ndarray
    q_codes: np.ndarray
    g: np.ndarray | None
    g_codes: np.ndarray | None
    num_relevant: np.ndarray
    options: EvalOptions


class Metric:
    """One metric of ``evaluate``. The docstring's first line is the catalog's summary."""

    #: the keys shown on a trial's progress line (None: all of :meth:`keys`)
    shown: ClassVar[tuple[str, ...] | None] = None

    def keys(self, options: EvalOptions) -> list[str]:
        """The keys this metric reports under ``options`` (empty when it does not apply)."""
        raise NotImplementedError

    def width(self, options: EvalOptions, max_relevant: int) -> int:
        """Neighbours per query the table must hold for this metric."""
        return 0

    def __call__(self, ranking: Ranking) -> dict[str, float]:
        raise NotImplementedError


def _check_metric_class(name: str, factory: Any) -> None:
    if not (isinstance(factory, type) and issubclass(factory, Metric)):
        raise ValueError(f"metric {name}: a metric is a Metric subclass")


METRICS: Registry[Metric] = Registry("metric", contract=_check_metric_class)


@METRICS.register("recall_at_k")
class RecallAtK(Metric):
    """Recall@k for each k of ks: the share of queries with a relevant item among their k nearest.

    :func:`~tuneddml.evaluation.ranking.recall_at_k`."""

    shown = ("recall_at_1", "recall_at_4")

    def keys(self, options: EvalOptions) -> list[str]:
        return [f"recall_at_{k}" for k in options.ks]

    def width(self, options: EvalOptions, max_relevant: int) -> int:
        return max(options.ks)

    def __call__(self, r: Ranking) -> dict[str, float]:
        return {
            f"recall_at_{k}": recall_at_k(r.table, r.q_codes, k, num_relevant=r.num_relevant)
            for k in r.options.ks
        }


@METRICS.register("map_at_r")
class MapAtR(Metric):
    """MAP@R (Musgrave, Belongie & Lim, ECCV 2020): mean over queries of (1/R) sum_{j<=R} P@j rel_j.

    :func:`~tuneddml.evaluation.ranking.map_at_r`."""

    def keys(self, options: EvalOptions) -> list[str]:
        return ["map_at_r"]

    def width(self, options: EvalOptions, max_relevant: int) -> int:
        return max_relevant

    def __call__(self, r: Ranking) -> dict[str, float]:
        return {"map_at_r": map_at_r(r.table, r.q_codes, r.num_relevant)}


@METRICS.register("r_precision")
class RPrecision(Metric):
    """R-Precision: the share of relevant items among each query's R nearest.

    :func:`~tuneddml.evaluation.ranking.r_precision`."""

    def keys(self, options: EvalOptions) -> list[str]:
        return ["r_precision"]

    def width(self, options: EvalOptions, max_relevant: int) -> int:
        return max_relevant

    def __call__(self, r: Ranking) -> dict[str, float]:
        return {"r_precision": r_precision(r.table, r.q_codes, r.num_relevant)}


@METRICS.register("ndcg_at_k")
class NdcgAtK(Metric):
    """nDCG@k with binary relevance, k = ndcg_k (10): DCG = sum_{j<=k} rel_j / log2(j + 1), over the ideal DCG.

    :func:`~tuneddml.evaluation.ranking.ndcg_at_k`."""

    shown = ()

    def keys(self, options: EvalOptions) -> list[str]:
        return [f"ndcg_at_{options.ndcg_k}"]

    def width(self, options: EvalOptions, max_relevant: int) -> int:
        return options.ndcg_k

    def __call__(self, r: Ranking) -> dict[str, float]:
        k = r.options.ndcg_k
        return {f"ndcg_at_{k}": ndcg_at_k(r.table, r.q_codes, k, r.num_relevant)}


@METRICS.register("ap")
class FullRankingAP(Metric):
    """Mean average precision over each query's full ranking of the gallery, exact (with_ap)."""

    shown = ()

    def keys(self, options: EvalOptions) -> list[str]:
        return ["ap"] if options.with_ap else []

    def width(self, options: EvalOptions, max_relevant: int) -> int:
        return AP_TABLE_WIDTH if options.with_ap else 0  # a wider table lets more queries use it

    def __call__(self, r: Ranking) -> dict[str, float]:
        """Where the kNN table holds all ``R`` relevant items of a query, the rest of its ranking
        cannot change its AP, so the table gives it exactly; the other queries go through the
        chunked full-ranking pass of :mod:`tuneddml.evaluation.average_precision`."""
        if not r.options.with_ap:
            return {}
        wanted = r.num_relevant > 0
        if not wanted.any():
            return {"ap": float("nan")}
        covered = wanted & ((r.table == r.q_codes[:, None]).sum(axis=1) == r.num_relevant)
        total = 0.0
        if covered.any():
            total += (
                average_precision(r.table[covered], r.q_codes[covered], r.num_relevant[covered]) * covered.sum()
            )
        rest = np.flatnonzero(wanted & ~covered)
        if rest.size:
            ap = exact_average_precision(
                r.q, r.q_codes, r.g, r.g_codes, batch_size=r.options.batch_size, rows=rest
            )
            total += float(ap[rest].sum())
        return {"ap": float(total / int(wanted.sum()))}


@METRICS.register("nmi")
class ClusteringNMI(Metric):
    """NMI between the classes and a seeded k-means of the query embeddings, k = the class count (with_nmi).

    :func:`~tuneddml.evaluation.clustering.nmi`; k-means :class:`~tuneddml.evaluation.kmeans.LloydKMeans`."""

    def keys(self, options: EvalOptions) -> list[str]:
        return ["nmi"] if options.with_nmi else []

    def __call__(self, r: Ranking) -> dict[str, float]:
        if not r.options.with_nmi:
            return {}
        kmeans = LloydKMeans(seed=r.options.seed) if r.options.kmeans is None else r.options.kmeans
        return {"nmi": nmi(r.q_codes, kmeans(r.q, len(np.unique(r.q_codes))))}


def metric_keys(options: EvalOptions | None = None) -> list[str]:
    """Every key ``evaluate`` reports under ``options`` (default: a trial's), in order."""
    options = options or EvalOptions()
    return [key for name in METRICS for key in METRICS.build(name).keys(options)]


def shown_keys(options: EvalOptions | None = None) -> list[str]:
    """The keys a trial's progress line shows."""
    options = options or EvalOptions()
    out = []
    for name in METRICS:
        metric = METRICS.build(name)
        keys = metric.keys(options)
        out += keys if metric.shown is None else [k for k in metric.shown if k in keys]
    return out
