"""Margin loss (Wu et al. 2017): hand-computed pairs and pytorch-metric-learning agreement."""

from __future__ import annotations

import math

import pytest
import torch
from handcalc import pairs, pk_batch, small_batch, triplets

from tuneddml.losses import build_loss
from tuneddml.losses.margin import MarginLoss


class FixedMiner:
    """Returns the given indices whatever the batch (to feed the loss known pairs/triplets)."""

    def __init__(self, indices):
        self.indices = tuple(torch.as_tensor(i, dtype=torch.long) for i in indices)

    def __call__(self, embeddings, labels):
        return self.indices


def _dist(u: list[float], v: list[float]) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def _by_hand(e, labels, pos_pairs, neg_pairs, margin, beta, reduction):
    """Sum of pair losses over the listed pairs, divided as the loss says; beta[c] per class."""
    rows, y = e.tolist(), labels.tolist()
    pos = [max(0.0, margin + _dist(rows[i], rows[j]) - beta[y[i]]) for i, j in pos_pairs]
    neg = [max(0.0, margin - _dist(rows[i], rows[j]) + beta[y[i]]) for i, j in neg_pairs]
    count = len(pos) + len(neg) if reduction == "all" else sum(v > 0 for v in pos + neg)
    return sum(pos) / count, sum(neg) / count, count


@pytest.mark.parametrize("reduction", ["active", "all"])
@pytest.mark.parametrize("per_class", [False, True])
def test_all_pairs_match_a_hand_computation(reduction, per_class):
    e, labels = small_batch()
    loss = MarginLoss(
        num_classes=3, lam=0.3, margin=0.2, beta=1.0, nu=0.1, beta_per_class=per_class, reduction=reduction
    ).double()
    if per_class:
        loss.beta.data = torch.tensor([0.9, 1.1, 1.3], dtype=torch.float64)
    beta = loss.beta.tolist() * (3 if not per_class else 1)
    pos_pairs, neg_pairs = pairs(labels)
    want_pos, want_neg, count = _by_hand(e, labels, pos_pairs, neg_pairs, 0.2, beta, reduction)
    y = labels.tolist()
    # per class: the anchor's beta of every positive pair, over the pair losses' divisor (as pml)
    want_reg = sum(beta[y[i]] for i, _ in pos_pairs) / count if per_class else beta[0]
    out = loss(e, labels)
    assert out["pos"].item() == pytest.approx(want_pos, rel=1e-12)
    assert out["neg"].item() == pytest.approx(want_neg, rel=1e-12)
    assert out["beta_reg"].item() == pytest.approx(want_reg, rel=1e-12)
    assert out["total"].item() == pytest.approx(0.6 * want_pos + 1.4 * want_neg + 0.1 * want_reg, rel=1e-12)


def test_triplets_and_pairs_from_a_miner():
    e, labels = small_batch()
    trip = triplets(labels)[::3]
    a, p, n = zip(*trip)
    loss = MarginLoss(num_classes=3, miner=FixedMiner((a, p, n))).double()
    beta = loss.beta.tolist() * 3
    want_pos, want_neg, _ = _by_hand(e, labels, list(zip(a, p)), list(zip(a, n)), 0.2, beta, "active")
    out = loss(e, labels)
    assert out["pos"].item() == pytest.approx(want_pos, rel=1e-12)
    assert out["neg"].item() == pytest.approx(want_neg, rel=1e-12)

    pos_pairs, neg_pairs = pairs(labels)
    pos_pairs, neg_pairs = pos_pairs[:4], neg_pairs[::5]
    a1, p1 = zip(*pos_pairs)
    a2, n2 = zip(*neg_pairs)
    loss = MarginLoss(num_classes=3, miner=FixedMiner((a1, p1, a2, n2))).double()
    want_pos, want_neg, _ = _by_hand(e, labels, pos_pairs, neg_pairs, 0.2, beta, "active")
    out = loss(e, labels)
    assert out["pos"].item() == pytest.approx(want_pos, rel=1e-12)
    assert out["neg"].item() == pytest.approx(want_neg, rel=1e-12)


@pytest.mark.parametrize("nu", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("per_class", [False, True])
def test_agrees_with_pytorch_metric_learning(per_class, nu):
    """The whole total, beta regulariser included, at nu > 0 with one beta or one per class."""
    from pytorch_metric_learning.losses import MarginLoss as PMLMarginLoss

    e, labels = pk_batch(seed=3, classes=4, per_class=3, dim=8)
    e = e.double()
    trip = tuple(torch.tensor(t) for t in zip(*triplets(labels)))
    ours = MarginLoss(
        num_classes=4, margin=0.15, beta=1.1, nu=nu, beta_per_class=per_class, miner=FixedMiner(trip)
    ).double()
    theirs = PMLMarginLoss(
        margin=0.15, beta=1.1, nu=nu, learn_beta=True, num_classes=4 if per_class else None
    )
    if per_class:
        values = torch.tensor([1.0, 1.05, 1.2, 1.3], dtype=torch.float64)
        ours.beta.data = values.clone()
        theirs.beta.data = values.clone()
    ref = theirs(e, labels, indices_tuple=trip)
    got = ours(e, labels)["total"]
    assert got.item() == pytest.approx(ref.item(), abs=1e-9)
    # and the gradient pml gives beta
    ref.backward()
    got.backward()
    assert torch.allclose(ours.beta.grad, theirs.beta.grad.to(ours.beta.grad.dtype), atol=1e-9)


def test_beta_learns_and_can_be_frozen():
    e, labels = pk_batch(seed=1)
    loss = MarginLoss(num_classes=4, beta_per_class=True)
    loss(e, labels)["total"].backward()
    assert loss.beta.grad is not None and loss.beta.grad.abs().sum() > 0
    frozen = MarginLoss(num_classes=4, learn_beta=False)
    assert list(frozen.parameters()) == [] and frozen.beta.shape == (1,)


def test_all_margins_met_gives_a_connected_zero():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]]), dim=1)
    e.requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = MarginLoss(num_classes=2, margin=0.1, beta=1.0)
    out = loss(e, labels)
    assert out["pos"].item() == 0.0 and out["neg"].item() == 0.0
    out["total"].backward()
    assert torch.isfinite(e.grad).all()


def test_default_miner_is_distance_weighted():
    from tuneddml.sampling.distance_weighted import DistanceWeightedMiner

    loss = build_loss("margin", num_classes=4, embedding_size=8)
    assert isinstance(loss.miner, DistanceWeightedMiner)
    assert build_loss("margin", num_classes=4, embedding_size=8, miner="none").miner is None
    per_class = build_loss("margin", {"beta_per_class": True, "beta": 0.9}, num_classes=5, embedding_size=8)
    assert per_class.beta.shape == (5,) and per_class.beta[0].item() == pytest.approx(0.9)
