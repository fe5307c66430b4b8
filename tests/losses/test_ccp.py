# Long file: CCP's four published parts (k-centre from the proxies, the proximal term, the patience trigger, the optimiser reset) each checked by hand, plus its resume and cross-validated trials.
"""Chance-constrained proxies: the seeded k-centre choice, the initialisation from samples, the
patience trigger, the proximal term, the optimiser-state reset and an exact resume."""

from __future__ import annotations

import functools
import math
import typing
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES, build_loss
from tuneddml.losses.base import EpochContext
from tuneddml.losses.ccp import ChanceConstrainedProxies, farthest_point_picks

BASES = typing.get_args(typing.get_type_hints(ChanceConstrainedProxies.__init__)["base"])


# -- k-centre seeded by the current proxies ---------------------------------------------------
def test_picks_the_points_farthest_from_the_seeds():
    # five points on a line; the seed sits at 0: the farthest point from it is 10, then the point
    # farthest from {0, 10} is 5 (5 from both), then from {0, 10, 5}: 2 (2 away) beats 6.5 (1.5)
    points = torch.tensor([[0.5], [2.0], [5.0], [6.5], [10.0]])
    seeds = torch.tensor([[0.0]])
    assert farthest_point_picks(points, 1, seeds) == [4]
    assert farthest_point_picks(points, 3, seeds) == [4, 2, 1]
    # a seed near 10 turns the order round: 0.5 is now the worst covered
    assert farthest_point_picks(points, 2, torch.tensor([[9.0]])) == [0, 2]
    # no seed: start from the first point, then the farthest from it
    assert farthest_point_picks(points, 2) == [0, 4]
    # more picks than points: each point once
    assert sorted(farthest_point_picks(points[:2], 5, seeds)) == [0, 1]


def test_picks_never_repeat_with_duplicate_points():
    points = torch.zeros(4, 3)
    assert sorted(farthest_point_picks(points, 4, torch.ones(1, 3))) == [0, 1, 2, 3]


# -- a context of hand-made embeddings ----------------------------------------------------------
def _context(table: torch.Tensor, labels: np.ndarray, model=None, metrics=None, resets=None):
    calls = []

    def embed_train(idx):
        calls.append(np.asarray(idx))
        return table[torch.as_tensor(idx)]

    def reset(params):
        if resets is not None:
            resets.append(list(params))

    ctx = EpochContext(
        epoch=1,
        model=model if model is not None else torch.nn.Linear(2, 2),
        train_labels=labels,
        embed_train=embed_train,
        device=torch.device("cpu"),
        metrics=metrics if metrics is not None else {},
        reset_optimizer_state=reset,
    )
    return ctx, calls


def _loss(**params):
    torch.manual_seed(0)
    params.setdefault("base", "normsoftmax")
    return build_loss("ccp", params, num_classes=2, embedding_size=2)


def _unit(angles_deg):
    a = torch.tensor(angles_deg, dtype=torch.float32) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=1)


def test_initialised_from_samples_before_epoch_one():
    # class 0: three samples at 0, 10 and 90 degrees, class 1 one sample at 180: with pool 12 the
    # whole class is the pool (drawn in a random order); K = 2
    table = _unit([0.0, 10.0, 90.0, 180.0])
    labels = np.array([0, 0, 0, 1])
    resets = []
    ctx, calls = _context(table, labels, resets=resets)
    loss = _loss(proxies_per_class=2)
    old = loss.base.proxies.detach().clone()
    loss.on_epoch_start(1, ctx)
    (asked,) = calls
    new = loss.base.proxies.detach()
    # class 0: the first pool point, then the point farthest from it (by hand, for each order)
    pool0 = [int(i) for i in asked if labels[i] == 0]
    first = pool0[0]
    angles = {0: 0.0, 1: 10.0, 2: 90.0}
    far = max((i for i in pool0 if i != first), key=lambda i: abs(angles[i] - angles[first]))
    for row, idx in ((0, first), (1, far)):
        torch.testing.assert_close(new[row], table[idx] * old[row].norm())
    torch.testing.assert_close(new[2], table[3] * old[2].norm())
    torch.testing.assert_close(new[3], old[3])  # class 1 has one sample: its second proxy stays
    assert loss.reinitialisations == 0 and loss.started
    assert resets and resets[0][0] is loss.base.proxies


