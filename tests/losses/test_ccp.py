"""Chance-constrained proxies: the k-centre choice, the re-initialisation and its schedule."""

from __future__ import annotations

import itertools
import typing
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES, build_loss
from tuneddml.losses.ccp import ChanceConstrainedProxies, farthest_point_picks

BASES = typing.get_args(typing.get_type_hints(ChanceConstrainedProxies.__init__)["base"])


def _radius(points: torch.Tensor, picks) -> float:
    return torch.cdist(points, points[list(picks)]).min(dim=1).values.max().item()


def test_picks_cover_each_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    points = centres.repeat_interleave(10, dim=0) + 0.3 * torch.randn(30, 2, generator=g)
    picks = farthest_point_picks(points, 3)
    assert sorted(p // 10 for p in picks) == [0, 1, 2]


@pytest.mark.parametrize("seed", range(5))
def test_covering_radius_within_twice_the_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(9, 3, generator=g)
    picks = farthest_point_picks(points, 3)
    assert len(set(picks)) == 3
    best = min(_radius(points, c) for c in itertools.combinations(range(9), 3))
    assert _radius(points, picks) <= 2 * best + 1e-9
    # the first pick is the point nearest the mean
    assert picks[0] == int(torch.cdist(points, points.mean(0, keepdim=True)).argmin())
    assert farthest_point_picks(points[:2], 3) in ([0, 1], [1, 0])


def _context(num_classes=3, sizes=(8, 8, 2), dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    table = F.normalize(torch.randn(len(labels), dim, generator=g), dim=1)
    calls = []

    def embed_train(idx):
        calls.append(np.asarray(idx))
        return table[torch.as_tensor(idx)]

    return (
        SimpleNamespace(train_labels=labels, embed_train=embed_train, model=None, device=torch.device("cpu")),
        table,
        calls,
    )


def test_reinitialise_sets_proxies_to_chosen_embeddings():
    ctx, table, calls = _context()
    torch.manual_seed(0)
    loss = build_loss(
        "ccp", {"base": "normsoftmax", "proxies_per_class": 3, "pool": 5}, num_classes=3, embedding_size=6
    )
    old = loss.base.proxies.detach().clone()
    loss.reinitialise(ctx, seed=(0, 4))
    new = loss.base.proxies.detach()
    (asked,) = calls
    labels = ctx.train_labels
    for c in range(3):
        pool = asked[labels[asked] == c]
        assert len(pool) == min(5, (labels == c).sum())
        k = min(3, len(pool))
        picks = farthest_point_picks(table[torch.as_tensor(pool)], 3)
        for j in range(k):
            row = 3 * c + j
            want = table[pool[picks[j]]] * old[row].norm()
            torch.testing.assert_close(new[row], want)
        for j in range(k, 3):  # a class with fewer samples keeps its remaining proxies
            torch.testing.assert_close(new[3 * c + j], old[3 * c + j])
    assert loss.reinitialisations == 1


def test_schedule_every_n_epochs_after_the_first():
    ctx, _, _ = _context()
    loss = build_loss("ccp", {"every": 2}, num_classes=3, embedding_size=6)
    done = []
    for epoch in range(1, 8):
        before = loss.reinitialisations
        loss.on_epoch_start(epoch, ctx)
        if loss.reinitialisations > before:
            done.append(epoch)
    assert done == [3, 5, 7]


def test_reinitialisation_is_seeded():
    results = []
    for _ in range(2):
        ctx, _, _ = _context(sizes=(30, 30, 30))
        torch.manual_seed(1)
        loss = build_loss("ccp", {"pool": 10}, num_classes=3, embedding_size=6)
        loss.on_epoch_start(4, ctx)
        results.append(loss.base.proxies.detach().clone())
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("base", BASES)
def test_wraps_every_listed_proxy_loss(base):
    torch.manual_seed(0)
    loss = build_loss(
        "ccp", {"base": base, "lambda": 0.3, "proxies_per_class": 2}, num_classes=3, embedding_size=6
    )
    torch.manual_seed(0)
    plain = build_loss(base, {"lambda": 0.3, "proxies_per_class": 2}, num_classes=3, embedding_size=6)
    assert loss.term_names == plain.term_names and loss.weights() == plain.weights()
    assert loss.expects_normalized == plain.expects_normalized
    assert loss.base.proxies.shape == (6, 6)
    e = torch.randn(6, 6)
    if loss.expects_normalized:
        e = F.normalize(e, dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.manual_seed(1)  # the same Monte Carlo draws for vmf_proxies
    ours = loss(e, labels)
    torch.manual_seed(1)
    theirs = plain(e, labels)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name])
    # the proxies are the loss's own parameters, so the trainer trains them
    assert any(p is loss.base.proxies for p in loss.parameters())


def test_vmf_base_reads_the_norm():
    loss = build_loss("ccp", {"base": "vmf_proxies"}, num_classes=3, embedding_size=6)
    assert loss.expects_normalized is False and ChanceConstrainedProxies.expects_normalized is True


def test_base_must_be_a_proxy_loss():
    with pytest.raises(ConfigError) as err:
        build_loss("ccp", {"base": "triplet"}, num_classes=3, embedding_size=6)
    assert err.value.field == "loss.base" and "proxy_anchor" in err.value.expected
    for base in BASES:
        assert base in LOSSES
