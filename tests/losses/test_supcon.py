from __future__ import annotations

import math

import pytest
import torch
from handcalc import cos_table, pk_batch, small_batch
from pytorch_metric_learning import losses as pml_losses

from tuneddml.losses.supcon import SupConLoss


def hand(e, labels, tau, aggregation):
    s = cos_table(e)
    y = labels.tolist()
    n = len(y)
    pos_terms, ent_terms = [], []
    for i in range(n):
        positives = [j for j in range(n) if j != i and y[j] == y[i]]
        if not positives:
            continue  # anchors without a positive are skipped
        pos_terms.append(sum(s[i][p] / tau for p in positives) / len(positives))
        total = sum(math.exp(s[i][j] / tau) for j in range(n) if j != i)
        ent_terms.append(math.log(total / (n - 1) if aggregation == "mean" else total))
    return -sum(pos_terms) / len(pos_terms), sum(ent_terms) / len(ent_terms)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("lam", [0.5, 0.8])
def test_matches_hand_computation(aggregation, lam):
    e, labels = small_batch()  # sample 5 is a singleton: skipped as an anchor, kept as a negative
    out = SupConLoss(lam=lam, temperature=0.3, aggregation=aggregation)(e, labels)
    pos, ent = hand(e, labels, 0.3, aggregation)
    assert out["pos"].item() == pytest.approx(pos, abs=1e-12)
    assert out["ent"].item() == pytest.approx(ent, abs=1e-12)
    assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * ent, abs=1e-12)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_total_at_half_is_standard_supcon(tau):
    e, labels = pk_batch(seed=3)
    ours = SupConLoss(lam=0.5, temperature=tau, aggregation="sum")(e, labels)
    pml = pml_losses.SupConLoss(temperature=tau)(e, labels)
    assert ours["total"].item() == pytest.approx(pml.item(), abs=1e-5)


def test_mean_aggregation_is_shift_of_sum_with_same_gradient():
    e, labels = pk_batch(seed=4)
    grads, values = [], []
    for aggregation in ("sum", "mean"):
        x = e.clone().requires_grad_(True)
        out = SupConLoss(temperature=0.2, aggregation=aggregation)(x, labels)
        out["total"].backward()
        grads.append(x.grad)
        values.append(out["ent"].item())
    assert values[0] - values[1] == pytest.approx(math.log(len(labels) - 1), abs=1e-5)
    torch.testing.assert_close(grads[0], grads[1])


def test_mean_entropy_does_not_grow_with_batch_size():
    # the same embedding distribution at batch 16 and 128: "sum" grows by about log(8), "mean" does not
    small, big = pk_batch(seed=5, per_class=4), pk_batch(seed=5, per_class=32)
    loss = {a: SupConLoss(temperature=0.5, aggregation=a) for a in ("sum", "mean")}
    grow_sum = loss["sum"](*big)["ent"].item() - loss["sum"](*small)["ent"].item()
    grow_mean = loss["mean"](*big)["ent"].item() - loss["mean"](*small)["ent"].item()
    assert grow_sum > 1.5
    assert abs(grow_mean) < 0.2


def test_no_positive_anywhere_gives_connected_zero():
    e = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    out = SupConLoss()(e, torch.arange(4))
    assert out["total"].item() == 0.0
    out["total"].backward()
    assert torch.equal(e.grad, torch.zeros_like(e))
