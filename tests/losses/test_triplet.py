from __future__ import annotations

import pytest
import torch
from handcalc import cos_table, pk_batch, small_batch, triplets
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.reducers import MeanReducer

from tuneddml.losses import build_loss
from tuneddml.losses.triplet import TripletLoss
from tuneddml.sampling.miners import SemiHard


def hand(e, chosen, margin, reduction):
    s = cos_table(e)
    losses = [max(0.0, s[a][n] - s[a][p] + margin) for a, p, n in chosen]
    if reduction == "active":
        losses = [x for x in losses if x > 0]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("reduction", ["active", "all"])
def test_all_triplets_match_hand_computation(reduction):
    e, labels = small_batch()
    listed = triplets(labels)
    assert len(listed) == 2 * 4 + 6 * 3  # class 0: 2 (a, p) x 4 negatives; class 1: 6 x 3
    out = TripletLoss(margin=0.3, reduction=reduction)(e, labels)
    assert out["triplet"].item() == pytest.approx(hand(e, listed, 0.3, reduction), abs=1e-12)
    assert out["total"].item() == out["triplet"].item()


class _Fixed:
    output = "triplets"

    def __init__(self, listed):
        self.listed = tuple(torch.tensor(x) for x in zip(*listed))

    def __call__(self, embeddings, labels):
        return self.listed


def test_uses_only_mined_triplets():
    e, labels = small_batch()
    listed = [(0, 1, 2), (2, 3, 5), (4, 2, 0), (3, 4, 1)]
    out = TripletLoss(margin=0.5, reduction="all", miner=_Fixed(listed))(e, labels)
    assert out["triplet"].item() == pytest.approx(hand(e, listed, 0.5, "all"), abs=1e-12)


@pytest.mark.parametrize("reduction", ["active", "all"])
def test_matches_pytorch_metric_learning_on_all_triplets(reduction):
    e, labels = pk_batch(seed=1, dim=8)
    ours = TripletLoss(margin=0.2, reduction=reduction)(e, labels)
    kwargs = {} if reduction == "active" else {"reducer": MeanReducer()}
    pml = pml_losses.TripletMarginLoss(margin=0.2, distance=CosineSimilarity(), **kwargs)(e, labels)
    assert ours["triplet"].item() == pytest.approx(pml.item(), abs=1e-5)


def test_matches_pytorch_metric_learning_on_semihard_triplets():
    e, labels = pk_batch(seed=2, dim=8)
    miner = SemiHard(margin=0.2)
    mined = miner(e, labels)
    assert len(mined[0]) > 0
    ours = TripletLoss(margin=0.2, miner=miner)(e, labels)
    pml = pml_losses.TripletMarginLoss(margin=0.2, distance=CosineSimilarity())(e, labels, mined)
    assert ours["triplet"].item() == pytest.approx(pml.item(), abs=1e-5)


def test_default_miner_is_semihard_and_no_triplets_give_zero():
    loss = build_loss("triplet", num_classes=4, embedding_size=4)
    assert isinstance(loss.miner, SemiHard)
    # positives identical, negatives opposite: no semi-hard triplet, the loss is a connected zero
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    out = loss(e, torch.tensor([0, 0, 1, 1]))
    out["total"].backward()
    assert out["total"].item() == 0.0 and torch.equal(e.grad, torch.zeros_like(e))
