from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from handcalc import cos_table, pk_batch, small_batch
from pytorch_metric_learning import losses as pml_losses

from tuneddml.losses import build_loss
from tuneddml.losses.stochastic_ap import StochasticAPLoss, ranking_statistics


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def hand_ap(batch, memory, tau, gamma, counts=None):
    """1 - mean AP by plain loops: the current batch ``(e, y)`` against itself (query excluded) and
    the stored batches (newest last), item weights ``(1 - gamma)^age``, ratio from ``counts``
    (population) or from the weighted pooled counts."""
    e, y = batch
    pool = [(e, y, 1.0)] + [
        (m_e, m_y, (1 - gamma) ** age) for age, (m_e, m_y) in enumerate(reversed(memory), 1)
    ]
    items = []  # (embedding, label, weight, index in the batch or None)
    for be, by, w in pool:
        for r in range(len(by)):
            items.append((be[r], int(by[r]), w, r if be is e else None))
    emb = torch.stack([it[0] for it in items])
    s = cos_table(e, emb)
    aps = []
    for i in range(len(y)):
        yi = int(y[i])
        pos = [j for j, it in enumerate(items) if it[1] == yi and it[3] != i]
        neg = [j for j, it in enumerate(items) if it[1] != yi]
        targets = [j for j in pos if items[j][3] is not None]
        if not targets:
            continue
        wp = sum(items[j][2] for j in pos)
        wn = sum(items[j][2] for j in neg)
        rho = (sum(counts) - counts[yi]) / (counts[yi] - 1) if counts is not None else wn / wp
        precisions = []
        for k in targets:
            tpr = sum(items[j][2] * (1.0 if j == k else sig((s[i][j] - s[i][k]) / tau)) for j in pos) / wp
            fpr = sum(items[j][2] * sig((s[i][j] - s[i][k]) / tau) for j in neg) / wn if neg else 0.0
            precisions.append(tpr / (tpr + rho * fpr))
        aps.append(sum(precisions) / len(precisions))
    return 1.0 - sum(aps) / len(aps)


def test_single_batch_is_smooth_ap_by_plain_loop():
    e, labels = small_batch(seed=5)
    out = StochasticAPLoss(tau=0.05, memory=0, ratio="batch")(e, labels)
    assert out["ap"].item() == pytest.approx(hand_ap((e, labels), [], 0.05, 0.1), abs=1e-10)
    assert out["total"].item() == pytest.approx(out["ap"].item(), abs=1e-12)


def test_core_matches_pytorch_metric_learning_smooth_ap():
    # pml's SmoothAP counts the query as its own first positive; the same masks give the same loss
    e, labels = pk_batch(seed=2, classes=4, per_class=4, dim=16)
    e = e.double()
    s = e @ e.T
    same = labels[:, None] == labels[None, :]
    weight = torch.ones(len(labels), dtype=e.dtype)
    tpr, fpr = ranking_statistics(s, same, ~same, weight, len(labels), 0.01)
    rho = (~same).sum(1) / same.sum(1)
    ap = ((tpr / (tpr + rho[:, None] * fpr)) * same).sum(1) / same.sum(1)
    pml = pml_losses.SmoothAPLoss(temperature=0.01)(e.float(), labels)
    assert (1 - ap.mean()).item() == pytest.approx(pml.item(), abs=1e-5)


def test_population_ratio_by_plain_loop_and_consistency():
    e, labels = small_batch(seed=8)
    counts = [10, 30, 3]
    loss = StochasticAPLoss(tau=0.05, memory=0)
    loss.set_class_counts(counts)
    assert loss(e, labels)["ap"].item() == pytest.approx(
        hand_ap((e, labels), [], 0.05, 0.1, counts), abs=1e-10
    )
    # training counts in the batch's own proportions: the population ratio is the batch ratio
    same = StochasticAPLoss(tau=0.05, memory=0)
    same.set_class_counts(np.bincount(labels.numpy()))
    plain = StochasticAPLoss(tau=0.05, memory=0, ratio="batch")
    assert same(e, labels)["ap"].item() == pytest.approx(plain(e, labels)["ap"].item(), abs=1e-12)


def test_epoch_hook_reads_training_class_counts():
    class Context:
        train_labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])

    loss = StochasticAPLoss()
    loss.on_epoch_start(1, Context())
    assert loss.class_counts.tolist() == [3, 2, 4]


