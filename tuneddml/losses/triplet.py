"""Triplet margin loss (Weinberger & Saul 2009; Schroff et al., FaceNet, CVPR 2015) on cosine
similarity, with triplet mining."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss, Family
from tuneddml.similarity import all_triplets, similarity, zero_like_graph


@LOSSES.register(
    "triplet",
    ranges={"margin": "[0, 2]"},
    runtime=("miner",),
    search={
        "margin": {"uniform": [0.02, 0.5], "start": 0.1},
    },
)
class TripletLoss(BaseLoss):
    """Triplet margin loss on cosine similarity, over mined triplets (semi-hard by default).

    For each triplet ``(a, p, n)`` (``p`` a positive, ``n`` a negative of the anchor ``a``):
    ``[s_an - s_ap + margin]+``.

    Term ``triplet``: the mean of that over the triplets the miner chose (``semihard`` by
    default; ``hard`` for batch-hard; every triplet of the batch with ``miner=none``). The mean
    divides by the number of triplets with a non-zero loss (``reduction="active"``, as
    pytorch-metric-learning's ``AvgNonZeroReducer``) or by all of them (``"all"``). No balance
    weight: the loss has a single term (the margin sets how hard it pushes).

    Follows: Schroff et al. 2015, the triplet loss on cosine similarity, as pytorch-metric-learning's
    ``TripletMarginLoss`` with ``AvgNonZeroReducer`` (tested with all and semi-hard triplets). As
    published (in pml's cosine form).
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("triplet",)
    miner_outputs: ClassVar[tuple[str, ...]] = ("triplets",)
    default_miner: ClassVar[str | None] = "semihard"

    def __init__(
        self, *, margin: float = 0.1, reduction: Literal["active", "all"] = "active", miner: Any = None
    ) -> None:
        super().__init__()
        self.margin = margin
        self.reduction = reduction
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        a, p, n = all_triplets(labels) if self.miner is None else self.miner(embeddings, labels)
        if len(a) == 0:
            return self.combine({"triplet": zero_like_graph(embeddings)})
        s = similarity(embeddings)
        losses = torch.relu(s[a, n] - s[a, p] + self.margin)
        count = len(losses) if self.reduction == "all" else int((losses > 0).sum())
        term = losses.sum() / count if count else losses.sum() * 0.0
        return self.combine({"triplet": term})
