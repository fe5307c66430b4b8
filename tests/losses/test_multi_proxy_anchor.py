"""Multi-proxies anchor loss: by hand with several proxies per class; one proxy is Proxy-Anchor."""

from __future__ import annotations

import math

import pytest
import torch
from handcalc import cos_table, pk_batch, small_batch

from tuneddml.losses import LOSSES, build_loss
from tuneddml.losses.multi_proxy_anchor import MultiProxyAnchorLoss


def _hand(e, labels, proxies, k, alpha, margin, gamma):
    table = cos_table(e, proxies)
    y = labels.tolist()
    classes = len(proxies) // k
    sim = []
    for row in table:
        per_class = []
        for c in range(classes):
            s = row[c * k : (c + 1) * k]
            w = [math.exp(v / gamma) for v in s]
            per_class.append(sum(wi * v for wi, v in zip(w, s)) / sum(w))
        sim.append(per_class)
    present = sorted(set(y))
    pos = sum(
        math.log(1 + sum(math.exp(-alpha * (sim[i][c] - margin)) for i in range(len(y)) if y[i] == c))
        for c in present
    ) / len(present)
    neg = (
        sum(
            math.log(1 + sum(math.exp(alpha * (sim[i][c] + margin)) for i in range(len(y)) if y[i] != c))
            for c in range(classes)
        )
        / classes
    )
    return pos, neg


@pytest.mark.parametrize(("k", "lam"), [(3, 0.5), (2, 0.7)])
def test_matches_a_hand_computation(k, lam):
    e, labels = small_batch()
    torch.manual_seed(5)
    loss = MultiProxyAnchorLoss(
        num_classes=4,
        embedding_size=4,
        lam=lam,
        alpha=16.0,
        margin=0.1,
        proxies_per_class=k,
        proxy_temperature=0.2,
    ).double()
    pos, neg = _hand(e, labels, loss.proxies.detach(), k, 16.0, 0.1, 0.2)
    out = loss(e, labels)
    assert out["pos"].item() == pytest.approx(pos, rel=1e-10)
    assert out["neg"].item() == pytest.approx(neg, rel=1e-10)
    assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * neg, rel=1e-10)


def test_one_proxy_per_class_is_proxy_anchor_of_pytorch_metric_learning():
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    e, labels = pk_batch(seed=6, classes=4, dim=8)
    torch.manual_seed(2)
    ours = build_loss("multi_proxy_anchor", {"proxies_per_class": 1}, num_classes=5, embedding_size=8)
    theirs = ProxyAnchorLoss(num_classes=5, embedding_size=8, margin=0.1, alpha=32)
    with torch.no_grad():
        theirs.proxies.copy_(ours.proxies)
    assert ours(e, labels)["total"].item() == pytest.approx(theirs(e, labels).item(), abs=1e-5)


def test_every_proxy_of_a_class_gets_a_gradient():
    e, labels = pk_batch(seed=1, classes=3, dim=8)
    loss = build_loss("multi_proxy_anchor", num_classes=3, embedding_size=8)
    assert loss.proxies_per_class == 4 and loss.proxies.shape == (12, 8)
    loss(e, labels)["total"].backward()
    assert (loss.proxies.grad.abs().sum(dim=1) > 0).all()
    assert {p.name for p in LOSSES.get("multi_proxy_anchor").params} == {
        "lambda",
        "alpha",
        "margin",
        "proxies_per_class",
        "proxy_temperature",
    }
