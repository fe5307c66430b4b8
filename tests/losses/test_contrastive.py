from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from handcalc import cos_table, pairs, pk_batch, small_batch
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
def test_matches_hand_computation(aggregation):
    e, labels = small_batch()  # sample 5 is a singleton: an anchor of negatives only
    out = ContrastiveLoss(pos_margin=0.6, neg_margin=-0.1, aggregation=aggregation)(e, labels)
    pos, neg = hand(e, labels, 0.6, -0.1, aggregation)
    assert 0 < pos and 0 < neg
    assert out["pos"].item() == pytest.approx(pos, abs=1e-12)
    assert out["neg"].item() == pytest.approx(neg, abs=1e-12)


def per_pair_total(e, labels, lam, pos_margin, neg_margin, aggregation):
    """``total`` as one weighted sum over the ordered pairs of the batch (numpy): each pair's
    hinge times the share of the balance the documented aggregation gives it, e.g. under
    ``"anchor_sum"`` a negative pair ``(i, j)`` weighs ``2 (1 - lambda) / #anchors with a
    negative`` and a positive pair ``2 lambda / (#anchors with a positive * #P(i))``."""
    x = e.numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    y = labels.numpy()
    positive = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    negative = y[:, None] != y[None, :]
    hinge_p = np.maximum(pos_margin - s, 0.0) * positive
    hinge_n = np.maximum(s - neg_margin, 0.0) * negative

    def share(mask, hinge, per_anchor):
        if aggregation == "all":
            return mask / mask.sum()
        if aggregation == "nonzero":
            return (hinge > 0) / max((hinge > 0).sum(), 1)
        anchors = mask.any(axis=1).sum()
        per_row = mask.sum(axis=1, keepdims=True) if per_anchor == "mean" else np.ones((len(y), 1))
        return mask / np.maximum(per_row, 1) / anchors

    w_pos = 2 * lam * share(positive, hinge_p, "mean")
    w_neg = 2 * (1 - lam) * share(negative, hinge_n, "sum")
    return float((w_pos * hinge_p).sum() + (w_neg * hinge_n).sum())


@pytest.mark.parametrize("aggregation", ["nonzero", "all", "anchor_sum"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_total_is_the_per_pair_weighted_sum(aggregation, lam):
    # small_batch with wide margins: every hinge is active; a 4 x 4 batch at the default margins
    # (0.8 / 0.3): some pairs already satisfy theirs, so "nonzero" and "all" divide by different counts
    batches = [(small_batch(), 0.6, -0.1), (pk_batch(seed=2, dim=3), 0.8, 0.3)]
    for (e, labels), pos_margin, neg_margin in batches:
        e = torch.nn.functional.normalize(e.double(), dim=1)
        loss = build_loss(
            "contrastive",
            {"lambda": lam, "pos_margin": pos_margin, "neg_margin": neg_margin, "aggregation": aggregation},
            num_classes=4,
            embedding_size=e.shape[1],
        )
        expected = per_pair_total(e, labels, lam, pos_margin, neg_margin, aggregation)
        assert loss(e, labels)["total"].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


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


def _clustered_batch(batch_size, seed, k=4, dim=32, noise=0.2):
    """``batch_size / k`` random unit class centres, ``k`` noisy unit samples of each (seeded):
    positive pairs at cosine about 0.45, negatives about 0 +- 0.18, a few percent of them above
    the negative margin 0.3 -- roughly where a briefly trained model's embeddings are."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(
        torch.randn(batch_size // k, dim, generator=g, dtype=torch.float64), dim=1
    )
    labels = torch.arange(batch_size // k).repeat_interleave(k)
    noisy = centres[labels] + noise * torch.randn(batch_size, dim, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(noisy, dim=1), labels


def _gradient_ratio(e, labels, aggregation):
    """``||d neg / d e|| / ||d pos / d e||`` (Frobenius norms over the whole batch)."""
    e = e.clone().requires_grad_(True)
    out = ContrastiveLoss(pos_margin=0.8, neg_margin=0.3, aggregation=aggregation)(e, labels)
    (d_pos,) = torch.autograd.grad(out["pos"], e, retain_graph=True)
    (d_neg,) = torch.autograd.grad(out["neg"], e)
    return (d_neg.norm() / d_pos.norm()).item()


def _mean_ratio(batch_size, seed, aggregation, samples=256):
    """The ratio averaged over ``samples / batch_size`` batches: every batch size sees the same
    256 samples' worth of batches (one batch of 32 has few active pairs, hence a noisy ratio)."""
    repeats = samples // batch_size
    return (
        sum(
            _gradient_ratio(*_clustered_batch(batch_size, 1000 * seed + r), aggregation)
            for r in range(repeats)
        )
        / repeats
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_gradient_grows_with_batch_size_only_under_anchor_sum(seed):
    sizes = (32, 64, 128, 256)
    ratios = {a: [_mean_ratio(n, seed, a) for n in sizes] for a in ("nonzero", "all", "anchor_sum")}
    # anchor_sum sums over an anchor's negatives, whose number grows with the batch: measured
    # 32 -> 256 growth x4.0-x4.8 on seeds 0-2 (x3.5-x5.3 on seeds 0-19, rising at every doubling
    # on all 20), so the bound x2 passes with a margin of about 2x
    grows = ratios["anchor_sum"]
    assert all(b > a for a, b in itertools.pairwise(grows)), grows
    assert grows[-1] / grows[0] > 2.0, grows
    # the two means divide by a count that grows like the number of pairs: the ratio falls,
    # measured 32 -> 256 x0.43-x0.47 (nonzero, falling at every doubling) and x0.44-x0.53 (all) on
    # seeds 0-2; at most x0.51 / x0.59 on seeds 0-19, against the bound x0.75
    # (on real glyphs embeddings the two means are nearly flat instead, x0.88 / x1.08 from batch 32 to
    # 256, bench/RESULTS.md: only anchor_sum's growth carries over)
    falls = ratios["nonzero"]
    assert all(b < a for a, b in itertools.pairwise(falls)), falls
    for aggregation in ("nonzero", "all"):
        falls = ratios[aggregation]
        assert falls[-1] / falls[0] < 0.75, (aggregation, falls)
