"""N-pair loss (Sohn 2016): a hand computation, the pairing rule and pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
from handcalc import cos_table

from tuneddml.losses.npair import NPairLoss, first_pairs


def _pairs_batch(seed: int = 0, n: int = 4, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(2 * n, dim, generator=g, dtype=torch.float64), dim=1)
    return e, torch.arange(n).repeat_interleave(2)


def test_matches_sohns_formula_by_hand():
    e, labels = _pairs_batch()
    tau = 0.2
    s = cos_table(e[0::2], e[1::2])  # anchors x positives
    n = len(s)
    per_anchor = [
        math.log(1 + sum(math.exp((s[i][j] - s[i][i]) / tau) for j in range(n) if j != i)) for i in range(n)
    ]
    pos = -sum(s[i][i] / tau for i in range(n)) / n
    ent = sum(math.log(sum(math.exp(s[i][j] / tau) for j in range(n))) for i in range(n)) / n
    out = NPairLoss(lam=0.5, temperature=tau)(e, labels)
    assert out["total"].item() == pytest.approx(sum(per_anchor) / n, rel=1e-12)
    assert out["pos"].item() == pytest.approx(pos, rel=1e-12)
    assert out["ent"].item() == pytest.approx(ent, rel=1e-12)
    lopsided = NPairLoss(lam=0.8, temperature=tau)(e, labels)
    assert lopsided["total"].item() == pytest.approx(1.6 * pos + 0.4 * ent, rel=1e-12)


def test_first_pairs_takes_each_class_first_two_items():
    labels = torch.tensor([3, 1, 3, 2, 1, 3, 1, 0])
    anchors, positives = first_pairs(labels)
    assert anchors.tolist() == [0, 1] and positives.tolist() == [2, 4]  # class 2 and 0 have one item
    anchors, positives = first_pairs(torch.tensor([5, 6, 7]))
    assert len(anchors) == 0 and len(positives) == 0


@pytest.mark.parametrize("per_class", [2, 4])
def test_agrees_with_pytorch_metric_learning(per_class):
    from pytorch_metric_learning.losses import NPairsLoss

    g = torch.Generator().manual_seed(per_class)
    e = torch.nn.functional.normalize(torch.randn(5 * per_class, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(5).repeat(per_class)  # classes interleaved, not grouped
    ours = NPairLoss(temperature=1.0)(e, labels)["total"]
    assert ours.item() == pytest.approx(NPairsLoss()(e, labels).item(), abs=1e-5)


def test_no_pair_gives_a_connected_zero():
    e = torch.randn(3, 4, requires_grad=True)
    out = NPairLoss()(e, torch.tensor([0, 1, 2]))
    assert out["total"].item() == 0.0
    out["total"].backward()
    assert e.grad is not None and (e.grad == 0).all()
