"""Normalised softmax (Zhai & Wu 2019; Boudiaf et al. 2020): by hand and against pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from handcalc import cos_table, pk_batch, small_batch

from tuneddml.losses import build_loss
from tuneddml.losses.normsoftmax import NormSoftmaxLoss


def _soft_max_similarity(row: list[float], k: int, gamma: float = 0.1) -> list[float]:
    """Per class: sum_k softmax_k(s / gamma) s, by a loop."""
    out = []
    for c in range(len(row) // k):
        s = row[c * k : (c + 1) * k]
        w = [math.exp(v / gamma) for v in s]
        out.append(sum(wi * v for wi, v in zip(w, s)) / sum(w))
    return out


@pytest.mark.parametrize(("k", "eps", "lam"), [(1, 0.0, 0.5), (1, 0.1, 0.3), (3, 0.0, 0.5), (2, 0.2, 0.9)])
def test_matches_a_hand_computation(k, eps, lam):
    e, labels = small_batch()
    torch.manual_seed(0)
    loss = NormSoftmaxLoss(
        num_classes=3, embedding_size=4, lam=lam, temperature=0.1, proxies_per_class=k, label_smoothing=eps
    ).double()
    table = cos_table(e, loss.proxies.detach())
    y = labels.tolist()
    pos = ent = 0.0
    for i, row in enumerate(table):
        z = [v / 0.1 for v in _soft_max_similarity(row, k)]
        q = [eps / 3 + (1 - eps) * (c == y[i]) for c in range(3)]
        pos -= sum(qc * zc for qc, zc in zip(q, z)) / len(y)
        ent += math.log(sum(math.exp(v) for v in z)) / len(y)
    out = loss(e, labels)
    assert out["pos"].item() == pytest.approx(pos, rel=1e-10)
    assert out["ent"].item() == pytest.approx(ent, rel=1e-10)
    assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * ent, rel=1e-10)
    if lam == 0.5:  # the balanced loss is torch's cross-entropy with the same label smoothing
        ce = F.cross_entropy(loss.logits(e), labels, label_smoothing=eps)
        assert out["total"].item() == pytest.approx(ce.item(), rel=1e-10)


def test_agrees_with_pytorch_metric_learning():
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    e, labels = pk_batch(seed=5, classes=4, dim=8)
    torch.manual_seed(3)
    ours = NormSoftmaxLoss(num_classes=6, embedding_size=8, temperature=0.05)
    theirs = NormalizedSoftmaxLoss(num_classes=6, embedding_size=8, temperature=0.05)
    with torch.no_grad():
        theirs.W.copy_(ours.proxies.T)
    assert ours(e, labels)["total"].item() == pytest.approx(theirs(e, labels).item(), abs=1e-5)


def test_proxies_are_a_parameter_with_the_shared_layout():
    loss = build_loss("normsoftmax", {"proxies_per_class": 3}, num_classes=5, embedding_size=8)
    assert isinstance(loss.proxies, torch.nn.Parameter) and loss.proxies.shape == (15, 8)
    # class c owns rows c*K .. c*K+K-1: moving class 2's rows onto an embedding makes it class 2's best
    e = F.normalize(torch.randn(1, 8), dim=1)
    with torch.no_grad():
        loss.proxies[6:9] = e
    assert loss.logits(e).argmax().item() == 2
