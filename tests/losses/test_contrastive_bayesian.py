from __future__ import annotations

import math

import pytest
import torch
from handcalc import cos_table, small_batch

from tuneddml.losses import build_loss
from tuneddml.losses.contrastive_bayesian import ContrastiveBayesianLoss
from tuneddml.sampling import MINERS


def hand(e, labels, a_p, b_p, a_n, b_n, h, margin, form="log", mine=True):
    """Per-anchor loop in the manner of the authors' released code: (pos, neg, var) sums / n."""
    s = cos_table(e)
    y = labels.tolist()
    n = len(y)
    g = math.log if form == "log" else math.sqrt
    pos_sum = neg_sum = var_sum = 0.0
    for i in range(n):
        all_pos = [s[i][j] for j in range(n) if j != i and y[j] == y[i]]
        all_neg = [s[i][j] for j in range(n) if y[j] != y[i]]
        if not all_pos or not all_neg:
            continue
        if mine:
            pos = [v for v in all_pos if v - margin < max(all_neg)]
            neg = [v for v in all_neg if v + margin > min(all_pos)]
        else:
            pos, neg = all_pos, all_neg
        if not pos or not neg:
            continue
        mu = h * sum(all_pos) / len(all_pos) + (1 - h) * sum(all_neg) / len(all_neg)
        pos_sum += g(1 + sum(math.exp(-(v - a_p) / b_p) for v in pos))
        neg_sum += g(1 + sum(math.exp((v - a_n) / b_n) for v in neg))
        var_sum += sum((v - mu) ** 2 for v in all_neg)
    return pos_sum / n, neg_sum / n, var_sum / n


def clustered_batch(seed=6):
    # loose clusters: some positives are easy and some negatives far, so mining drops pairs
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(3)
    e = centers[labels] + 0.6 * torch.randn(9, 4, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(e, dim=1), labels


PARAMS = {"pos_center": 0.3, "pos_scale": 0.4, "neg_center": 0.2, "neg_scale": 0.1, "mean_mix": 0.2}


@pytest.mark.parametrize("form", ["log", "sqrt"])
def test_matches_the_papers_per_anchor_loop_with_its_mining(form):
    e, labels = clustered_batch()
    miner = MINERS.build("multi_similarity", {"epsilon": 0.1})
    loss = ContrastiveBayesianLoss(**PARAMS, form=form, lam=0.3, var_weight=0.7, miner=miner)
    out = loss(e, labels)
    pos, neg, var = hand(e, labels, 0.3, 0.4, 0.2, 0.1, 0.2, 0.1, form)
    assert out["pos"].item() == pytest.approx(pos, abs=1e-10)
    assert out["neg"].item() == pytest.approx(neg, abs=1e-10)
    assert out["var"].item() == pytest.approx(var, abs=1e-10)
    assert out["total"].item() == pytest.approx(0.6 * pos + 1.4 * neg + 0.7 * var, abs=1e-10)
    # mining matters on this batch: all pairs give a different value
    unmined = hand(e, labels, 0.3, 0.4, 0.2, 0.1, 0.2, 0.1, form, mine=False)
    assert abs(unmined[0] - pos) + abs(unmined[1] - neg) > 1e-2


def test_without_miner_uses_all_pairs():
    e, labels = small_batch(seed=1)
    out = ContrastiveBayesianLoss(**PARAMS)(e, labels)
    pos, neg, var = hand(e, labels, 0.3, 0.4, 0.2, 0.1, 0.2, 0.1, mine=False)
    assert (out["pos"].item(), out["neg"].item(), out["var"].item()) == pytest.approx(
        (pos, neg, var), abs=1e-10
    )


def test_single_pair_is_the_negative_log_posterior():
    # one positive and one negative per anchor: pos_i = -log sigmoid((s - a+) / b+)
    e = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    out = ContrastiveBayesianLoss(pos_center=0.2, pos_scale=0.3)(e, labels)
    s = e @ e.T
    expected = sum(-torch.log(torch.sigmoid((s[i, i ^ 1] - 0.2) / 0.3)) for i in range(4)) / 4
    assert out["pos"].item() == pytest.approx(expected.item(), abs=1e-12)


def test_defaults_are_the_released_configuration_and_use_ms_mining():
    loss = build_loss("contrastive_bayesian", num_classes=4, embedding_size=8)
    assert (loss.pos_center, loss.pos_scale, loss.neg_center, loss.neg_scale) == (0.5, 0.5, 1.0, 0.01)
    assert (loss.var_weight, loss.mean_mix, loss.form) == (1.0, 0.1, "log")
    assert type(loss.miner).__name__ == "MultiSimilarityMiner" and loss.miner.epsilon == 0.1
    assert loss.weights() == {"pos": 1.0, "neg": 1.0, "var": 1.0}
    assert build_loss("contrastive_bayesian", miner="none", num_classes=4, embedding_size=8).miner is None


def test_lambda_weights():
    loss = build_loss(
        "contrastive_bayesian", {"lambda": 0.2, "var_weight": 0.5}, num_classes=4, embedding_size=8
    )
    assert loss.weights() == pytest.approx({"pos": 0.4, "neg": 1.6, "var": 0.5})


def test_no_valid_anchor_gives_connected_zeros():
    e = torch.nn.functional.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    out = ContrastiveBayesianLoss()(e, torch.tensor([0, 1, 2]))
    assert all(v.item() == 0.0 for v in out.values())
    out["total"].backward()
    assert e.grad is not None