def test_init_from_samples_can_be_switched_off():
    ctx, calls = _context(_unit([0.0, 90.0]), np.array([0, 1]))
    loss = _loss(init_from_samples=False)
    old = loss.base.proxies.detach().clone()
    loss.on_epoch_start(1, ctx)
    assert not calls
    torch.testing.assert_close(loss.base.proxies.detach(), old)


def test_a_jump_seeds_k_centre_with_the_best_proxies():
    # class 0: samples at 0, 45, 90, 135 degrees; K = 1. After epoch 1 the best proxy points at
    # 10 degrees: the sample worst covered by it is 135
    table = _unit([0.0, 45.0, 90.0, 135.0, 180.0, 200.0])
    labels = np.array([0, 0, 0, 0, 1, 1])
    loss = _loss(proxies_per_class=1, patience=1, init_from_samples=False)
    with torch.no_grad():
        loss.base.proxies.copy_(_unit([10.0, 190.0]) * 3.0)
    ctx, _ = _context(table, labels, metrics={})
    loss.on_epoch_start(1, ctx)
    ctx.metrics = {"map_at_r": 0.5}
    loss.on_epoch_start(2, ctx)  # the best so far: proxies snapshotted
    with torch.no_grad():  # training moves the proxies on; the jump seeds with the best ones
        loss.base.proxies.copy_(_unit([130.0, 190.0]) * 3.0)
    ctx.metrics = {"map_at_r": 0.4}
    loss.on_epoch_start(3, ctx)  # no improvement, patience 1: jump
    assert loss.reinitialisations == 1
    new = loss.base.proxies.detach()
    torch.testing.assert_close(new[0], table[3] * 3.0)  # 135 degrees: farthest from 10
    torch.testing.assert_close(new[1], table[4] * 3.0)  # class 1: 180 is farther from 190 than 200 is


# -- the patience trigger -------------------------------------------------------------------------
def _run_metrics(loss, values, ctx):
    """Epoch starts 1..len(values)+1, epoch e seeing values[e-2]; the epochs before which it jumped."""
    jumps = []
    loss.on_epoch_start(1, ctx)
    for epoch, value in enumerate(values, start=2):
        ctx.metrics = {"map_at_r": value, "recall_at_1": 0.0}
        before = loss.reinitialisations
        loss.on_epoch_start(epoch, ctx)
        if loss.reinitialisations > before:
            jumps.append(epoch)
    return jumps


def test_patience_fires_after_exactly_three_epochs_without_improvement():
    table = _unit([0.0, 90.0, 180.0, 270.0])
    ctx, _ = _context(table, np.array([0, 0, 1, 1]))
    loss = _loss()
    # epoch 1: 0.30 (best); 2: 0.35 (best); 3, 4: no gain; 5: +0.000005 (< 1e-5: no gain) -> jump
    # before epoch 6; then the best starts afresh: 6: 0.2 (best), 7-9 lower -> jump before 10
    values = [0.30, 0.35, 0.34, 0.35, 0.350005, 0.2, 0.1, 0.1, 0.19]
    assert _run_metrics(loss, values, ctx) == [6, 10]
    assert loss.reinitialisations == 2 and loss.stale_epochs == 0


def test_fixed_period_schedule():
    ctx, _ = _context(_unit([0.0, 90.0]), np.array([0, 1]))
    loss = _loss(schedule="every", every=2)
    assert _run_metrics(loss, [0.1] * 6, ctx) == [3, 5, 7]


def test_monitor_must_be_reported():
    ctx, _ = _context(_unit([0.0, 90.0]), np.array([0, 1]))
    loss = _loss(monitor="recall_at_999")
    loss.on_epoch_start(1, ctx)
    ctx.metrics = {"map_at_r": 0.3}
    with pytest.raises(ConfigError) as err:
        loss.on_epoch_start(2, ctx)
    assert err.value.field == "loss.monitor" and "map_at_r" in err.value.expected


