"""Evaluation of embeddings on held-out classes: Recall@K, MAP@R, R-Precision, nDCG@k, AP, NMI.

``evaluate`` is what every trial calls; it runs every metric registered in :data:`METRICS`
(:mod:`.metrics`: a new metric is a :class:`Metric` registered there). The pieces are public so they can be tested and reused:
the pure metric functions over neighbour-label tables (:mod:`.ranking`), the kNN backends
(:mod:`.knn`: faiss and brute-force torch), the exact full-ranking AP (:mod:`.average_precision`)
k-means (:mod:`.kmeans`, faiss in :mod:`.clustering`) and NMI (:mod:`.clustering`).
"""

from __future__ import annotations

from tuneddml.evaluation.average_precision import exact_average_precision
from tuneddml.evaluation.clustering import FaissKMeans, KMeans, nmi
from tuneddml.evaluation.evaluator import evaluate, l2_normalise
from tuneddml.evaluation.kmeans import LloydKMeans
from tuneddml.evaluation.knn import FaissGpuKnn, FaissKnn, KnnBackend, TorchKnn, knn_for_device
from tuneddml.evaluation.metrics import METRICS, EvalOptions, Metric, Ranking, metric_keys, shown_keys
from tuneddml.evaluation.neighbours import ranked_neighbour_labels
from tuneddml.evaluation.ranking import (
    average_precision,
    map_at_r,
    ndcg_at_k,
    r_precision,
    recall_at_k,
    relevance,
)
from tuneddml.registry import import_components

import_components(__name__)  # a metric in a module of its own registers on import

__all__ = [
    "METRICS",
    "EvalOptions",
    "FaissGpuKnn",
    "FaissKMeans",
    "FaissKnn",
    "KMeans",
    "KnnBackend",
    "LloydKMeans",
    "Metric",
    "Ranking",
    "TorchKnn",
    "average_precision",
    "evaluate",
    "exact_average_precision",
    "knn_for_device",
    "l2_normalise",
    "map_at_r",
    "metric_keys",
    "ndcg_at_k",
    "nmi",
    "r_precision",
    "ranked_neighbour_labels",
    "recall_at_k",
    "relevance",
    "shown_keys",
]
