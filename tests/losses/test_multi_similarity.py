from __future__ import annotations

import math

import pytest
import torch
from handcalc import cos_table, pairs, pk_batch, small_batch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from tuneddml.losses import build_loss
from tuneddml.losses.multi_similarity import MultiSimilarityLoss
from tuneddml.sampling.miners import MultiSimilarityMiner


def hand(e, labels, alpha, beta, base, chosen=None):
    s = cos_table(e)
    pos_pairs, neg_pairs = chosen or pairs(labels)
    n = len(labels)
    pos = [
        math.log(1 + sum(math.exp(-alpha * (s[i][j] - base)) for a, j in pos_pairs if a == i)) / alpha
        for i in range(n)
    ]
    neg = [
        math.log(1 + sum(math.exp(beta * (s[i][j] - base)) for a, j in neg_pairs if a == i)) / beta
        for i in range(n)
    ]
    return sum(pos) / n, sum(neg) / n


@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_matches_hand_computation(lam):
    e, labels = small_batch()
    out = MultiSimilarityLoss(lam=lam, alpha=2.0, beta=10.0, threshold=0.2)(e, labels)
    pos, neg = hand(e, labels, 2.0, 10.0, 0.2)
    assert out["pos"].item() == pytest.approx(pos, abs=1e-12)
    assert out["neg"].item() == pytest.approx(neg, abs=1e-12)
    assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * neg, abs=1e-12)


def test_matches_hand_computation_with_mined_pairs():
    e, labels = small_batch()
    miner = MultiSimilarityMiner(epsilon=0.1)
    a1, p, a2, n = miner(e, labels)
    chosen = (list(zip(a1.tolist(), p.tolist())), list(zip(a2.tolist(), n.tolist())))
    out = MultiSimilarityLoss(alpha=2.0, beta=10.0, threshold=0.2, miner=miner)(e, labels)
    pos, neg = hand(e, labels, 2.0, 10.0, 0.2, chosen=chosen)
    assert out["pos"].item() == pytest.approx(pos, abs=1e-12)
    assert out["neg"].item() == pytest.approx(neg, abs=1e-12)


@pytest.mark.parametrize("mined", [False, True])
def test_matches_pytorch_metric_learning(mined):
    e, labels = pk_batch(seed=6, dim=8)
    ours = build_loss(
        "multi_similarity", num_classes=4, embedding_size=8, miner="default" if mined else "none"
    )
    pml = pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    indices = pml_miners.MultiSimilarityMiner(epsilon=0.1)(e, labels) if mined else None
    assert ours(e, labels)["total"].item() == pytest.approx(pml(e, labels, indices).item(), abs=1e-5)


def test_threshold_is_not_the_balance():
    loss = build_loss("multi_similarity", {"threshold": 0.3, "lambda": 0.7}, num_classes=4, embedding_size=8)
    assert loss.threshold == 0.3 and loss.weights() == pytest.approx({"pos": 1.4, "neg": 0.6})
    e = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    assert torch.isfinite(loss(e, torch.tensor([0, 0, 1, 1]))["total"])
