from __future__ import annotations

import math

import pytest
import torch
from handcalc import cos_table, pk_batch, small_batch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import DotProductSimilarity

from tuneddml.losses import build_loss
from tuneddml.losses.roadmap import RoadmapLoss, upper_step


def h_minus(t, tau, rho, delta):
    sig = 1.0 / (1.0 + math.exp(-t / tau))
    if t <= 0:
        return sig
    if t <= delta:
        return sig + 0.5
    return rho * (t - delta) + 1.0 / (1.0 + math.exp(-delta / tau)) + 0.5


def hand_ap_terms(e, labels, tau, rho, delta, pos_margin, neg_margin, exact=False):
    """(1 - mean smooth AP, dec) by plain loops; ``exact``: the true AP (Heaviside ranks)."""
    s = cos_table(e)
    y = labels.tolist()
    n = len(y)
    aps = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and y[j] == y[i]]
        neg = [j for j in range(n) if y[j] != y[i]]
        if not pos:
            continue
        precisions = []
        for k in pos:
            rank_pos = 1 + sum(1 for j in pos if j != k and s[i][j] >= s[i][k])
            if exact:
                rank_neg = sum(1 for j in neg if s[i][j] > s[i][k])
            else:
                rank_neg = sum(h_minus(s[i][j] - s[i][k], tau, rho, delta) for j in neg)
            precisions.append(rank_pos / (rank_pos + rank_neg))
        aps.append(sum(precisions) / len(precisions))
    pos_l = [pos_margin - s[i][j] for i in range(n) for j in range(n) if i != j and y[i] == y[j]]
    neg_l = [s[i][j] - neg_margin for i in range(n) for j in range(n) if y[i] != y[j]]
    pos_l = [x for x in pos_l if x > 0]
    neg_l = [x for x in neg_l if x > 0]
    dec = (sum(pos_l) / len(pos_l) if pos_l else 0.0) + (sum(neg_l) / len(neg_l) if neg_l else 0.0)
    return 1.0 - sum(aps) / len(aps), dec


def test_upper_step_by_hand_and_above_heaviside():
    t = torch.tensor([-0.3, -0.01, 0.0, 0.02, 0.05, 0.2], dtype=torch.float64)
    got = upper_step(t, tau=0.01, rho=100.0, delta=0.05)
    for value, ti in zip(got.tolist(), t.tolist()):
        assert value == pytest.approx(h_minus(ti, 0.01, 100.0, 0.05), abs=1e-12)
    # continuous at delta, never below the step function
    assert got[4].item() == pytest.approx(
        upper_step(t.new_tensor([0.05 + 1e-9]), 0.01, 100.0, 0.05).item(), abs=1e-6
    )
    dense = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    assert (upper_step(dense, 0.01, 100.0, 0.05) >= (dense > 0).double()).all()


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"tau": 0.1, "rho": 3.0, "delta": 0.2, "pos_margin": 0.5, "neg_margin": 0.1, "lam": 0.3},
    ],
)
def test_matches_plain_loop(params):
    e, labels = small_batch(seed=3)
    loss = RoadmapLoss(**params)
    out = loss(e, labels)
    ap, dec = hand_ap_terms(e, labels, loss.tau, loss.rho, loss.delta, loss.pos_margin, loss.neg_margin)
    assert out["ap"].item() == pytest.approx(ap, abs=1e-10)
    assert out["dec"].item() == pytest.approx(dec, abs=1e-10)
    lam = loss.lam
    assert out["total"].item() == pytest.approx(2 * (1 - lam) * ap + 2 * lam * dec, abs=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_ap_term_upper_bounds_the_true_ap_loss(seed):
    e, labels = pk_batch(seed=seed, classes=4, per_class=4, dim=8)
    e = e.double()
    true_loss, _ = hand_ap_terms(e, labels, 1, 1, 1, 0.9, 0.6, exact=True)
    smooth = RoadmapLoss()(e, labels)["ap"].item()
    assert smooth >= true_loss - 1e-12
    # without the sigmoid, the offset and the slope, H^- is the step and the AP is exact
    exact = RoadmapLoss(tau=1e-9, rho=0.0, delta=0.0)(e, labels)["ap"].item()
    assert exact == pytest.approx(true_loss, abs=1e-9)


def test_dec_matches_pytorch_metric_learning_contrastive():
    e, labels = pk_batch(seed=4)
    ours = RoadmapLoss(pos_margin=0.4, neg_margin=0.1)(e, labels)["dec"]
    pml = pml_losses.ContrastiveLoss(pos_margin=0.4, neg_margin=0.1, distance=DotProductSimilarity())(
        e, labels
    )
    torch.testing.assert_close(ours, pml, atol=1e-5, rtol=1e-5)


def test_far_negative_keeps_a_gradient():
    # a negative far above the positive: a sigmoid rank saturates, ROADMAP's linear part does not
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], dtype=torch.float64)
    e = torch.nn.functional.normalize(e, dim=1).requires_grad_(True)
    labels = torch.tensor([0, 0, 1])
    RoadmapLoss(lam=0.0)(e, labels)["total"].backward()
    assert e.grad[2].abs().sum() > 1.0
    e.grad = None
    RoadmapLoss(lam=0.0, rho=0.0)(e, labels)["total"].backward()
    assert e.grad[2].abs().sum() < 1e-6


def test_lambda_and_defaults_through_the_registry():
    loss = build_loss("roadmap", {"lambda": 0.25}, num_classes=4, embedding_size=8)
    assert loss.weights() == {"ap": 1.5, "dec": 0.5}
    default = build_loss("roadmap", num_classes=4, embedding_size=8)
    assert (default.tau, default.rho, default.delta) == (0.01, 100.0, 0.05)
    assert (default.pos_margin, default.neg_margin) == (0.9, 0.6)
    assert default.weights() == {"ap": 1.0, "dec": 1.0}


def test_batch_without_positives_gives_zero_ap():
    e = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_(True)
    out = RoadmapLoss()(e, torch.tensor([0, 1, 2]))
    assert out["ap"].item() == 0.0
    out["total"].backward()
    assert torch.isfinite(e.grad).all()
