from __future__ import annotations

import pytest
import torch
from handcalc import cos_table, pairs, small_batch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.reducers import MeanReducer

from tuneddml.losses import build_loss
from tuneddml.losses.contrastive import ContrastiveLoss


def hand(e, labels, pos_margin, neg_margin, aggregation, chosen=None):
    """``(pos, neg)`` by loops over the listed ordered pairs."""
    s = cos_table(e)
    pos_pairs, neg_pairs = chosen or pairs(labels)
    pos_l = [(i, max(0.0, pos_margin - s[i][j])) for i, j in pos_pairs]
    neg_l = [(i, max(0.0, s[i][j] - neg_margin)) for i, j in neg_pairs]

    def mean(xs):
        return sum(xs) / len(xs) if xs else 0.0

    def term(elements, per_anchor):
        values = [v for _, v in elements]
        if aggregation == "all":
            return mean(values)
        if aggregation == "nonzero":
            return mean([v for v in values if v > 0])
        anchors = sorted({i for i, _ in elements})
        rows = [[v for i, v in elements if i == a] for a in anchors]
        return mean([sum(r) if per_anchor == "sum" else mean(r) for r in rows])

    return term(pos_l, "mean"), term(neg_l, "sum")


@pytest.mark.parametrize("aggregation", ["nonzero", "all", "anchor_sum"])
@pytest.mark.parametrize("lam", [0.5, 0.2])
def test_matches_hand_computation(aggregation, lam):
    e, labels = small_batch()  # sample 5 is a singleton: an anchor of negatives only
    loss = ContrastiveLoss(lam=lam, pos_margin=0.6, neg_margin=-0.1, aggregation=aggregation)
    out = loss(e, labels)
    pos, neg = hand(e, labels, 0.6, -0.1, aggregation)
    assert 0 < pos and 0 < neg
    assert out["pos"].item() == pytest.approx(pos, abs=1e-12)
    assert out["neg"].item() == pytest.approx(neg, abs=1e-12)
    assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * neg, abs=1e-12)


def test_the_three_aggregations_differ_on_one_batch():
    e, labels = small_batch()
    negs = {
        a: ContrastiveLoss(pos_margin=0.6, neg_margin=-0.1, aggregation=a)(e, labels)["neg"].item()
        for a in ("nonzero", "all", "anchor_sum")
    }
    assert len({round(v, 9) for v in negs.values()}) == 3, negs


def test_nonzero_aggregation_skips_satisfied_pairs():
    e, labels = small_batch()
    active = ContrastiveLoss(pos_margin=0.6, neg_margin=-0.1, aggregation="nonzero")(e, labels)
    every = ContrastiveLoss(pos_margin=0.6, neg_margin=-0.1, aggregation="all")(e, labels)
    # some negative pairs are below the margin, so dividing by fewer pairs gives a larger mean
    assert active["neg"].item() > every["neg"].item()


class _FixedPairs:
    output = "pairs"

    def __init__(self, a1, p, a2, n):
        self.pairs = tuple(torch.tensor(x) for x in (a1, p, a2, n))

    def __call__(self, embeddings, labels):
        return self.pairs


def test_uses_only_mined_pairs():
    e, labels = small_batch()
    miner = _FixedPairs([0, 2], [1, 4], [0, 3, 5], [2, 5, 1])
    out = ContrastiveLoss(pos_margin=0.9, neg_margin=-0.5, aggregation="all", miner=miner)(e, labels)
    pos, neg = hand(e, labels, 0.9, -0.5, "all", chosen=([(0, 1), (2, 4)], [(0, 2), (3, 5), (5, 1)]))
    assert out["pos"].item() == pytest.approx(pos, abs=1e-12)
    assert out["neg"].item() == pytest.approx(neg, abs=1e-12)


@pytest.mark.parametrize("reduction", ["nonzero", "all"])
def test_matches_pytorch_metric_learning(reduction):
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    labels = torch.arange(4).repeat_interleave(4)
    ours = ContrastiveLoss(lam=0.5, pos_margin=0.7, neg_margin=0.1, aggregation=reduction)(e, labels)
    kwargs = {} if reduction == "nonzero" else {"reducer": MeanReducer()}
    pml = pml_losses.ContrastiveLoss(pos_margin=0.7, neg_margin=0.1, distance=CosineSimilarity(), **kwargs)
    # PML sums its two sub-losses: pos + neg = total at lambda = 0.5
    assert ours["total"].item() == pytest.approx(pml(e, labels).item(), abs=1e-5)


def test_lambda_extremes_keep_one_term():
    e, labels = small_batch()
    only_pos = build_loss("contrastive", {"lambda": 1.0}, num_classes=3, embedding_size=4)(e, labels)
    only_neg = build_loss("contrastive", {"lambda": 0.0}, num_classes=3, embedding_size=4)(e, labels)
    assert only_pos["total"].item() == pytest.approx(2 * only_pos["pos"].item())
    assert only_neg["total"].item() == pytest.approx(2 * only_neg["neg"].item())
