"""The issue-4 pair- and proxy-side methods learn: each, trained briefly, beats the untrained model
on classes it never saw.

Two levels: a tiny synthetic problem driven by a plain loop (always runs, well under a second per
method) and a real trial on ``glyphs-tiny`` through :func:`tuneddml.training.run_trial` (marked
slow)."""

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
from tuneddml.sampling import SAMPLERS

# (loss, loss params, batch sampler); margin uses its default distance-weighted miner
METHODS = [
    ("margin", {}, "m_per_class"),
    ("margin", {"beta_per_class": True}, "m_per_class"),
    ("npair", {}, "npairs"),
    ("normsoftmax", {}, "m_per_class"),
    ("softtriple", {}, "m_per_class"),
    ("multi_proxy_anchor", {}, "m_per_class"),
    ("ccp", {"schedule": "every", "every": 1}, "m_per_class"),
    ("ccp", {"base": "softtriple", "schedule": "every", "every": 1}, "m_per_class"),
    ("vmf_proxies", {}, "m_per_class"),
]
# one trial each on glyphs-tiny (about 5-10 s each on one CPU thread). CCP wraps SoftTriple there:
# re-initialising Proxy-Anchor's proxies to the embeddings of a barely trained network (all in one
# narrow cone) raises its negative term, so CCP's default base needs longer training to gain.
GLYPHS_METHODS = [m for m in METHODS if m[0] != "ccp" and m[1] != {"beta_per_class": True}] + [
    ("ccp", {"base": "softtriple", "schedule": "every", "every": 1}, "m_per_class")
]
# the synthetic problem's 10 classes have 12 training samples each: SoftTriple's default 10 centres
# per class then leave it near its untrained Recall@1 after the loop's 4 x 5 passes (unseen-class
# Recall@1 minus the untrained model's on seeds 0-3: -0.06, +0.04, +0.15, +0.04; its training-set
# Recall@1 only reaches 0.42-0.68), so the synthetic check uses 2 centres per class (+0.14, +0.24,
# +0.32, +0.10). On glyphs-tiny the default 10 learns (+0.13 and +0.12 on seeds 0 and 1).
SYNTHETIC_METHODS = [
    (name, {"proxies_per_class": 2} if (name, params) == ("softtriple", {}) else params, sampler)
    for name, params, sampler in METHODS
]
# how much each must gain over the untrained model on unseen classes where the shared LEARNS_BY
# (0.1) is too much for this budget. CCP over Proxy-Anchor, proxies initialised from the samples of
# an untrained network and re-initialised before every epoch: gains +0.067, +0.167, +0.308, +0.183
# on seeds 0-3 (after issue 13's CCP), so its check takes the mean gain of seeds 0 and 1 (+0.117)
# against 0.03, about half the smallest single-seed gain; SoftTriple with 2 centres: above.
SYNTHETIC_LEARNS_BY = {("ccp", "schedule=every-every=1"): 0.03, ("softtriple", "proxies_per_class=2"): 0.05}
SYNTHETIC_SEEDS = {("ccp", "schedule=every-every=1"): (0, 1)}
# trial settings beyond the shared 2 x 15 steps. CCP re-initialises its proxies at the start of
# epoch 2 and needs the steps after that to re-fit them: with 15 it gained +0.097, +0.023, +0.062,
# +0.091, +0.080, +0.119 on seeds 0-5 (SoftTriple alone: +0.108 or more), with 30 per epoch
# +0.148, +0.102, +0.153, +0.153, +0.142, +0.176.
GLYPHS_TRIAL = {"ccp": {"steps_per_epoch": 30}}


def _ids(methods):
    return [
        f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items()) or 'default'}"
        for name, params, _ in methods
    ]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_synthetic(name, params, sampler, seed):
    """Recall@1 on unseen classes of the untrained and the trained model, and the loss."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(rng, classes=10, per_class=12)
    x_test, y_test = unseen_classes(seed)
    model = torch.nn.Linear(SIGNAL + NUISANCE, DIM)
    loss = build_loss(name, params, num_classes=10, embedding_size=DIM)
    optimizer = torch.optim.Adam(
        [{"params": model.parameters(), "lr": 1e-2}, {"params": loss.parameters(), "lr": 1e-1}]
    )
    batches = SAMPLERS.build(sampler, {})
    labels_np = y_train.numpy()
    batches.check(labels_np, 20)

    def embed_train(idx):
        with torch.no_grad():
            return F.normalize(model(x_train[torch.as_tensor(idx)]), dim=1)

    context = SimpleNamespace(
        model=model, train_labels=labels_np, embed_train=embed_train, device=torch.device("cpu")
    )
    with torch.no_grad():
        before = recall_at_1(model(x_test), y_test)
    for epoch in range(1, 5):
        loss.on_epoch_start(epoch, context)
        for _ in range(5):
            for idx in batches.batches(labels_np, 20, rng):
                emb = model(x_train[idx])
                if loss.expects_normalized:
                    emb = F.normalize(emb, dim=1)
                total = loss(emb, y_train[idx])["total"]
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
    with torch.no_grad():
        after = recall_at_1(model(x_test), y_test)
    return before, after, loss


def test_every_own_threshold_names_a_case():
    """A key that names no case (a parameter renamed) would silently fall back to LEARNS_BY."""
    keys = {(name, "-".join(f"{k}={v}" for k, v in params.items())) for name, params, _ in SYNTHETIC_METHODS}
    assert set(SYNTHETIC_LEARNS_BY) | set(SYNTHETIC_SEEDS) <= keys


@pytest.mark.parametrize(("name", "params", "sampler"), SYNTHETIC_METHODS, ids=_ids(SYNTHETIC_METHODS))
def test_learns_on_a_synthetic_problem(name, params, sampler, one_thread):
    key = (name, "-".join(f"{k}={v}" for k, v in params.items()))
    runs = [train_synthetic(name, params, sampler, seed=seed) for seed in SYNTHETIC_SEEDS.get(key, (0,))]
    gain = sum(after - before for before, after, _ in runs) / len(runs)
    assert gain > SYNTHETIC_LEARNS_BY.get(key, LEARNS_BY), [(before, after) for before, after, _ in runs]
    if name == "ccp":
        assert all(loss.reinitialisations == 3 for _, _, loss in runs)  # before epochs 2, 3 and 4


@pytest.mark.slow
@pytest.mark.parametrize(("name", "params", "sampler"), GLYPHS_METHODS, ids=_ids(GLYPHS_METHODS))
def test_trains_on_glyphs_tiny(name, params, sampler):
    assert_learns_on_glyphs_tiny(
        {
            "loss": name,
            "sampler": sampler,
            **{f"loss.{k}": v for k, v in params.items()},
            **GLYPHS_TRIAL.get(name, {}),
        }
    )
