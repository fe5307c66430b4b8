"""SoftTriple (Qian et al. 2019): by hand and against pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
from handcalc import cos_table, dot, pk_batch, small_batch

from tuneddml.losses import build_loss
from tuneddml.losses.softtriple import SoftTripleLoss, center_spread


def _hand(e, labels, centers, k, scale, gamma, margin):
    table = cos_table(e, centers)
    y = labels.tolist()
    pos = ent = 0.0
    for i, row in enumerate(table):
        sims = []
        for c in range(len(row) // k):
            s = row[c * k : (c + 1) * k]
            w = [math.exp(v / gamma) for v in s]
            sims.append(sum(wi * v for wi, v in zip(w, s)) / sum(w))
        z = [scale * (sims[c] - margin * (c == y[i])) for c in range(len(sims))]
        pos -= z[y[i]] / len(y)
        ent += math.log(sum(math.exp(v) for v in z)) / len(y)
    return pos, ent


def _hand_spread(centers, k):
    rows = [[v / math.sqrt(dot(r, r)) for v in r] for r in centers.tolist()]
    classes = len(rows) // k
    total = 0.0
    for c in range(classes):
        for t in range(k):
            for u in range(t + 1, k):
                total += math.sqrt(2 + 1e-5 - 2 * dot(rows[c * k + t], rows[c * k + u]))
    return total / (classes * k * (k - 1))


@pytest.mark.parametrize(("k", "lam", "tau"), [(3, 0.5, 0.2), (1, 0.5, 0.2), (4, 0.2, 1.0)])
def test_matches_a_hand_computation(k, lam, tau):
    e, labels = small_batch()
    torch.manual_seed(1)
    loss = SoftTripleLoss(
        num_classes=3,
        embedding_size=4,
        lam=lam,
        scale=10.0,
        gamma=0.2,
        margin=0.05,
        tau=tau,
        proxies_per_class=k,
    ).double()
    centers = loss.proxies.detach()
    pos, ent = _hand(e, labels, centers, k, 10.0, 0.2, 0.05)
    reg = _hand_spread(centers, k) if k > 1 else 0.0
    out = loss(e, labels)
    assert out["pos"].item() == pytest.approx(pos, rel=1e-10)
    assert out["ent"].item() == pytest.approx(ent, rel=1e-10)
    assert out["reg"].item() == pytest.approx(reg, rel=1e-10, abs=1e-15)
    assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * ent + tau * reg, rel=1e-10)


def test_agrees_with_pytorch_metric_learning():
    from pytorch_metric_learning.losses import SoftTripleLoss as PMLSoftTriple

    e, labels = pk_batch(seed=2, classes=4, dim=8)
    torch.manual_seed(4)
    ours = SoftTripleLoss(num_classes=5, embedding_size=8, tau=0.0, proxies_per_class=10)
    theirs = PMLSoftTriple(
        num_classes=5, embedding_size=8, centers_per_class=10, la=20, gamma=0.1, margin=0.01
    )
    with torch.no_grad():
        theirs.fc.copy_(ours.proxies.T)
    assert ours(e, labels)["total"].item() == pytest.approx(theirs(e, labels).item(), abs=1e-5)


def test_spread_regulariser_merges_centres():
    """The regulariser falls as a class's centres move together, and its gradient points that way."""
    torch.manual_seed(0)
    centers = torch.nn.Parameter(torch.randn(6, 5))
    before = center_spread(centers, 3)
    before.backward()
    with torch.no_grad():
        moved = centers - 0.05 * centers.grad
    assert center_spread(moved, 3) < before
    # identical centres: every pair at sqrt(1e-5); C K (K-1) / 2 pairs over C K (K-1)
    same = torch.randn(2, 5, dtype=torch.float64).repeat_interleave(3, dim=0)
    assert center_spread(same, 3).item() == pytest.approx(math.sqrt(1e-5) / 2, rel=1e-6)


def test_defaults_are_the_papers():
    loss = build_loss("softtriple", num_classes=3, embedding_size=8)
    assert (loss.scale, loss.gamma, loss.margin, loss.tau, loss.proxies_per_class) == (
        20.0,
        0.1,
        0.01,
        0.2,
        10,
    )
    assert loss.proxies.shape == (30, 8)