def test_without_metrics_the_training_loss_is_watched():
    # a split=test trial hands no metrics: the base loss's mean over the epoch (lower is better)
    table = _unit([0.0, 90.0, 180.0, 270.0])
    ctx, _ = _context(table, np.array([0, 0, 1, 1]))
    loss = _loss(patience=2, init_from_samples=False, proxies_per_class=2)
    with torch.no_grad():
        loss.base.proxies.copy_(_unit([0.0, 10.0, 180.0, 190.0]))
    y = torch.tensor([0, 0, 1, 1])
    good = _unit([0.0, 5.0, 180.0, 185.0])  # each sample at its class's proxies
    bad = _unit([180.0, 185.0, 0.0, 5.0])  # each at the other class's
    plain = build_loss("normsoftmax", {"proxies_per_class": 2}, num_classes=2, embedding_size=2)
    with torch.no_grad():
        plain.proxies.copy_(loss.base.proxies)
    assert plain(good, y)["total"] < plain(bad, y)["total"]  # independent: which epoch is better
    loss.train()
    loss.on_epoch_start(1, ctx)
    jumps = []
    for epoch, batch in enumerate([bad, good, bad, bad], start=2):
        for _ in range(2):
            loss(batch, y)  # one epoch's training batches
        before = loss.reinitialisations
        loss.on_epoch_start(epoch, ctx)
        if loss.reinitialisations > before:
            jumps.append(epoch)
    # start of 2: first value (best); 3: better (best); 4, 5: worse twice -> jump before 5
    assert jumps == [5]


# -- the proximal term --------------------------------------------------------------------------
def test_proximal_term_by_hand():
    model = torch.nn.Linear(3, 2)
    table = _unit([0.0, 90.0, 180.0, 270.0])
    ctx, _ = _context(table, np.array([0, 0, 1, 1]), model=model)
    loss = _loss(proximal=0.01, proximal_decay=0.5, patience=1)
    e = F.normalize(torch.randn(4, 2, generator=torch.Generator().manual_seed(1)), dim=1)
    y = torch.tensor([0, 0, 1, 1])
    loss.on_epoch_start(1, ctx)
    assert loss(e, y)["proximal"].item() == 0.0  # lambda_0 = 0: no anchor before the first jump
    ctx.metrics = {"map_at_r": 0.5}
    loss.on_epoch_start(2, ctx)  # best: these weights are theta*
    best = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    ctx.metrics = {"map_at_r": 0.1}
    loss.on_epoch_start(3, ctx)  # jump: the anchor is theta* (not the current weights)
    with torch.no_grad():
        model.weight[0, 0] += 0.2
    out = loss(e, y)
    sq = sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(model.parameters(), best, strict=True))
    lam = 0.01 * 0.5**1
    assert out["proximal"].item() == pytest.approx(0.5 * lam * sq, rel=1e-6)
    assert sq == pytest.approx(8 * 0.1**2 - 0.1**2 + 0.3**2, rel=1e-5)  # 6 + 2 weights, one moved 0.3
    base_total = sum(loss.weights()[t] * out[t] for t in loss.base.term_names)
    torch.testing.assert_close(out["total"], base_total + out["proximal"])
    assert out["reinitialisations"].item() == 1.0 and loss.weights()["reinitialisations"] == 0.0
    # its gradient on the weights is lambda (theta - theta*), as the official gradient transformer adds
    model.zero_grad()
    out["proximal"].backward()
    torch.testing.assert_close(model.weight.grad, lam * (model.weight.detach() - best[0]))
    assert not any(p is model.weight for p in loss.parameters())  # the network is no loss parameter


@functools.cache
def _tiny_dataset():
    from tuneddml.data import DATASETS

    return DATASETS.build("glyphs-tiny", {}, field="dataset", root=None, image_size=32)


# -- the optimiser's state ----------------------------------------------------------------------
def test_a_jump_drops_the_proxies_adam_moments_through_the_trainer():
    from tuneddml.config import TrialConfig
    from tuneddml.training.loop import Trainer

    config = TrialConfig.from_flat(
        {
            "dataset": "glyphs-tiny",
            "loss": "ccp",
            "loss.schedule": "every",
            "loss.every": 1,
            "loss.proxies_per_class": 2,
            "epochs": 2,
            "steps_per_epoch": 2,
            "batch_size": 16,
            "eval_ap": False,
            "eval_nmi": False,
            "threads": 1,
            "device": "cpu",
        }
    )
    trainer = Trainer(config, dataset=_tiny_dataset())
    trainer.train_epoch()
    proxies = trainer.loss.base.proxies
    weight = next(trainer.model.parameters())
    assert int(trainer.optimizer.state[proxies]["step"]) == 2
    assert int(trainer.optimizer.state[weight]["step"]) == 2
    trainer.train_epoch()  # a jump before epoch 2 (every=1): Adam starts the proxies afresh
    assert trainer.loss.reinitialisations == 1
    assert int(trainer.optimizer.state[proxies]["step"]) == 2
    assert int(trainer.optimizer.state[weight]["step"]) == 4  # the network's moments stay
    # the trainer's hook drops exactly the parameters it is given
    trainer._context(3).reset_optimizer_state([weight])
    assert weight not in trainer.optimizer.state and proxies in trainer.optimizer.state