def test_moving_average_over_stored_batches_by_plain_loop():
    torch.manual_seed(0)
    batches = []
    for seed in range(3):
        e, y = pk_batch(seed=seed, classes=3, per_class=2, dim=6)
        batches.append(
            (torch.nn.functional.normalize(e.double(), dim=1), y + (seed % 2))
        )  # shifted labels: classes differ between batches
    loss = StochasticAPLoss(tau=0.1, gamma=0.3, memory=2, ratio="batch")
    for b in batches[:2]:
        loss(*b)
    got = loss(*batches[2])["ap"].item()
    assert got == pytest.approx(hand_ap(batches[2], batches[:2], 0.1, 0.3), abs=1e-10)
    assert len(loss.memory) == 2  # capped: the oldest of the three has gone
    # gamma = 1: stored batches weigh nothing, the single-batch estimate
    one = StochasticAPLoss(tau=0.1, gamma=1.0, memory=2, ratio="batch")
    for b in batches[:2]:
        one(*b)
    alone = StochasticAPLoss(tau=0.1, memory=0, ratio="batch")(*batches[2])["ap"].item()
    assert one(*batches[2])["ap"].item() == pytest.approx(alone, abs=1e-12)


def test_eval_mode_does_not_fill_the_memory_and_memory_has_no_gradient():
    e, labels = pk_batch(seed=1)
    loss = StochasticAPLoss(memory=3).eval()
    loss(e, labels)
    assert len(loss.memory) == 0
    loss.train()
    x = e.clone().requires_grad_(True)
    loss(x, labels)
    assert not loss.memory[0][0].requires_grad


def test_population_estimate_is_closer_to_dataset_ap_than_batch_counts():
    # one query's whole class is in the batch but only a few of its negatives (m-per-class
    # batches): the batch-count estimate is biased upwards, the population ratio is not
    g = torch.Generator().manual_seed(0)
    n_pos, n_neg, tau = 8, 400, 0.05
    scores = torch.cat([torch.randn(n_pos, generator=g) * 0.2 + 0.3, torch.randn(n_neg, generator=g) * 0.2])
    is_pos = torch.arange(n_pos + n_neg) < n_pos

    def estimate(keep, rho):
        s, p = scores[keep][None], is_pos[keep][None]
        tpr, fpr = ranking_statistics(s, p, ~p, torch.ones(int(keep.sum()), dtype=s.dtype), int(p.sum()), tau)
        return (tpr / (tpr + rho * fpr)).mean().item()

    everything = torch.ones(n_pos + n_neg, dtype=torch.bool)
    dataset_ap = estimate(everything, n_neg / n_pos)
    rng = np.random.default_rng(0)
    errors = []
    for sampled in (24, 96, 200):
        pop, batch = [], []
        for _ in range(200):
            keep = is_pos.clone()
            keep[n_pos + rng.choice(n_neg, size=sampled, replace=False)] = True
            pop.append(estimate(keep, n_neg / n_pos))
            batch.append(estimate(keep, sampled / n_pos))
        pop_error, batch_error = abs(np.mean(pop) - dataset_ap), abs(np.mean(batch) - dataset_ap)
        assert pop_error < batch_error / 4
        errors.append(pop_error)
    # the ratio of two unbiased means is asymptotically unbiased: more items, less bias
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.015


def test_semivariance_by_hand():
    e, labels = small_batch(seed=2)
    out = StochasticAPLoss(semivar_weight=0.5, memory=0)(e, labels)
    s = cos_table(e)
    y = labels.tolist()
    rows = []
    for i in range(len(y)):
        pos = [s[i][j] for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [s[i][j] for j in range(len(y)) if y[j] != y[i]]
        if pos and neg:
            mp, mn = sum(pos) / len(pos), sum(neg) / len(neg)
            rows.append(
                sum(max(0, mp - v) ** 2 for v in pos) / len(pos)
                + sum(max(0, v - mn) ** 2 for v in neg) / len(neg)
            )
    assert out["semivar"].item() == pytest.approx(sum(rows) / len(rows), abs=1e-12)
    assert out["total"].item() == pytest.approx(out["ap"].item() + 0.5 * out["semivar"].item(), abs=1e-12)


def test_defaults_through_the_registry():
    loss = build_loss("stochastic_ap", num_classes=4, embedding_size=8)
    assert (loss.tau, loss.gamma, loss.memory.maxlen, loss.ratio) == (0.01, 0.1, 4, "population")
    assert loss.weights() == {"ap": 1.0, "semivar": 0.0}
