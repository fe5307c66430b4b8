"""The issue-4 ranking, Bayesian, combination and regulariser losses learn: each one, trained for a
few steps, beats the untrained model on classes it never saw.

Two levels: a tiny synthetic problem driven by a plain loop (always runs, well under a second per
loss) and a real trial on ``glyphs-tiny`` through :func:`tuneddml.training.run_trial`."""

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

LOSSES_UNDER_TEST = [
    ("roadmap", {}),
    ("stochastic_ap", {}),
    ("contrastive_bayesian", {}),
    ("hybrid", {}),
    ("ensemble", {}),
    ("ensemble", {"weighting": "learnable"}),
    ("lsd", {}),
]


@pytest.fixture
def one_thread():
    # tiny matrices: a second thread only adds contention on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_synthetic(name, params, seed):
    """Recall@1 on unseen classes of the untrained and the trained model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(rng, classes=8, per_class=12)
    x_test, y_test = unseen_classes(seed)
    model = torch.nn.Linear(SIGNAL + NUISANCE, DIM)
    loss = build_loss(name, params, num_classes=8, embedding_size=DIM)
    optimizer = torch.optim.Adam(
        [{"params": model.parameters(), "lr": 1e-2}, {"params": loss.parameters(), "lr": 1e-2}]
    )
    context = SimpleNamespace(model=model, train_labels=y_train.numpy(), epoch=1)
    with torch.no_grad():
        before = recall_at_1(model(x_test), y_test)
    for epoch in range(1, 4):
        loss.on_epoch_start(epoch, context)
        for _ in range(25):
            # m-per-class batch: 6 classes x 4 samples
            classes = rng.choice(8, size=6, replace=False)
            idx = np.concatenate(
                [rng.choice(np.flatnonzero(y_train.numpy() == c), 4, replace=False) for c in classes]
            )
            emb = model(x_train[idx])
            if loss.expects_normalized:
                emb = F.normalize(emb, dim=1)
            total = loss(emb, y_train[idx])["total"]
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    with torch.no_grad():
        after = recall_at_1(model(x_test), y_test)
    return before, after


@pytest.mark.parametrize(("name", "params"), LOSSES_UNDER_TEST)
def test_learns_on_a_synthetic_problem(name, params, one_thread):
    before, after = train_synthetic(name, params, seed=0)
    assert after > before + LEARNS_BY, (before, after)


# trial settings for a loss whose glyphs-tiny check needs more than the shared 2 x 15 steps: LSD
# distils towards the previous epoch's model, which can hold epoch 2 back (seed 4: +0.074 after
# epoch 1, +0.017 after epoch 2); over 4 epochs it learns by +0.11 or more on seeds 0-7
# (see tuneddml/losses/lsd.py)
GLYPHS_TRIAL = {"lsd": {"epochs": 4}}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "params"), LOSSES_UNDER_TEST)
def test_trains_on_glyphs_tiny(name, params):
    assert_learns_on_glyphs_tiny(
        {"loss": name, **{f"loss.{k}": v for k, v in params.items()}, **GLYPHS_TRIAL.get(name, {})}
    )