# -- checkpoints --------------------------------------------------------------------------------
RESUME = {
    "dataset": "glyphs-tiny",
    "loss": "ccp",
    "loss.patience": 1,
    "loss.proximal": 0.01,
    "loss.proxies_per_class": 2,
    "epochs": 4,
    "steps_per_epoch": 3,
    "batch_size": 16,
    "eval_ap": False,
    "eval_nmi": False,
    "threads": 1,
    "device": "cpu",
}


def test_resume_is_exact(tmp_path):
    from tuneddml.config import TrialConfig
    from tuneddml.training.loop import Trainer

    config = TrialConfig.from_flat(RESUME)
    data = _tiny_dataset()
    whole = Trainer(config, dataset=data)
    whole.run()
    first = Trainer(config.replace(epochs=2), dataset=data)
    first.run()
    first.save(tmp_path / "state.pt")
    assert first.loss.best > -math.inf  # mid-patience state travels in the checkpoint
    second = Trainer(config, dataset=data)
    second.restore(tmp_path / "state.pt")
    assert second.last_metrics == first.last_metrics and second.loss.best == first.loss.best
    second.run()
    assert whole.loss.reinitialisations >= 1
    assert second.loss.reinitialisations == whole.loss.reinitialisations
    assert [r.metrics for r in second.history] == [r.metrics for r in whole.history]
    torch.testing.assert_close(second.loss.base.proxies, whole.loss.base.proxies, rtol=0, atol=0)
    for a, b in zip(second.loss._anchor, whole.loss._anchor, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_split_test_trial_hands_no_metrics():
    from tuneddml.config import TrialConfig
    from tuneddml.training.loop import Trainer

    trainer = Trainer(
        TrialConfig.from_flat({**RESUME, "split": "test", "epochs": 1}), dataset=_tiny_dataset()
    )
    trainer.last_metrics = {"map_at_r": 0.5}
    assert trainer._context(2).metrics == {}
    val = Trainer(TrialConfig.from_flat({**RESUME, "epochs": 1}), dataset=_tiny_dataset())
    val.last_metrics = {"map_at_r": 0.5}
    assert val._context(2).metrics == {"map_at_r": 0.5}


def test_each_fold_model_watches_its_own_validation_fold():
    from tuneddml.config import TrialConfig
    from tuneddml.results.schema import fold_key
    from tuneddml.training import FoldsTrainer

    config = TrialConfig.from_flat(
        {**RESUME, "cross_validate": True, "num_folds": 2, "epochs": 1, "steps_per_epoch": 1}
    )
    trainer = FoldsTrainer(config)
    trainer.run()
    record = trainer.history[-1].metrics
    for i, fold in enumerate(trainer.folds):
        assert fold._context(2).metrics["map_at_r"] == record[fold_key(i, "map_at_r")]


# -- the wrapper --------------------------------------------------------------------------------
def test_reinitialisation_is_seeded():
    results = []
    g = torch.Generator().manual_seed(0)
    table = F.normalize(torch.randn(90, 2, generator=g), dim=1)
    labels = np.repeat(np.arange(2), 45)
    for _ in range(2):
        ctx, _ = _context(table, labels)
        loss = _loss(pool=10)
        loss.on_epoch_start(1, ctx)
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
    assert loss.term_names == (*plain.term_names, "proximal", "reinitialisations")
    assert loss.weights() == {**plain.weights(), "proximal": 1.0, "reinitialisations": 0.0}
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
    for name in theirs:  # before any jump: the base loss, the proximal term 0
        torch.testing.assert_close(ours[name], theirs[name])
    assert ours["proximal"].item() == 0.0
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


def test_duck_typed_context_without_the_new_fields():
    # contexts written before the metrics / reset fields (plain namespaces) still work
    ctx = SimpleNamespace(
        model=torch.nn.Linear(2, 2),
        train_labels=np.array([0, 1]),
        embed_train=lambda idx: _unit([0.0, 90.0])[torch.as_tensor(idx)],
        device=torch.device("cpu"),
    )
    loss = _loss(schedule="every", every=1)
    loss.on_epoch_start(1, ctx)
    loss.on_epoch_start(2, ctx)
    assert loss.reinitialisations == 1
