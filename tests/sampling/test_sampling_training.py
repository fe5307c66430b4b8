"""The issue-4 batch samplers and embedding augmenters help a model learn: trained briefly with each,
a model beats its untrained self on classes it never saw.

Two levels, as for the losses: a small synthetic problem driven by a plain loop that also feeds
the samplers their ``observe`` hook (always runs), and real trials on ``glyphs-tiny`` through
:func:`tuneddml.training.run_trial` (slow)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.synthetic import (
    DIM,
    LEARNS_BY,
    NUISANCE,
    SIGNAL,
    assert_learns_on_glyphs_tiny,
    make_data,
    recall_at_1,
    unseen_classes,
)
from tuneddml.losses import build_loss
from tuneddml.sampling import EMBEDDING_AUGMENTERS, SAMPLERS

# (sampler, sampler params, embedding augmenter, augmenter params)
METHODS = [
    ("class_representatives", {"hold": 5}, "none", {}),
    ("class_representatives", {"hold": 5, "hard_fraction": 0.5}, "none", {}),
    ("hierarchical", {"classes_per_group": 2, "group_size": 3}, "none", {}),
    ("hierarchical", {"classes_per_group": 2, "group_size": 3, "grouping": "random"}, "none", {}),
    ("m_per_class", {}, "das", {}),
    ("m_per_class", {}, "iaa", {"update_every": 1}),
    ("m_per_class", {}, "iaa", {"estimate": "batch"}),
]


def _id(method) -> str:
    sampler, sp, aug, ap = method
    params = {**sp, **ap}
    return "-".join([sampler, aug, *(f"{k}={v}" for k, v in params.items())])


IDS = [_id(m) for m in METHODS]


def train_synthetic(sampler, sampler_params, aug, aug_params, seed):
    """Recall@1 on unseen classes of the untrained and the trained model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        x_train, y_train = make_data(rng, classes=12, per_class=10)
        x_test, y_test = unseen_classes(seed)
        model = torch.nn.Linear(SIGNAL + NUISANCE, DIM)
        loss = build_loss("multi_similarity", num_classes=12, embedding_size=DIM)
        batches = SAMPLERS.build(sampler, sampler_params, field="sampler")
        augmenter = None
        if aug != "none":
            augmenter = EMBEDDING_AUGMENTERS.build(aug, aug_params, num_classes=12, embedding_size=DIM)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        labels_np = y_train.numpy()
        batches.check(labels_np, 24)

        def embed_train(idx):
            with torch.no_grad():
                return F.normalize(model(x_train[torch.as_tensor(idx)]), dim=1)

        context = SimpleNamespace(model=model, train_labels=labels_np, embed_train=embed_train)
        with torch.no_grad():
            before = recall_at_1(model(x_test), y_test)
        for epoch in range(1, 5):
            if hasattr(augmenter, "on_epoch_start"):  # optional, as in the trainer
                augmenter.on_epoch_start(epoch, context)
            for _ in range(3):
                for idx in batches.batches(labels_np, 24, rng):
                    emb = F.normalize(model(x_train[idx]), dim=1)
                    if hasattr(batches, "observe"):
                        batches.observe(idx, emb.detach())
                    y = y_train[idx]
                    if augmenter is not None:
                        emb, y = augmenter(emb, y)
                    total = loss(emb, y)["total"]
                    optimizer.zero_grad()
                    total.backward()
                    optimizer.step()
        with torch.no_grad():
            after = recall_at_1(model(x_test), y_test)
        return before, after
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("sampler", "sampler_params", "aug", "aug_params"), METHODS, ids=IDS)
def test_learns_on_a_synthetic_problem(sampler, sampler_params, aug, aug_params):
    before, after = train_synthetic(sampler, sampler_params, aug, aug_params, seed=0)
    assert after > before + LEARNS_BY, (before, after)


GLYPH_METHODS = [
    ("class_representatives", {}, "none", {}),
    ("hierarchical", {"classes_per_group": 2, "group_size": 4, "grouping": "random"}, "none", {}),
    ("m_per_class", {}, "das", {}),
    ("m_per_class", {}, "iaa", {"update_every": 1}),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sampler", "sampler_params", "aug", "aug_params"), GLYPH_METHODS, ids=[_id(m) for m in GLYPH_METHODS]
)
def test_trains_on_glyphs_tiny(sampler, sampler_params, aug, aug_params):
    assert_learns_on_glyphs_tiny(
        {
            "loss": "multi_similarity",
            "sampler": sampler,
            "embedding_aug": aug,
            **{f"sampler.{k}": v for k, v in sampler_params.items()},
            **{f"embedding_aug.{k}": v for k, v in aug_params.items()},
        }
    )
