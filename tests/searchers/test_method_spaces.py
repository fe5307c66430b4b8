"""The method spaces (seed_methods, and every other shipped space) build what a trial builds.

``test_shipped_spaces.py`` checks that the shipped spaces load and that sampled points pass
``TrialConfig.from_flat``. Some combinations are only rejected later, when the Trainer builds its
components (a hybrid's member names, hierarchical batches that the class count cannot fill, DAS
scaling more channels than the embedding has), so here sampled points go one step further: the
batch sampler is built and checked against a glyphs-like label set, the loss (with its miner) and
the embedding augmenter are built, and one batch runs through augmenter and loss. No training.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tuneddml.config import TrialConfig
from tuneddml.losses import LOSSES
from tuneddml.sampling import EMBEDDING_AUGMENTERS, MINERS, SAMPLERS
from tuneddml.searchers.space import SearchSpace, list_spaces, load_space
from tuneddml.training.loop import build_loss_parts

# About the training classes of glyphs' val split (847 classes of 10 to 16 images; fold 0)
NUM_CLASSES, PER_CLASS = 800, 10
SEEDS = range(25)


@pytest.fixture(scope="module")
def seed_methods() -> SearchSpace:
    return load_space("seed_methods")  # the real validator: TrialConfig.from_flat


def _loss_choices(space: SearchSpace) -> list[str]:
    (domain,) = space.parameters["loss"]
    return list(domain.choices)


def _trial_components(config: TrialConfig) -> tuple[Any, Any, Any]:
    """Build what the Trainer builds before its first step, from data that looks like glyphs."""
    labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
    sampler = SAMPLERS.build(config.sampler, config.sampler_params, field="sampler")
    sampler.check(labels, config.batch_size)
    torch.manual_seed(config.seed)
    loss, aug = build_loss_parts(config, num_classes=NUM_CLASSES)
    return sampler, loss, aug


def _one_step(config: TrialConfig, loss: Any, aug: Any) -> dict[str, torch.Tensor]:
    """One batch of the sampler's shape (PK, or N pairs) through the augmenter and the loss."""
    k = 2 if config.sampler == "npairs" else int(config.sampler_params.get("samples_per_class", 4))
    labels = torch.arange(config.batch_size // k).repeat_interleave(k)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(len(labels), config.embedding_size, generator=g, requires_grad=True)
    x = F.normalize(emb, dim=1) if loss.expects_normalized else emb
    if aug is not None:
        aug.train()
        x, labels = aug(x, labels)
    out = loss(x, labels)
    out["total"].backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    return out


def test_seed_methods_is_a_short_tpe_search_on_glyphs(seed_methods):
    assert seed_methods.searcher == "tpe" and seed_methods.scheduler == "asha"
    assert seed_methods.fixed["dataset"] == "glyphs" and seed_methods.fixed["split"] == "val"
    # ASHA needs at least 3 epochs (the driver falls back to FIFO below); short epochs keep a trial
    # well under a minute on one core
    assert 3 <= seed_methods.fixed["epochs"] <= 4 and seed_methods.fixed["steps_per_epoch"] <= 40
    assert seed_methods.num_samples >= 2 * len(_loss_choices(seed_methods))


def test_seed_methods_ranges_over_every_registered_loss(seed_methods):
    ours = {name for name in LOSSES.names() if not name.startswith("pml:")}
    assert ours <= set(_loss_choices(seed_methods)), ours - set(_loss_choices(seed_methods))


def test_seed_methods_ranges_over_samplers_miners_and_augmenters(seed_methods):
    def choices(key: str) -> set[Any]:
        return {c for d in seed_methods.parameters[key] for c in d.choices}

    assert {"m_per_class", "class_representatives", "hierarchical", "npairs"} <= choices("sampler")
    assert {"distance_weighted", "semihard", "hard"} <= choices("miner") <= set(MINERS.names())
    assert choices("embedding_aug") == {"none", *EMBEDDING_AUGMENTERS.names()}


@pytest.mark.parametrize("loss", ["npair", "roadmap", "stochastic_ap"])
def test_seed_methods_keeps_its_documented_pairings(seed_methods, loss):
    """npair always gets N-pairs batches; the ranking losses never get DAS/IAA (whose extra rows
    make their cubic cost explode)."""
    rng = random.Random(0)
    points = [p for p in (seed_methods.sample(rng) for _ in range(600)) if p["loss"] == loss]
    assert points
    for point in points:
        assert (point["sampler"] == "npairs") == (loss == "npair")
        assert point.get("embedding_aug", "none") == "none" or loss == "npair"


def _point_for(space: SearchSpace, loss: str, rng: random.Random | None) -> dict[str, Any]:
    """The start point with ``loss`` chosen, or (with ``rng``) a random point of that loss."""
    if rng is None:
        start = space.start_point()
        start["loss"] = loss
        return space.config_of(start)
    for _ in range(5000):
        point = space.sample(rng)
        if point["loss"] == loss:
            return point
    raise AssertionError(f"no point with loss={loss} sampled")


@pytest.mark.parametrize("loss", _loss_choices(load_space("seed_methods", validate=lambda flat: None)))
def test_one_point_per_loss_builds_the_trainer_loss_and_runs_a_step(seed_methods, loss):
    for rng in (None, random.Random(loss)):
        point = _point_for(seed_methods, loss, rng)
        config = TrialConfig.from_flat({**seed_methods.fixed, **point})
        assert config.loss == loss
        _, built, aug = _trial_components(config)
        assert isinstance(built, LOSSES.get(loss).factory)
        for key, value in config.loss_params.items():  # the searched values reach the loss
            attr = {"lambda": "lam"}.get(key, key)
            if isinstance(value, float) and isinstance(getattr(built, attr, None), float):
                assert getattr(built, attr) == pytest.approx(value), key
        out = _one_step(config, built, aug)
        assert torch.isfinite(out["total"]), point


@pytest.mark.parametrize("name", list_spaces())
def test_random_points_of_every_shipped_space_build_their_trial(name):
    space = load_space(name)
    rng = random.Random(f"{name}-points")
    for _ in SEEDS:
        point = space.sample(rng)
        config = TrialConfig.from_flat({**space.fixed, **point})
        sampler, loss, aug = _trial_components(config)
        assert sampler is not None and loss is not None
        assert (aug is None) == (config.embedding_aug == "none")


def test_the_default_searcher_proposes_valid_trials_on_seed_methods(seed_methods):
    """TPE (the space's searcher) through its Ray adapter, as a search runs it: conditional keys,
    variants and one-value choices come back as valid trial configs."""
    from searcher_helpers import tune_like

    from tuneddml.searchers.ray_searcher import make_ray_searcher

    searcher = make_ray_searcher(
        seed_methods.searcher, seed_methods, metric="map_at_r", mode="max", seed=0, num_samples=30
    )

    def objective(config: dict[str, Any]) -> float:
        TrialConfig.from_flat({**seed_methods.fixed, **config})  # raises on an invalid proposal
        return random.Random(str(sorted(config.items()))).random()

    suggested = tune_like(searcher, objective, limit=30)
    assert len(suggested) == 30 and len({c["loss"] for c in suggested}) > 5
