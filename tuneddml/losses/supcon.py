"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), the cross-entropy / InfoNCE family,
split into a positive and an entropy term as in Sors et al. (2021, arXiv 2112.11743)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import masked_logsumexp, pair_masks, similarity, zero_like_graph


@LOSSES.register(
    "supcon",
    ranges={"lam": "[0, 1]", "temperature": "(0, inf)"},
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "temperature": {"loguniform": [0.01, 1.0], "start": 0.1},
    },
)
class SupConLoss(BaseLoss):
    """Supervised contrastive loss (SupCon) split into ``pos`` and ``ent``, balanced by ``lambda``.

    Over the anchors ``A`` that have at least one positive in the batch (others are skipped),
    with ``tau`` the temperature:

    - ``pos`` = ``-mean_{i in A} mean_{p in P(i)} s_ip / tau``;
    - ``ent`` = ``mean_{i in A} log sum_{j != i} exp(s_ij / tau)`` (``aggregation="sum"``), or
      ``mean_{i in A} log mean_{j != i} exp(s_ij / tau)`` (``"mean"``: the sum version minus
      ``log(n - 1)``, so the term's value does not grow with the batch size ``n`` and stays
      comparable across batch sizes).

    Unlike the margin losses, here the two aggregations differ by a constant only: their
    gradients are equal (a log-sum-exp spreads a total weight of ``1 / tau`` over the ``j``
    whatever their number), so the choice changes the reported ``ent`` and ``total``, not training.

    Because the choice is a no-op for training, no shipped search space searches it.

    ``total = 2 lambda * pos + 2 (1 - lambda) * ent``. With ``aggregation="sum"`` and
    ``lambda = 0.5``, ``total`` is the standard SupCon loss ``L_out`` of Khosla et al. with the
    denominator over all ``j != i``: ``mean_{i in A} -mean_{p in P(i)} log(exp(s_ip / tau) /
    sum_{j != i} exp(s_ij / tau))``.

    Follows: Khosla et al. 2020, ``L_out``, as pytorch-metric-learning's ``SupConLoss``
    (tested), split as Sors et al. 2021. As published at ``lambda = 0.5`` with ``aggregation="sum"``.
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "ent")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "ent", "pull each anchor toward its positives", "spread it from every other sample (log-sum-exp)"
    )

    def __init__(
        self, *, lam: float = 0.5, temperature: float = 0.1, aggregation: Literal["sum", "mean"] = "mean"
    ) -> None:
        super().__init__()
        self.lam = lam
        self.temperature = temperature
        self.aggregation = aggregation

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = similarity(embeddings) / self.temperature
        pos_mask, neg_mask = pair_masks(labels)
        num_pos = pos_mask.sum(dim=1)
        anchors = num_pos > 0
        if not bool(anchors.any()):
            zero = zero_like_graph(embeddings)
            return self.combine({"pos": zero, "ent": zero.clone()})
        mean_pos = (logits * pos_mask).sum(dim=1)[anchors] / num_pos[anchors]
        others = pos_mask | neg_mask  # every j != i
        ent = masked_logsumexp(logits, others, dim=1)[anchors]
        if self.aggregation == "mean":
            ent = ent - math.log(len(labels) - 1)
        return self.combine({"pos": -mean_pos.mean(), "ent": ent.mean()})
