from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from handcalc import cos_table, pk_batch, small_batch

from tuneddml.losses.proxy_nca import ProxyNCALoss


def hand(e, labels, proxies, scale, include_positive):
    s = cos_table(e, proxies)
    y = labels.tolist()
    n = len(y)
    pos = -sum(scale * s[i][y[i]] for i in range(n)) / n
    neg = (
        sum(
            math.log(
                sum(math.exp(scale * s[i][c]) for c in range(len(proxies)) if include_positive or c != y[i])
            )
            for i in range(n)
        )
        / n
    )
    return pos, neg


@pytest.mark.parametrize("include_positive", [False, True])
@pytest.mark.parametrize("lam", [0.5, 0.9])
def test_matches_hand_computation(lam, include_positive):
    e, labels = small_batch()
    torch.manual_seed(0)
    loss = ProxyNCALoss(
        num_classes=4, embedding_size=4, lam=lam, scale=3.0, include_positive=include_positive
    ).double()
    out = loss(e, labels)
    pos, neg = hand(e, labels, loss.proxies.detach(), 3.0, include_positive)
    assert out["pos"].item() == pytest.approx(pos, abs=1e-10)
    assert out["neg"].item() == pytest.approx(neg, abs=1e-10)
    assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * neg, abs=1e-10)


def test_with_positive_in_denominator_is_softmax_cross_entropy():
    e, labels = pk_batch(seed=9, dim=8)
    torch.manual_seed(1)
    loss = ProxyNCALoss(num_classes=5, embedding_size=8, scale=10.0, include_positive=True)
    logits = 10.0 * e @ F.normalize(loss.proxies, dim=1).T
    assert loss(e, labels)["total"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)


def test_identical_proxies_of_a_class_act_as_one():
    e, labels = small_batch()
    torch.manual_seed(2)
    one = ProxyNCALoss(num_classes=3, embedding_size=4).double()
    two = ProxyNCALoss(num_classes=3, embedding_size=4, proxies_per_class=2).double()
    with torch.no_grad():
        two.proxies.copy_(one.proxies.repeat_interleave(2, dim=0))
    assert one(e, labels)["total"].item() == pytest.approx(two(e, labels)["total"].item(), abs=1e-10)
