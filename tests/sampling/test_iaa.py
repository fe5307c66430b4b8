from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.sampling import EMBEDDING_AUGMENTERS
from tuneddml.sampling.iaa import class_moments, merge_moments

C, D = 5, 6


def _build(**params):
    return EMBEDDING_AUGMENTERS.build("iaa", params, num_classes=C, embedding_size=D).double()


def _data(sizes=(6, 5, 2, 1, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    centres = torch.randn(C, D, generator=g, dtype=torch.float64)
    spread = 0.1 + torch.rand(C, D, generator=g, dtype=torch.float64)
    emb = centres[labels] + spread[labels] * torch.randn(len(labels), D, generator=g, dtype=torch.float64)
    return emb, labels


def _context(emb, labels, calls=None):
    def embed_train(idx):
        if calls is not None:
            calls.append(len(idx))
        return emb[torch.as_tensor(idx)]

    return SimpleNamespace(train_labels=labels.numpy(), embed_train=embed_train)


def _moments(rows):
    rows = torch.stack(rows)
    return rows.mean(0), rows.var(0, unbiased=False)


def test_merging_moments_with_sample_weights_pools_the_samples():
    emb, _ = _data()
    a, b = emb[:7], emb[7:20]
    ma, va = _moments(list(a))
    mb, vb = _moments(list(b))
    m, v = merge_moments(
        ma[None], va[None], mb[None], vb[None], torch.tensor([13 / 20.0], dtype=torch.float64)
    )
    mu, var = _moments(list(emb[:20]))
    torch.testing.assert_close(m[0], mu)
    torch.testing.assert_close(v[0], var)


def test_class_moments_by_a_loop():
    emb, labels = _data()
    count, mean, var = class_moments(emb, labels, C + 1)
    for c in range(C):
        mu, v = _moments([emb[i] for i in range(len(labels)) if labels[i] == c])
        torch.testing.assert_close(mean[c], mu)
        torch.testing.assert_close(var[c], v)
    assert count.tolist() == [6, 5, 2, 1, 8, 0]


def test_running_estimate_with_and_without_the_momentum_floor():
    emb, labels = _data()
    halves = [torch.arange(0, len(labels), 2), torch.arange(1, len(labels), 2)]
    pooled = _build(momentum=1.0)  # weight n_new / (n_old + n_new): exact pooling
    for h in halves:
        pooled.update(emb[h], labels[h])
    _, mean, var = class_moments(emb, labels, C)
    torch.testing.assert_close(pooled.mean, mean)
    torch.testing.assert_close(pooled.var, var)
    assert pooled.seen.tolist() == [6, 5, 2, 1, 8]

    floored = _build(momentum=0.2)  # the new estimate weighs at least 0.8
    floored.update(emb[halves[0]], labels[halves[0]])
    floored.update(emb[halves[1]], labels[halves[1]])
    _, m0, v0 = class_moments(emb[halves[0]], labels[halves[0]], C)
    _, m1, v1 = class_moments(emb[halves[1]], labels[halves[1]], C)
    c = 0  # class 0: 3 + 3 samples, so w = max(3/6, 0.8) = 0.8
    torch.testing.assert_close(floored.mean[c], 0.2 * m0[c] + 0.8 * m1[c])
    torch.testing.assert_close(floored.var[c], 0.2 * v0[c] + 0.8 * v1[c] + 0.16 * (m0[c] - m1[c]) ** 2)


def test_neighbour_correction_by_a_plain_loop():
    emb, labels = _data()
    aug = _build(num_neighbors=2, gamma=0.3, beta=0.5, momentum=1.0)
    aug.on_epoch_start(1, _context(emb, labels))  # epoch mode: estimate from all, then correct
    n = [6, 5, 2, 1, 8]
    mean, var = aug.mean, aug.var

    def dist(x, y):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(x.tolist(), y.tolist(), strict=True)))

    usable = [c for c in range(C) if n[c] > 1]
    global_var = sum(n[c] * var[c] for c in usable) / sum(n[c] for c in usable)
    for c in range(C):
        others = [j for j in usable if j != c]
        d_mu = {j: dist(mean[c], mean[j]) for j in others}
        d_var = {j: dist(var[c], var[j]) for j in others}
        near = sorted(others, key=lambda j: d_mu[j])[:2]

        def scaled(d, j):
            lo, hi = min(d.values()), max(d.values())
            return (d[j] - lo) / (hi - lo)

        a = {j: n[j] * math.exp(-(scaled(d_mu, j) ** 2) / 2 - scaled(d_var, j) ** 2 / 2) for j in near}
        neighbour = sum(a[j] * var[j] for j in near) / sum(a.values())
        w = 1 / (1 + math.log(1 + 0.5 * (n[c] - 1)))
        expected = (1 - w) * var[c] + w * (0.3 * global_var + 0.7 * neighbour)
        torch.testing.assert_close(aug.class_variance(torch.tensor([c]))[0], expected)
    # a singleton class relies wholly on the correction
    assert aug.correction_weight[3] == 1.0


