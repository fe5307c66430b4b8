"""The contracts of the sampling axis, parametrised over the registries (a component added later is
covered without an edit here): batch samplers, in-batch miners and embedding augmenters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tuneddml.losses import build_loss
from tuneddml.losses.base import EpochContext
from tuneddml.registry import Registry
from tuneddml.sampling import EMBEDDING_AUGMENTERS, MINERS, SAMPLERS
from tuneddml.sampling.base import BatchSampler, EmbeddingAugmenter, Miner

NUM_CLASSES, PER_CLASS, DIM, BATCH = 16, 8, 12, 16


def _labels() -> np.ndarray:
    return np.repeat(np.arange(NUM_CLASSES), PER_CLASS)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(BATCH, DIM, generator=g), dim=1)
    return e, torch.arange(BATCH // 4).repeat_interleave(4)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_makes_seeded_full_batches_and_keeps_the_base_hooks(name):
    sampler = SAMPLERS.build(name, {})
    assert isinstance(sampler, BatchSampler)
    labels = _labels()
    sampler.check(labels, BATCH)

    def epoch(seed: int) -> list[np.ndarray]:
        fresh = SAMPLERS.build(name, {})
        out = []
        for indices in fresh.batches(labels, BATCH, np.random.default_rng(seed)):
            out.append(indices)
            fresh.observe(indices, F.normalize(torch.randn(len(indices), DIM), dim=1))  # every sampler
        return out

    batches = epoch(0)
    assert len(batches) == sampler.num_batches(labels, BATCH) and batches
    for indices in batches:
        assert len(indices) == BATCH and indices.min() >= 0 and indices.max() < len(labels)
    assert all((a == b).all() for a, b in zip(batches, epoch(0)))
    state = sampler.state_dict()
    assert isinstance(state, dict)
    sampler.load_state_dict(state)


@pytest.mark.parametrize("name", MINERS.names())
def test_every_miner_returns_indices_of_its_declared_kind(name):
    miner = MINERS.build(name, {})
    assert isinstance(miner, Miner) and miner.output in ("triplets", "pairs")
    e, labels = _batch()
    e.requires_grad_(True)
    out = tuple(miner(e, labels))
    assert len(out) == (3 if miner.output == "triplets" else 4)
    for part in out:
        assert part.dtype == torch.int64 and not part.requires_grad
        assert (part >= 0).all() and (part < BATCH).all()
    if miner.output == "triplets":
        a, p, n = out
        assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all() and (a != p).all()
    else:
        a1, p, a2, n = out
        assert (labels[a1] == labels[p]).all() and (labels[a2] != labels[n]).all()


@pytest.mark.parametrize("name", EMBEDDING_AUGMENTERS.names())
def test_every_augmenter_keeps_the_real_rows_first(name):
    torch.manual_seed(0)
    aug = EMBEDDING_AUGMENTERS.build(name, {}, num_classes=BATCH // 4, embedding_size=DIM)
    assert isinstance(aug, EmbeddingAugmenter)
    aug.attach_loss(build_loss("proxy_anchor", num_classes=BATCH // 4, embedding_size=DIM))
    labels = np.repeat(np.arange(BATCH // 4), 4)
    context = EpochContext(1, torch.nn.Identity(), labels, lambda idx: torch.zeros(len(idx), DIM), torch.device("cpu"))
    aug.train()
    aug.on_epoch_start(1, context)
    e, y = _batch(1)
    out, out_labels = aug(e, y)
    assert out.shape[1] == DIM and len(out) == len(out_labels) >= len(e)
    torch.testing.assert_close(out[: len(e)], e)
    assert (out_labels[: len(e)] == y).all()
    if aug.makes_classes:  # new classes after the real ones: labels from num_classes up
        assert set(out_labels[len(e) :].tolist()) <= set(range(BATCH // 4, BATCH // 4 + len(out)))
    else:
        assert set(out_labels.tolist()) <= set(y.tolist())


@pytest.mark.parametrize(
    ("registry", "kind"),
    [(SAMPLERS, "BatchSampler"), (MINERS, "Miner"), (EMBEDDING_AUGMENTERS, "EmbeddingAugmenter")],
)
def test_a_component_outside_the_contract_is_refused_at_registration(registry: Registry, kind):
    class Stray:
        def __init__(self) -> None:
            pass

    with pytest.raises(ValueError, match=kind):
        registry.register("stray_probe")(Stray)
    assert "stray_probe" not in registry


def test_a_miner_must_declare_its_output():
    class Silent(Miner):
        def __init__(self) -> None:
            pass

    with pytest.raises(ValueError, match="output"):
        MINERS.register("silent_probe")(Silent)
