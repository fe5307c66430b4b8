"""Margin loss with a learnable boundary ``beta`` (Wu, Manmatha, Smola & Krähenbühl, "Sampling
Matters in Deep Embedding Learning", ICCV 2017), balanced as in Sors et al. (2021, arXiv 2112.11743)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import pair_masks, similarity, zero_like_graph


def euclidean_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """``D_ij = |e_i - e_j|`` from the Gram matrix (``sqrt(2 - 2 s_ij)`` for unit vectors)."""
    gram = similarity(embeddings)
    sq = gram.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)
    # sqrt has an infinite gradient at 0 (an item paired with itself or an exact duplicate)
    return torch.sqrt(d2.clamp_min(1e-12))


@LOSSES.register(
    "margin",
    ranges={"lam": "[0, 1]", "margin": "[0, 2]", "beta": "[0, 2]", "nu": "[0, 1]"},
    runtime=("num_classes", "miner"),
    search={
        "lambda": {"uniform": [0.2, 0.8], "start": 0.5},
        "margin": {"uniform": [0.05, 0.4], "start": 0.2},
        "beta": {"uniform": [0.8, 1.4], "start": 1.2},
        "nu": {"uniform": [0.0, 0.1], "start": 0.0},
        "beta_per_class": {"choice": [False, True]},
    },
)
class MarginLoss(BaseLoss):
    """Margin loss on Euclidean distances of unit embeddings, with a learnable boundary ``beta``.

    For a pair ``(i, j)`` with ``y_ij = +1`` (same class) or ``-1`` (different classes) and
    ``D_ij = |e_i - e_j|`` (Wu et al., eq. 4, ``alpha`` = ``margin``)::

        l(i, j) = [margin + y_ij (D_ij - beta_{c(i)})]+

    ``beta`` is one learnable scalar (``beta_per_class=false``, the paper's ``beta^(0)``) or one per
    class, indexed by the anchor's class (``beta^(class)``); ``beta`` is its initial value. Terms:

    - ``pos`` = ``sum_{positive pairs} [margin + D_ij - beta]+ / Z``: pull positives inside
      ``beta - margin``;
    - ``neg`` = ``sum_{negative pairs} [margin - D_ij + beta]+ / Z``: push negatives beyond
      ``beta + margin``;
    - ``beta_reg``: the paper's ``nu (beta^(0) + beta^(class))`` term, which favours a tight
      boundary, scaled as pytorch-metric-learning's ``MarginLoss``: ``beta`` itself when global
      (``beta_per_class=false``), and with one ``beta`` per class the sum of the anchor's
      ``beta_{c(a)}`` over the positive pairs ``(a, p)`` (one per triplet), divided by the same
      ``Z`` as ``pos`` and ``neg``: ``sum_{(a, p)} beta_{c(a)} / Z`` (0 where ``Z = 0``). A batch
      without pairs has ``beta_reg = 0``, as in pml.

    ``total = 2 lambda pos + 2 (1 - lambda) neg + nu beta_reg``, so ``lambda = 0.5`` is the
    paper's loss. ``Z`` is shared by both terms so that ``lambda`` alone sets their balance:
    the number of non-zero pair losses (``reduction="active"``, as pytorch-metric-learning's
    ``MarginLoss``) or of all pairs (``"all"``).

    Pairs: with a triplet miner (default ``distance_weighted``, the paper's sampler) each triplet
    ``(a, p, n)`` gives the positive pair ``(a, p)`` and the negative pair ``(a, n)``; a pair miner
    gives its pairs; without a miner every ordered pair of the batch is used.

    Follows: Wu et al. 2017, Eq. 4 with its ``nu (beta^(0) + beta^(class))`` regulariser, scaled as
    pytorch-metric-learning 2.9's ``MarginLoss`` (``compute_reg_loss``). Differs: with a pair miner
    or without a miner the pairs are used as given (pml makes every triplet of a positive and a
    negative pair that share their anchor), so there the per-class ``beta_reg`` sums over the
    positive pairs.

    Parameters: ``lambda`` in [0, 1] (0.5); ``margin`` (``alpha``) in [0, 2] (0.2); ``beta``
    initial boundary in [0, 2] (1.2); ``nu`` in [0, 1] (0, as pytorch-metric-learning; the paper
    does not fix it); ``beta_per_class`` (false); ``learn_beta`` (true: ``beta`` is trained with
    ``proxy_lr``); ``reduction`` ``active`` or ``all``.
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "neg", "beta_reg")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "neg", "pull positive pairs inside beta - alpha", "push negative pairs beyond beta + alpha"
    )
    miner_outputs: ClassVar[tuple[str, ...]] = ("triplets", "pairs")
    default_miner: ClassVar[str | None] = "distance_weighted"

    def __init__(
        self,
        *,
        num_classes: int,
        lam: float = 0.5,
        margin: float = 0.2,
        beta: float = 1.2,
        nu: float = 0.0,
        beta_per_class: bool = False,
        learn_beta: bool = True,
        reduction: Literal["active", "all"] = "active",
        miner: Any = None,
    ) -> None:
        super().__init__()
        self.lam = lam
        self.margin = margin
        self.nu = nu
        self.beta_per_class = beta_per_class
        self.reduction = reduction
        self.miner = miner
        init = torch.full((num_classes if beta_per_class else 1,), float(beta))
        if learn_beta:
            self.beta = torch.nn.Parameter(init)
        else:
            self.register_buffer("beta", init)

    def weights(self) -> dict[str, float]:
        return {**super().weights(), "beta_reg": self.nu}

    def _pairs(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(anchor, positive, anchor, negative)`` index tensors of the pairs the loss sums over."""
        if self.miner is None:
            pos, neg = pair_masks(labels)
            a1, p = torch.nonzero(pos, as_tuple=True)
            a2, n = torch.nonzero(neg, as_tuple=True)
            return a1, p, a2, n
        mined = self.miner(embeddings, labels)
        if len(mined) == 3:
            a, p, n = mined
            return a, p, a, n
        return mined

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        a1, p, a2, n = self._pairs(embeddings, labels)
        beta = self.beta.to(embeddings.dtype)
        if self.beta_per_class:
            beta_pos, beta_neg = beta[labels[a1]], beta[labels[a2]]
        else:
            beta_pos = beta_neg = beta[0]
        if len(a1) + len(a2) == 0:  # no pairs: every term 0 (pml: zero_losses), still connected to beta
            zero = zero_like_graph(embeddings) + 0 * beta.sum()
            return self.combine({"pos": zero, "neg": zero.clone(), "beta_reg": zero.clone()})
        dist = euclidean_distance(embeddings)
        pos_losses = torch.relu(self.margin + dist[a1, p] - beta_pos)
        neg_losses = torch.relu(self.margin - dist[a2, n] + beta_neg)
        if self.reduction == "all":
            count = len(pos_losses) + len(neg_losses)
        else:
            count = int((pos_losses > 0).sum() + (neg_losses > 0).sum())
        if self.beta_per_class:  # pml: nu beta_{c(a)} per triplet, summed and divided by Z
            beta_reg = beta_pos.sum() / count if count > 0 else 0.0 * beta_pos.sum()
        else:  # pml: nu beta, already reduced
            beta_reg = beta[0]
        if count == 0:  # every pair satisfies its margin: zero, still connected to beta
            zero = pos_losses.sum() * 0.0 + neg_losses.sum() * 0.0
            return self.combine({"pos": zero, "neg": zero.clone(), "beta_reg": beta_reg})
        return self.combine(
            {"pos": pos_losses.sum() / count, "neg": neg_losses.sum() / count, "beta_reg": beta_reg}
        )