def test_without_correction_the_class_variance_is_its_own():
    emb, labels = _data()
    aug = _build(neighbor_correction=False, momentum=1.0)
    aug.on_epoch_start(1, _context(emb, labels))
    torch.testing.assert_close(aug.class_variance(labels), aug.var[labels])


def test_synthetic_samples_spread_with_the_class_variance():
    emb, labels = _data(sizes=(40, 40, 40, 40, 40))
    aug = _build(strength=0.5, num_synthetic=64, normalize=False, neighbor_correction=False, momentum=1.0)
    aug.on_epoch_start(1, _context(emb, labels))
    torch.manual_seed(0)
    out, out_labels = aug(emb, labels)
    assert out.shape == (65 * len(labels), D) and out_labels.tolist() == labels.tolist() * 65
    torch.testing.assert_close(out[: len(labels)], emb)
    noise = (out[len(labels) :].view(64, len(labels), D) - emb).reshape(-1, D)
    noise_labels = labels.repeat(64)
    for c in range(C):
        observed = noise[noise_labels == c].var(0)
        assert torch.allclose(observed, 0.5 * aug.var[c], rtol=0.1)  # 2560 draws per class


def test_zero_strength_and_warmup_and_eval_add_nothing_new():
    emb, labels = _data()
    unit = torch.nn.functional.normalize(emb, dim=1)
    aug = _build(strength=0.0, num_synthetic=2)
    aug.on_epoch_start(1, _context(unit, labels))
    out, _ = aug(unit, labels)
    torch.testing.assert_close(out, unit.repeat(3, 1))

    warm = _build(warmup_epochs=2)
    calls: list[int] = []
    warm.on_epoch_start(2, _context(unit, labels, calls))
    assert calls == [] and warm(unit, labels)[0] is unit  # no estimate, no synthesis yet
    warm.on_epoch_start(3, _context(unit, labels, calls))
    assert calls == [len(labels)] and len(warm(unit, labels)[0]) == 4 * len(labels)
    warm.eval()
    assert warm(unit, labels)[0] is unit


def test_epoch_estimates_follow_update_every():
    emb, labels = _data()
    aug = _build(update_every=2)
    calls: list[int] = []
    for epoch in range(1, 6):
        aug.on_epoch_start(epoch, _context(emb, labels, calls))
    assert len(calls) == 3  # epochs 1, 3, 5
    assert aug.class_size.tolist() == [6, 5, 2, 1, 8]


def test_batch_mode_updates_from_every_training_batch():
    emb, labels = _data()
    aug = _build(estimate="batch", momentum=1.0)
    calls: list[int] = []
    aug.on_epoch_start(1, _context(emb, labels, calls))
    assert calls == []
    aug(emb[:10], labels[:10])
    aug(emb[10:], labels[10:])
    _, mean, var = class_moments(emb, labels, C)
    torch.testing.assert_close(aug.mean, mean)
    torch.testing.assert_close(aug.var, var)


def test_gradients_reach_the_anchors_unless_detached():
    emb, labels = _data()
    for detach in (False, True):
        aug = _build(detach=detach)
        aug.on_epoch_start(1, _context(emb, labels))
        e = emb.clone().requires_grad_(True)
        out, _ = aug(e, labels)
        (out[len(labels) :] * torch.arange(D)).sum().backward()
        assert bool(e.grad.abs().sum() > 0) is (not detach)


def test_state_lives_in_buffers_and_bad_values_are_rejected():
    emb, labels = _data()
    aug = _build()
    aug.on_epoch_start(1, _context(emb, labels))
    fresh = _build()
    fresh.load_state_dict(aug.state_dict())
    torch.testing.assert_close(fresh.class_variance(labels), aug.class_variance(labels))
    for bad in ({"strength": -1}, {"gamma": 2}, {"estimate": "sometimes"}, {"num_synthetic": 0}):
        with pytest.raises(ConfigError):
            _build(**bad)
    assert np.isfinite(aug.prior_var.numpy()).all()
