"""Stochastic AP / AUPRC optimisation with a sampling-rate-invariant estimator and moving-average
ranking statistics (Wen, Xu, Yang, He & Huang, "Exploring the Algorithm-Dependent Generalization of
AUPRC Optimization with List Stability", NeurIPS 2022; the compositional moving averages go back
to SOAP, Qi et al., NeurIPS 2021)."""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss, Family
from tuneddml.similarity import pair_masks, similarity, zero_like_graph


def ranking_statistics(
    s: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor, n_targets: int, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted smooth TPR and FPR of each query's positives.

    ``s`` is ``(n, m)`` query-to-pool similarity; ``pos``/``neg`` ``(n, m)`` masks; ``weight``
    ``(m,)`` the weight of each pool item; the first ``n_targets`` pool columns are the targets
    ``k`` whose precision is estimated. With ``l(t) = sigmoid(t / tau)``:

    - ``TPR[i, k] = sum_{j in P(i)} w_j l(s_ij - s_ik) / sum_{j in P(i)} w_j`` (``j = k`` counts 1);
    - ``FPR[i, k] = sum_{j in N(i)} w_j l(s_ij - s_ik) / sum_{j in N(i)} w_j`` (0 if no negative).

    Returns ``(TPR, FPR)``, each ``(n, n_targets)``.
    """
    diff = s[:, None, :] - s[:, :n_targets, None]  # diff[i, k, j] = s_ij - s_ik
    step = torch.sigmoid(diff / tau)
    eye = torch.zeros(n_targets, s.shape[1], dtype=torch.bool, device=s.device)
    eye[:, :n_targets] = torch.eye(n_targets, dtype=torch.bool, device=s.device)
    step = torch.where(eye[None], torch.ones_like(step), step)
    w_pos = pos * weight
    w_neg = neg * weight
    tpr = (step * w_pos[:, None, :]).sum(dim=2) / w_pos.sum(dim=1, keepdim=True).clamp_min(1e-12)
    fpr = (step * w_neg[:, None, :]).sum(dim=2) / w_neg.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return tpr, fpr


@LOSSES.register(
    "stochastic_ap",
    ranges={"tau": "(0, inf)", "gamma": "(0, 1]", "memory": "[0, 1000]", "semivar_weight": "[0, inf)"},
    search={
        "gamma": {"uniform": [0.01, 1.0], "start": 0.1},
        "tau": {"loguniform": [0.001, 0.1], "start": 0.01},
        "memory": {"choice": [4, 0, 2]},
        "ratio": {"choice": ["population", "batch"]},
    },
)
class StochasticAPLoss(BaseLoss):
    """AP loss with an unbiased-in-the-sampling-rate, moving-average estimator of the ranking
    statistics.

    **The estimator.** Each batch sample ``i`` (class ``c``) is a query; its positives are the
    other samples of class ``c``. For a positive ``k``, precision at ``k`` is
    ``n+ TPR / (n+ TPR + n- FPR) = TPR / (TPR + rho_c FPR)`` with ``TPR``/``FPR`` the fractions of
    the query's positives/negatives ranked at or above ``k`` and ``rho_c = n-/n+`` the ratio of
    negatives to positives of class ``c`` **in the training set**: ``rho_c = (N - N_c) /
    (N_c - 1)``, set from the training labels at each epoch start. A mini-batch estimates ``TPR``
    and ``FPR`` by means over its positives and negatives, which are unbiased however many
    positives and negatives the batch sampler puts in (m-per-class batches hold far more
    positives than the dataset's share); plugging in the batch's own counts instead, as Smooth-AP
    does, makes the estimate depend on the sampling rates: that bias is what Wen et al. remove.
    Only the ratio of the two means remains non-linear; its bias shrinks as the means cover more
    items (asymptotically unbiased), hence the moving averages.

    **Moving averages across mini-batches.** ``TPR`` and ``FPR`` are exponential moving averages
    over the current and the last ``memory`` batches: an item of the batch seen ``a`` steps ago
    (``a = 0`` the current one) has weight ``gamma (1 - gamma)^a`` in the weighted means of
    :func:`ranking_statistics`. Past batches are kept as detached embeddings and re-scored against
    the current query and target (their statistics follow the query's and target's current
    embeddings, only the stored items are stale), which gives each query-positive pair its own
    running estimate without sample identities (the loss does not see dataset indices). The
    current batch's items carry gradients; stored items do not. ``gamma = 1`` or ``memory = 0``
    gives the single-batch estimator. The memory is not saved in checkpoints (it refills within
    ``memory`` steps). Cost: time and memory grow as ``n^2 * n (memory + 1)`` for a batch of ``n``
    (every query, target and pooled item), e.g. 10 M entries per intermediate at ``n = 128``,
    ``memory = 4``.

    Terms:

    - ``ap`` = ``1 - mean_i mean_{k in P_b(i)} TPR / (TPR + rho_c FPR)``, over the queries with a
      positive in the batch, targets ``k`` from the current batch, ``l(t) = sigmoid(t / tau)``
      the smooth step of Smooth-AP (Brown et al., ECCV 2020);
    - ``semivar`` = ``mean_i (mean_{p in P_b(i)} [mu+_i - s_ip]+^2 + mean_{n in N_b(i)}
      [s_in - mu-_i]+^2)``, ``mu+``/``mu-`` the (detached) mean positive/negative score of query
      ``i``: the downside semi-variance of the positives and the upside semi-variance of the
      negatives, this implementation's reading of the paper's semi-variance regulariser (it
      narrows the score spreads that make batch estimates noisy). Weight ``semivar_weight``.

    ``total = ap + semivar_weight * semivar``.

    Parameters: ``tau`` > 0 (0.01, Smooth-AP's temperature); ``gamma`` in (0, 1] (0.1, the moving
    average's rate); ``memory`` in [0, 1000] batches (4); ``ratio``: ``"population"`` (default,
    the estimator above) or ``"batch"`` (the batch's own weighted counts: Smooth-AP over the
    pooled items); ``semivar_weight`` >= 0 (0: off).
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("ap", "semivar")

    def __init__(
        self,
        *,
        tau: float = 0.01,
        gamma: float = 0.1,
        memory: int = 4,
        ratio: Literal["population", "batch"] = "population",
        semivar_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.tau = tau
        self.gamma = gamma
        self.ratio = ratio
        self.semivar_weight = semivar_weight
        self.memory: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=memory)
        self.class_counts: torch.Tensor | None = None  # training-set size of each class

    def weights(self) -> dict[str, float]:
        return {"ap": 1.0, "semivar": self.semivar_weight}

    def on_epoch_start(self, epoch: int, context: Any) -> None:
        labels = np.asarray(context.train_labels).astype(np.int64)
        self.set_class_counts(np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64))

    def set_class_counts(self, counts: Any) -> None:
        """Training-set count of each class label (index = label); enables ``ratio="population"``."""
        self.class_counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)

    def _pool(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        items, item_labels, weights = (
            [embeddings],
            [labels],
            [torch.full_like(labels, 1.0, dtype=embeddings.dtype)],
        )
        for age, (e, y) in enumerate(reversed(self.memory), start=1):
            items.append(e.to(embeddings))
            item_labels.append(y.to(labels.device))
            weights.append(
                torch.full_like(item_labels[-1], (1.0 - self.gamma) ** age, dtype=embeddings.dtype)
            )
        return torch.cat(items), torch.cat(item_labels), torch.cat(weights)

    def _rho(
        self, labels: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        batch = (neg * weight).sum(dim=1) / (pos * weight).sum(dim=1).clamp_min(1e-12)
        if self.ratio == "batch" or self.class_counts is None or len(self.class_counts) == 0:
            return batch
        counts = self.class_counts.to(device=labels.device, dtype=batch.dtype)
        known = (labels >= 0) & (labels < len(counts))
        n_c = torch.where(known, counts[labels.clamp(0, len(counts) - 1)], torch.zeros_like(batch))
        population = (counts.sum() - n_c) / (n_c - 1.0).clamp_min(1.0)
        # a label the training set does not hold (e.g. a synthetic class) falls back to the batch
        return torch.where(known & (n_c > 1), population, batch)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(labels)
        pool, pool_labels, weight = self._pool(embeddings, labels)
        s = similarity(embeddings, pool)  # (n, m)
        same = labels[:, None] == pool_labels[None, :]
        not_self = torch.ones_like(same)
        not_self[:, :n] = ~torch.eye(n, dtype=torch.bool, device=labels.device)
        pos, neg = same & not_self, ~same
        targets = pos[:, :n]
        queries = targets.any(dim=1)
        if bool(queries.any()):
            q = queries
            tpr, fpr = ranking_statistics(s[q], pos[q], neg[q], weight, n, self.tau)
            rho = self._rho(labels[q], pos[q], neg[q], weight)
            precision = tpr / (tpr + rho[:, None] * fpr)
            ap_i = (precision * targets[q]).sum(dim=1) / targets[q].sum(dim=1)
            ap = 1.0 - ap_i.mean()
        else:
            ap = zero_like_graph(embeddings)
        semivar = self._semivariance(s[:, :n], *pair_masks(labels))
        if self.training and self.memory.maxlen:
            self.memory.append((embeddings.detach(), labels.detach()))
        return self.combine({"ap": ap, "semivar": semivar})

    @staticmethod
    def _semivariance(s: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        rows = pos.any(dim=1) & neg.any(dim=1)
        if not bool(rows.any()):
            return s.sum() * 0.0
        s, pos, neg = s[rows], pos[rows], neg[rows]
        mu_pos = ((s * pos).sum(dim=1) / pos.sum(dim=1)).detach()
        mu_neg = ((s * neg).sum(dim=1) / neg.sum(dim=1)).detach()
        low = (torch.relu(mu_pos[:, None] - s) ** 2 * pos).sum(dim=1) / pos.sum(dim=1)
        high = (torch.relu(s - mu_neg[:, None]) ** 2 * neg).sum(dim=1) / neg.sum(dim=1)
        return (low + high).mean()
