"""Contrastive margin loss (Hadsell, Chopra & LeCun, CVPR 2006) in the balanced form of Sors et al.
(2021, arXiv 2112.11743)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses._pairs import masks_from_pairs, pair_masks, reduce, similarity
from tuneddml.losses.base import BaseLoss


@LOSSES.register(
    "contrastive",
    ranges={"lam": "[0, 1]", "pos_margin": "[-1, 1]", "neg_margin": "[-1, 1]"},
    runtime=("miner",),
)
class ContrastiveLoss(BaseLoss):
    """Contrastive margin loss on cosine similarity, with its two terms balanced by ``lambda``.

    Terms (``s_ij`` cosine similarity, ``[x]+ = max(0, x)``):

    - ``pos`` = mean over positive pairs ``(i, j)`` of ``[pos_margin - s_ij]+`` (pull positives
      until their similarity reaches ``pos_margin``);
    - ``neg`` = mean over negative pairs of ``[s_ij - neg_margin]+`` (push negatives below
      ``neg_margin``).

    ``total = lambda * pos + (1 - lambda) * neg``. The pairs are all pairs of the batch, or those a
    pair miner chose. ``reduction`` says what each mean divides by: ``"active"`` (the default)
    the number of pairs whose term is non-zero, as pytorch-metric-learning's ``AvgNonZeroReducer``
    (the gradient does not fade as pairs satisfy their margin, which trains better); ``"all"``
    the number of pairs, the form written in Sors et al. The balance of the two terms, hidden in
    the margins in the usual form, is ``lambda`` here.
    """

    term_names: ClassVar[tuple[str, ...]] = ("pos", "neg")
    miner_outputs: ClassVar[tuple[str, ...]] = ("pairs",)
    default_miner: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        lam: float = 0.5,
        pos_margin: float = 0.8,
        neg_margin: float = 0.3,
        reduction: Literal["active", "all"] = "active",
        miner: Any = None,
    ) -> None:
        super().__init__()
        self.lam = lam
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.reduction = reduction
        self.miner = miner

    def weights(self) -> dict[str, float]:
        return {"pos": self.lam, "neg": 1.0 - self.lam}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        s = similarity(embeddings)
        if self.miner is None:
            pos_mask, neg_mask = pair_masks(labels)
        else:
            pos_mask, neg_mask = masks_from_pairs(self.miner(embeddings, labels), len(labels), s.device)
        pos = reduce(torch.relu(self.pos_margin - s), pos_mask, self.reduction)
        neg = reduce(torch.relu(s - self.neg_margin), neg_mask, self.reduction)
        return self.combine({"pos": pos, "neg": neg})
