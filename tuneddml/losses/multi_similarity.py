"""Multi-similarity loss (Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning", CVPR 2019)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import masked_logsumexp, masks_from_pairs, pair_masks, similarity


@LOSSES.register(
    "multi_similarity",
    ranges={"lam": "[0, 1]", "alpha": "(0, inf)", "beta": "(0, inf)", "threshold": "[-1, 1]"},
    runtime=("miner",),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "threshold": {"uniform": [0.2, 0.8], "start": 0.5},
        "alpha": {"loguniform": [0.5, 8.0], "start": 2.0},
        "beta": {"loguniform": [10, 80], "start": 50},
    },
)
class MultiSimilarityLoss(BaseLoss):
    """Multi-similarity loss with its positive and negative parts balanced by ``lambda``.

    Terms, means over every anchor ``i`` of the batch (``threshold`` is the paper's threshold
    ``lambda``, renamed so as not to clash with the balance):

    - ``pos`` = ``mean_i 1/alpha * log(1 + sum_{p in P(i)} exp(-alpha (s_ip - threshold)))``;
    - ``neg`` = ``mean_i 1/beta * log(1 + sum_{n in N(i)} exp(beta (s_in - threshold)))``.

    ``total = 2 lambda * pos + 2 (1 - lambda) * neg``, so ``lambda = 0.5`` is the paper's loss.
    ``P(i)``, ``N(i)`` are the pairs the multi-similarity miner kept (the default; every pair of
    the batch with ``miner=none``); an anchor left without pairs adds ``log(1) = 0``.
    Defaults are the paper's (``alpha = 2``, ``beta = 50``, ``threshold = 0.5``). pml calls the
    threshold ``base``; here ``base`` is a wrapper's base loss (``ccp``, ``lsd``), so it is renamed.

    Follows: Wang et al. 2019 loss with its pair miner, as pytorch-metric-learning's
    ``MultiSimilarityLoss`` + ``MultiSimilarityMiner`` (tested against them). As published at ``lambda =
    0.5``.
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "neg")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "neg", "pull positives above the threshold", "push negatives below the threshold"
    )
    miner_outputs: ClassVar[tuple[str, ...]] = ("pairs",)
    default_miner: ClassVar[str | None] = "multi_similarity"

    def __init__(
        self,
        *,
        lam: float = 0.5,
        alpha: float = 2.0,
        beta: float = 50.0,
        threshold: float = 0.5,
        miner: Any = None,
    ) -> None:
        super().__init__()
        self.lam = lam
        self.alpha = alpha
        self.beta = beta
        self.threshold = threshold
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        s = similarity(embeddings)
        if self.miner is None:
            pos_mask, neg_mask = pair_masks(labels)
        else:
            pos_mask, neg_mask = masks_from_pairs(self.miner(embeddings, labels), len(labels), s.device)
        pos = masked_logsumexp(-self.alpha * (s - self.threshold), pos_mask, dim=1, add_one=True) / self.alpha
        neg = masked_logsumexp(self.beta * (s - self.threshold), neg_mask, dim=1, add_one=True) / self.beta
        return self.combine({"pos": pos.mean(), "neg": neg.mean()})
