"""Multi-class N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective", NeurIPS 2016), split into a positive and an entropy term (Sors et al., 2021)."""

from __future__ import annotations

from typing import ClassVar

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import similarity, zero_like_graph


def first_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anchors, positives)``: for each class with at least two items in the batch, its first
    item (in batch order) is the anchor and its second the positive; pairs in anchor order."""
    same = labels[:, None] == labels[None, :]
    rank = torch.tril(same, diagonal=-1).sum(dim=1)  # earlier items of the same class
    seconds = torch.nonzero(rank == 1).squeeze(1)
    anchors = torch.argmax(same[seconds].int(), dim=1)  # first True of the row: the class's first item
    order = torch.argsort(anchors)
    return anchors[order], seconds[order]


@LOSSES.register(
    "npair",
    ranges={"lam": "[0, 1]", "temperature": "(0, inf)"},
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "temperature": {"loguniform": [0.03, 1.0], "start": 0.1},
    },
)
class NPairLoss(BaseLoss):
    """Multi-class N-pair loss: each anchor is classified against the positives of all N pairs.

    From a batch of N pairs ``(x_i, x_i^+)`` of N different classes (the ``npairs`` batch
    sampler; with more items per class only each class's first two are used), with
    ``s_ij = e_i . e_j^+`` and ``tau`` the temperature::

        L = 1/N sum_i log(1 + sum_{j != i} exp((s_ij - s_ii) / tau))
          = 1/N sum_i -log softmax_j(s_ij / tau)[i]

    Terms:

    - ``pos`` = ``-mean_i s_ii / tau`` (pull each anchor to its positive);
    - ``ent`` = ``mean_i log sum_j exp(s_ij / tau)`` (spread the anchor from all positives).

    ``total = 2 lambda pos + 2 (1 - lambda) ent``; ``lambda = 0.5`` is the N-pair loss.

    Simplification: Sohn trains unnormalised embeddings with an L2 penalty on their norm, which
    bounds the logits; here embeddings are L2-normalised (as for the other losses of tuneddml)
    and the scale of the logits is the explicit ``temperature``. ``temperature = 1`` is
    pytorch-metric-learning's ``NPairsLoss``. Parameters: ``lambda`` in [0, 1] (0.5),
    ``temperature`` in (0, inf) (0.1).

    Follows: Sohn 2016, the multi-class N-pair loss, as pytorch-metric-learning's ``NPairsLoss`` at
    ``temperature = 1`` (tested). Differs: embeddings are L2-normalised with an explicit temperature
    instead of Sohn's L2 penalty on unnormalised embeddings.
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "ent")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "ent", "pull each anchor toward its positive", "spread it from every other class's positive (log-sum-exp)"
    )

    def __init__(self, *, lam: float = 0.5, temperature: float = 0.1) -> None:
        super().__init__()
        self.lam = lam
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        anchors, positives = first_pairs(labels)
        if len(anchors) == 0:
            zero = zero_like_graph(embeddings)
            return self.combine({"pos": zero, "ent": zero.clone()})
        logits = similarity(embeddings[anchors], embeddings[positives]) / self.temperature
        pos = -logits.diagonal().mean()
        ent = torch.logsumexp(logits, dim=1).mean()
        return self.combine({"pos": pos, "ent": ent})
