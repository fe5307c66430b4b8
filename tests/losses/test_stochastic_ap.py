from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from handcalc import cos_table, pk_batch, small_batch
from pytorch_metric_learning import losses as pml_losses

from tuneddml.losses import build_loss
from tuneddml.losses.stochastic_ap import StochasticAPLoss, ranking_statistics


def memory_ap(**params):
    """The earlier estimator, kept as ``estimator="memory"`` (with its earlier default ratio)."""
    params.setdefault("ratio", "population")
    return StochasticAPLoss(estimator="memory", **params)


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
    out = memory_ap(tau=0.05, memory=0, ratio="batch")(e, labels)
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
    loss = memory_ap(tau=0.05, memory=0)
    loss.set_class_counts(counts)
    assert loss(e, labels)["ap"].item() == pytest.approx(
        hand_ap((e, labels), [], 0.05, 0.1, counts), abs=1e-10
    )
    # training counts in the batch's own proportions: the population ratio is the batch ratio
    same = memory_ap(tau=0.05, memory=0)
    same.set_class_counts(np.bincount(labels.numpy()))
    plain = memory_ap(tau=0.05, memory=0, ratio="batch")
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
    loss = memory_ap(tau=0.1, gamma=0.3, memory=2, ratio="batch")
    for b in batches[:2]:
        loss(*b)
    got = loss(*batches[2])["ap"].item()
    assert got == pytest.approx(hand_ap(batches[2], batches[:2], 0.1, 0.3), abs=1e-10)
    assert len(loss.memory) == 2  # capped: the oldest of the three has gone
    # gamma = 1: stored batches weigh nothing, the single-batch estimate
    one = memory_ap(tau=0.1, gamma=1.0, memory=2, ratio="batch")
    for b in batches[:2]:
        one(*b)
    alone = memory_ap(tau=0.1, memory=0, ratio="batch")(*batches[2])["ap"].item()
    assert one(*batches[2])["ap"].item() == pytest.approx(alone, abs=1e-12)


def test_eval_mode_does_not_fill_the_memory_and_memory_has_no_gradient():
    e, labels = pk_batch(seed=1)
    loss = memory_ap(memory=3).eval()
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
    out = memory_ap(semivar_weight=0.5, memory=0)(e, labels)
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
    assert (loss.estimator, loss.tau_pn, loss.tau_pp, loss.beta, loss.ratio, loss.prior_mul) == (
        "auxiliary", 0.1, 0.001, 0.001, "prior", 0.1
    )
    assert loss.points.shape == (4, 100) and loss.memory.maxlen == 0
    assert loss.weights() == {"ap": 1.0, "semivar": 0.0}
    old = build_loss("stochastic_ap", {"estimator": "memory"}, num_classes=4, embedding_size=8)
    assert (old.tau, old.gamma, old.memory.maxlen, old.points.shape) == (0.01, 0.1, 4, (0, 100))


# -- estimator="auxiliary" (SOPRC), against plain loops ---------------------------------------


def f_pn(x, tau):
    if x < 0:
        return 1.0 - 2.0 * x / tau
    return (1.0 - x / tau) ** 2 if x < tau else 0.0


def f_pp(x, tau):
    return 2.0 / (1.0 + math.exp(x / tau)) - 1.0 if x < 0 else 0.0


def hand_points(sorted_scores, points):
    """One query's ascending positive scores spread over ``points`` values, by loops."""
    m = len(sorted_scores)
    steps = math.ceil(points / m)
    if m >= 2:
        first = max(2 * sorted_scores[0] - sorted_scores[1], -1.0)
        last = min(2 * sorted_scores[-1] - sorted_scores[-2], 1.0)
    else:
        first, last = -1.0, 1.0
    ext = [first, *sorted_scores, last]
    out = []
    for k in range(1, m + 1):
        for l in range(steps):
            a = l / steps
            out.append(((ext[k - 1] + a * (ext[k] - ext[k - 1])) + (ext[k] + a * (ext[k + 1] - ext[k]))) / 2)
    return out[:points]


