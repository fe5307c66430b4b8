"""In-batch miners: which triplets or pairs of a batch a loss looks at (the contract, and the
two output kinds, are :class:`~tuneddml.sampling.base.Miner`'s)."""

from __future__ import annotations

from typing import ClassVar

import torch

from tuneddml.sampling import MINERS
from tuneddml.sampling.base import Miner
from tuneddml.similarity import pair_masks, similarity

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _triplet_mask(labels: torch.Tensor) -> torch.Tensor:
    """``valid[a, p, n]``: ``p`` a positive and ``n`` a negative of ``a``."""
    pos, neg = pair_masks(labels)
    return pos[:, :, None] & neg[:, None, :]


@MINERS.register("all_triplets")
class AllTriplets(Miner):
    """Every triplet ``(a, p, n)`` of the batch.

    Follows: no paper: every valid triplet (pytorch-metric-learning's ``TripletMarginMiner`` with
    ``type_of_triplets="all"`` and no margin).
    """

    output: ClassVar[str] = "triplets"

    def __init__(self) -> None:  # no parameters (the registry reads them from __init__)
        pass

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n = torch.nonzero(_triplet_mask(labels), as_tuple=True)
        return a, p, n


@MINERS.register("semihard", ranges={"margin": "(0, 2]"})
class SemiHard(Miner):
    """Semi-hard triplets (FaceNet): negatives less similar than the positive, by under ``margin``.

    Schroff et al., CVPR 2015: ``s_ap - margin < s_an < s_ap``.

    All such triplets of the batch are returned (as pytorch-metric-learning's
    ``TripletMarginMiner(type_of_triplets="semihard")``). ``margin`` should match the triplet
    loss's (both default to 0.1): these are the triplets with a non-zero loss that are not hard.

    Follows: Schroff et al. 2015, semi-hard negatives, as pytorch-metric-learning's
    ``TripletMarginMiner(type_of_triplets="semihard")`` (tested). As published.
    """

    output: ClassVar[str] = "triplets"

    def __init__(self, *, margin: float = 0.1) -> None:
        self.margin = margin

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        s = similarity(embeddings.detach())
        s_ap = s[:, :, None]
        s_an = s[:, None, :]
        keep = _triplet_mask(labels) & (s_an < s_ap) & (s_an > s_ap - self.margin)
        a, p, n = torch.nonzero(keep, as_tuple=True)
        return a, p, n


@MINERS.register("hard")
class BatchHard(Miner):
    """Batch-hard triplets: per anchor, its least similar positive and most similar negative.

    Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017. Anchors without a positive or
    a negative in the batch are skipped.

    Follows: Hermans, Beyer & Leibe 2017, batch hard (hardest positive and negative per anchor), as
    pytorch-metric-learning's ``BatchHardMiner`` (tested). As published.
    """

    output: ClassVar[str] = "triplets"

    def __init__(self) -> None:
        pass

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        s = similarity(embeddings.detach())
        pos, neg = pair_masks(labels)
        anchors = torch.nonzero(pos.any(dim=1) & neg.any(dim=1), as_tuple=True)[0]
        p = s.masked_fill(~pos, float("inf")).argmin(dim=1)
        n = s.masked_fill(~neg, float("-inf")).argmax(dim=1)
        return anchors, p[anchors], n[anchors]


@MINERS.register("multi_similarity", ranges={"epsilon": "[0, 2]"})
class MultiSimilarityMiner(Miner):
    """Multi-similarity pair mining (Wang et al., CVPR 2019): pairs hard relative to the other kind.

    - a negative pair ``(i, n)`` is kept if ``s_in > min_{p in P(i)} s_ip - epsilon``;
    - a positive pair ``(i, p)`` is kept if ``s_ip < max_{n in N(i)} s_in + epsilon``.

    An anchor without positives keeps no negative pair, one without negatives no positive pair.

    Follows: Wang et al. 2019, the pair mining with ``epsilon``, as pytorch-metric-learning's
    ``MultiSimilarityMiner`` (tested). As published.
    """

    output: ClassVar[str] = "pairs"

    def __init__(self, *, epsilon: float = 0.1) -> None:
        self.epsilon = epsilon

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs:
        s = similarity(embeddings.detach())
        pos, neg = pair_masks(labels)
        hardest_pos = s.masked_fill(~pos, float("inf")).min(dim=1, keepdim=True).values
        hardest_neg = s.masked_fill(~neg, float("-inf")).max(dim=1, keepdim=True).values
        keep_pos = pos & (s < hardest_neg + self.epsilon)
        keep_neg = neg & (s > hardest_pos - self.epsilon)
        a1, p = torch.nonzero(keep_pos, as_tuple=True)
        a2, n = torch.nonzero(keep_neg, as_tuple=True)
        return a1, p, a2, n
