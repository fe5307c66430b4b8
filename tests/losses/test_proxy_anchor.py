from __future__ import annotations

import math

import pytest
import torch
from handcalc import cos_table, pk_batch, small_batch
from pytorch_metric_learning import losses as pml_losses

from tuneddml.losses.proxy_anchor import ProxyAnchorLoss


def hand(e, labels, proxies, alpha, margin):
    s = cos_table(e, proxies)  # (n, C)
    y = labels.tolist()
    classes = range(len(proxies))
    present = [c for c in classes if c in y]
    pos = sum(
        math.log(1 + sum(math.exp(-alpha * (s[i][c] - margin)) for i in range(len(y)) if y[i] == c))
        for c in present
    ) / len(present)
    neg = sum(
        math.log(1 + sum(math.exp(alpha * (s[i][c] + margin)) for i in range(len(y)) if y[i] != c))
        for c in classes
    ) / len(proxies)
    return pos, neg


@pytest.mark.parametrize("lam", [0.5, 0.75])
def test_matches_hand_computation(lam):
    e, labels = small_batch()  # 4 classes, class 3 absent from the batch
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(num_classes=4, embedding_size=4, lam=lam, alpha=8.0, margin=0.1).double()
    out = loss(e, labels)
    pos, neg = hand(e, labels, loss.proxies.detach(), 8.0, 0.1)
    assert out["pos"].item() == pytest.approx(pos, abs=1e-10)
    assert out["neg"].item() == pytest.approx(neg, abs=1e-10)
    assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * neg, abs=1e-10)


def test_matches_pytorch_metric_learning():
    e, labels = pk_batch(seed=8, classes=4, dim=8)
    torch.manual_seed(1)
    ours = ProxyAnchorLoss(num_classes=6, embedding_size=8)  # two classes absent from the batch
    pml = pml_losses.ProxyAnchorLoss(num_classes=6, embedding_size=8, margin=0.1, alpha=32)
    with torch.no_grad():
        pml.proxies.copy_(ours.proxies)
    assert ours(e, labels)["total"].item() == pytest.approx(pml(e, labels).item(), rel=1e-5)


def test_identical_proxies_of_a_class_act_as_one():
    e, labels = small_batch()
    torch.manual_seed(2)
    one = ProxyAnchorLoss(num_classes=3, embedding_size=4, alpha=8.0).double()
    three = ProxyAnchorLoss(num_classes=3, embedding_size=4, alpha=8.0, proxies_per_class=3).double()
    with torch.no_grad():
        three.proxies.copy_(one.proxies.repeat_interleave(3, dim=0))
    a, b = one(e, labels), three(e, labels)
    for name in ("pos", "neg", "total"):
        assert a[name].item() == pytest.approx(b[name].item(), abs=1e-10)


def test_several_proxies_combine_by_soft_max():
    e, labels = small_batch()
    torch.manual_seed(3)
    loss = ProxyAnchorLoss(num_classes=3, embedding_size=4, proxies_per_class=2, proxy_temperature=1e-4)
    loss = loss.double()
    # at a tiny temperature the soft max over a class's two proxies is their max
    sims = cos_table(e, loss.proxies.detach())
    s_max = [[max(row[2 * c], row[2 * c + 1]) for c in range(3)] for row in sims]
    y = labels.tolist()
    pos = (
        sum(
            math.log(1 + sum(math.exp(-32 * (s_max[i][c] - 0.1)) for i in range(6) if y[i] == c))
            for c in range(3)
        )
        / 3
    )
    neg = (
        sum(
            math.log(1 + sum(math.exp(32 * (s_max[i][c] + 0.1)) for i in range(6) if y[i] != c))
            for c in range(3)
        )
        / 3
    )
    out = loss(e, labels)
    assert out["pos"].item() == pytest.approx(pos, rel=1e-6)
    assert out["neg"].item() == pytest.approx(neg, rel=1e-6)


def test_every_proxy_of_a_class_gets_a_gradient():
    e, labels = small_batch()
    torch.manual_seed(4)
    loss = ProxyAnchorLoss(num_classes=3, embedding_size=4, proxies_per_class=3).double()
    loss(e, labels)["total"].backward()
    assert (loss.proxies.grad.abs().sum(dim=1) > 0).all()