def hand_soprc(e, labels, v, beta, tau_pn, tau_pp, counts, prior_mul, train=True):
    """SOPRC's loss by loops; ``v`` (list of per-class point lists) is updated in place."""
    s = cos_table(e)
    y = labels.tolist()
    points = len(v[0])
    for c in sorted(set(y)):
        rows = [i for i in range(len(y)) if y[i] == c]
        if len(rows) < 2:
            continue
        spread = [hand_points(sorted(s[i][j] for j in rows if j != i), points) for i in rows]
        mean = [sum(u[t] for u in spread) / len(spread) for t in range(points)]
        if train:
            v[c] = [(1 - beta) * a + beta * b for a, b in zip(v[c], mean)]
    per_query = []
    for i in range(len(y)):
        positives = [k for k in range(len(y)) if k != i and y[k] == y[i]]
        negatives = [j for j in range(len(y)) if y[j] != y[i]]
        if not positives:
            continue
        prior = prior_mul * counts[y[i]] / max(counts)
        rho = (1 - prior) / prior
        gs = []
        for k in positives:
            fpr = sum(f_pn(s[i][k] - s[i][j], tau_pn) for j in negatives) / len(negatives)
            tpr = (1 + sum(f_pp(s[i][k] - p, tau_pp) for p in v[y[i]])) / (points + 1)
            ratio = rho * fpr / tpr
            gs.append(ratio / (1 + ratio))
        per_query.append(sum(gs) / len(gs))
    return sum(per_query) / len(per_query)


def close(tensor, values, tol):
    return float((tensor - torch.tensor(values, dtype=tensor.dtype)).abs().max()) <= tol


def soprc(**params):
    loss = StochasticAPLoss(num_classes=3, points=5, **params).double()
    loss.set_class_counts([10, 30, 3])
    return loss


def test_auxiliary_estimator_by_plain_loop_over_two_steps():
    # classes of 2, 3 and 1 rows: one and two positives per query (both ends of the spreading)
    params = {"tau_pn": 0.3, "tau_pp": 0.05, "beta": 0.4}
    loss = soprc(**params)
    assert close(loss.points, [[t / 5 for t in range(5)]] * 3, 1e-7)
    v = loss.points.tolist()  # 0, 1/5, ...: its float32 start
    for seed in (3, 4):
        e, labels = small_batch(seed=seed)
        got = loss(e, labels)["ap"].item()
        want = hand_soprc(e, labels, v, 0.4, 0.3, 0.05, [10, 30, 3], 0.1)
        assert got == pytest.approx(want, abs=1e-10)
        assert close(loss.points, v, 1e-12)


def test_auxiliary_points_move_only_for_the_batch_classes_and_only_in_training():
    loss = soprc(beta=0.5)
    start = loss.points.clone()
    e, labels = small_batch(seed=1)
    loss.eval()(e, labels)
    assert torch.equal(loss.points, start)
    loss.train()(e, labels)
    moved = (loss.points != start).any(dim=1).tolist()
    assert moved == [True, True, False]  # class 2 is a singleton: no positive scores to track


def test_auxiliary_gradient_flows_through_the_negatives_term_only():
    e, labels = small_batch(seed=6)
    x = e.clone().requires_grad_(True)
    loss = soprc(tau_pn=0.5)
    loss(x, labels)["ap"].backward()
    assert x.grad.abs().sum() > 0
    # no negative ranked within tau_pn of any positive: FPR's surrogate and its gradient vanish
    far = torch.tensor([[1.0, 0.0], [0.999, 0.0447], [-1.0, 0.0], [-0.999, 0.0447]], dtype=torch.float64)
    far = torch.nn.functional.normalize(far, dim=1).requires_grad_(True)
    out = StochasticAPLoss(num_classes=2, tau_pn=0.1).double()(far, torch.tensor([0, 0, 1, 1]))
    out["ap"].backward()
    assert out["ap"].item() == 0.0 and far.grad.abs().sum() == 0


def test_auxiliary_points_are_saved_and_restored_exactly():
    loss = soprc(beta=0.3)
    for seed in (1, 2):
        loss(*small_batch(seed=seed))
    copy = soprc(beta=0.3)
    copy.load_state_dict(loss.state_dict())
    assert torch.equal(copy.points, loss.points) and not torch.equal(copy.points, soprc().points)
    e, labels = small_batch(seed=9)
    assert copy(e, labels)["ap"].item() == loss(e, labels)["ap"].item()


def test_spread_scores_keeps_the_order_and_span():
    from tuneddml.losses.stochastic_ap import spread_scores

    scores = torch.tensor([[0.1, 0.4, 0.5, 0.9]], dtype=torch.float64)
    got = spread_scores(scores, 10)
    want = hand_points([0.1, 0.4, 0.5, 0.9], 10)
    assert close(got[0], want, 1e-12)
    assert bool((got[0].diff() >= 0).all())
