from __future__ import annotations

import math

import numpy as np
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


# class layouts: one positive per anchor, many, a mix with singletons (skipped as anchors), a single
# class (no negative at all), the smallest batch (one pair), and a large one
LAYOUTS = {
    "pairs": [c for c in range(8) for _ in range(2)],
    "two_classes": [c for c in range(2) for _ in range(16)],
    "mixed": [0] * 10 + [1, 1, 1, 2, 3, 4],
    "one_class": [0] * 6,
    "one_pair": [0, 0],
    "eight_by_eight": [c for c in range(8) for _ in range(8)],
}


def clustered(labels, seed, noise, dim=8):
    """Unit vectors around one random centre per class (``noise``: spread around the centre)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    centres = rng.normal(size=(y.max() + 1, dim))
    x = centres[y] / np.linalg.norm(centres[y], axis=1, keepdims=True) + noise * rng.normal(size=(len(y), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def numpy_supcon(x, y, tau, aggregation):
    """``(pos, ent, L_out)`` by numpy: ``L_out`` is Khosla et al.'s loss in its log-softmax form,
    ``mean_{i in A} -mean_{p in P(i)} log softmax_{j != i}(s_ij / tau)[p]``, not split in two
    (``aggregation="mean"``: the softmax denominator is a mean over the ``n - 1`` others)."""
    n = len(y)
    logits = x @ x.T / tau
    others = ~np.eye(n, dtype=bool)
    positive = (y[:, None] == y[None, :]) & others
    anchors = positive.any(axis=1)
    log_denominator = np.log(np.where(others, np.exp(logits), 0.0).sum(axis=1))
    if aggregation == "mean":
        log_denominator = log_denominator - np.log(n - 1)
    log_prob = logits - log_denominator[:, None]
    per_anchor = -(log_prob * positive).sum(axis=1)[anchors] / positive.sum(axis=1)[anchors]
    pos = -((logits * positive).sum(axis=1)[anchors] / positive.sum(axis=1)[anchors]).mean()
    return pos, log_denominator[anchors].mean(), per_anchor.mean()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_matches_numpy_supcon_on_every_layout(layout, aggregation):
    for seed, noise, tau, lam in [(0, 0.3, 0.1, 0.5), (1, 1.0, 0.5, 0.8), (2, 0.05, 0.2, 0.3)]:
        x, y = clustered(LAYOUTS[layout], seed, noise)
        out = SupConLoss(lam=lam, temperature=tau, aggregation=aggregation)(torch.tensor(x), torch.tensor(y))
        pos, ent, l_out = numpy_supcon(x, y, tau, aggregation)
        assert out["pos"].item() == pytest.approx(pos, rel=1e-10, abs=1e-12)
        assert out["ent"].item() == pytest.approx(ent, rel=1e-10, abs=1e-12)
        if lam == 0.5:  # the unweighted form: Khosla et al.'s L_out itself
            assert out["total"].item() == pytest.approx(l_out, rel=1e-10, abs=1e-12)
        # the balanced form, with numpy's terms: pos and ent come in with 2 lambda and 2 (1 - lambda)
        assert out["total"].item() == pytest.approx(2 * lam * pos + 2 * (1 - lam) * ent, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("n", [2, 5, 64])
@pytest.mark.parametrize("noise", [0.05, 3.0])
def test_mean_entropy_is_bounded_at_every_batch_size_and_sum_entropy_is_not(n, noise):
    # what "mean" does for every batch, whatever its size and class layout: an anchor's term is the
    # log of a mean of exp(s_ij / tau), so it lies between the anchor's smallest and largest
    # s_ij / tau, within [-1 / tau, 1 / tau] at every n; "sum" adds exactly log(n - 1), a floor of
    # log(n - 1) - 1 / tau that grows with the batch
    tau = 0.5
    labels = [i // 4 for i in range(n)]  # classes of 4 (n = 5: and a singleton)
    x, y = clustered(labels, seed=n, noise=noise)
    e, t = torch.tensor(x), torch.tensor(y)
    ent = {a: SupConLoss(temperature=tau, aggregation=a)(e, t)["ent"].item() for a in ("sum", "mean")}
    scaled = np.where(np.eye(n, dtype=bool), np.nan, x @ x.T / tau)
    anchors = np.array([(y == c).sum() > 1 for c in y])  # the anchors the loss averages over
    low, high = np.nanmin(scaled, axis=1)[anchors].mean(), np.nanmax(scaled, axis=1)[anchors].mean()
    assert low - 1e-9 <= ent["mean"] <= high + 1e-9, (low, ent["mean"], high)
    assert ent["sum"] - ent["mean"] == pytest.approx(math.log(n - 1), abs=1e-9)
    assert ent["sum"] >= math.log(n - 1) - 1 / tau - 1e-9


def test_no_positive_anywhere_gives_connected_zero():
    e = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    out = SupConLoss()(e, torch.arange(4))
    assert out["total"].item() == 0.0
    out["total"].backward()
    assert torch.equal(e.grad, torch.zeros_like(e))
