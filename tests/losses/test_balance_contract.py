"""The balance contract (``BaseLoss.balance``): every loss with a ``lambda`` declares which two
terms it weighs, on one scale, and the declaration is true of what the loss computes.

Parametrised over the registry, so a loss added later is covered without an edit here. The
behavioural test does not read the declaration's weights: it trains free embeddings with
``lambda = 1`` (only the declared first side) and checks that positives come together, which is
what the pull side of a pos/entropy split must do. A test double that reports its two terms under
swapped names fails it (the mutation check at the end). That ``total`` weighs the declared sides
by ``2 lambda`` and ``2 (1 - lambda)`` is checked from the loss's outputs at several lambdas in
``test_contract.py`` (``check_balanced_total``, with its own mutation check).
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from tuneddml.losses import LOSSES, build_loss
from tuneddml.losses.base import Balance
from tuneddml.losses.supcon import SupConLoss

NUM_CLASSES, PER_CLASS, DIM = 4, 4, 16


def _balanced() -> list[str]:
    return [n for n in LOSSES.names() if LOSSES.get(n).param("lambda") is not None]


def _build(name: str, lam: float, **params):
    torch.manual_seed(0)
    return build_loss(name, {"lambda": lam, **params}, num_classes=NUM_CLASSES, embedding_size=DIM)


def test_the_losses_that_must_declare_a_balance_are_found():
    names = _balanced()
    for expected in ("contrastive", "supcon", "normsoftmax", "proxy_anchor", "roadmap", "hybrid", "ccp"):
        assert expected in names


@pytest.mark.parametrize("name", _balanced())
def test_declares_two_disjoint_sides_among_its_terms(name):
    loss = _build(name, 0.5)
    balance = loss.balance
    assert isinstance(balance, Balance), f"{name} has a lambda but declares no balance"
    assert balance.scale == 2.0, "one convention for every loss: lambda = 0.5 is the unweighted loss"
    sides = {t: balance.side(t) for t in loss.term_names}
    assert any(s == "first" for s in sides.values()), f"{balance.first!r} is not a term of {name}"
    assert any(s == "second" for s in sides.values()), f"{balance.second!r} is not a term of {name}"
    assert balance.first_means and balance.second_means
    assert balance.first.rstrip(".") in balance.label() and balance.second.rstrip(".") in balance.label()


def _pull_test(loss: torch.nn.Module, steps: int = 80) -> tuple[float, float]:
    """Mean positive-pair cosine similarity before and after ``steps`` Adam steps on free
    embeddings that minimise ``loss``'s total."""
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(NUM_CLASSES * PER_CLASS, DIM, generator=g).requires_grad_(True)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    params = [raw, *[p for p in loss.parameters() if p.requires_grad]]
    opt = torch.optim.Adam(params, lr=0.05)

    def pos_sim() -> float:
        e = F.normalize(raw.detach(), dim=1)
        return float((e @ e.T)[same].mean())

    before = pos_sim()
    for _ in range(steps):
        e = F.normalize(raw, dim=1) if loss.expects_normalized else raw
        total = loss(e, labels)["total"]
        opt.zero_grad()
        total.backward()
        opt.step()
    return before, pos_sim()


def _pull_side_losses() -> list[str]:
    return [n for n in _balanced() if _build(n, 0.5).balance.first == "pos"]


@pytest.mark.parametrize("name", _pull_side_losses())
def test_lambda_one_pulls_positives_together(name):
    # one proxy per class: with several, a class's samples may rightly settle on different proxies
    single = {"proxies_per_class": 1} if LOSSES.get(name).param("proxies_per_class") else {}
    before, after = _pull_test(_build(name, 1.0, **single))
    assert after > before + 0.05, f"{name} at lambda=1: positive similarity {before:.3f} -> {after:.3f}"


class _SwappedSupCon(SupConLoss):
    """A mutant: computes SupCon but reports ``pos`` under ``ent`` and ``ent`` under ``pos``."""

    balance: ClassVar[Balance | None] = SupConLoss.balance

    def combine(self, terms):
        return super().combine({"pos": terms["ent"], "ent": terms["pos"]})


def test_the_pull_test_catches_swapped_terms():
    before, after = _pull_test(SupConLoss(lam=1.0))
    assert after > before + 0.05
    before, after = _pull_test(_SwappedSupCon(lam=1.0))
    assert not after > before + 0.05, "the behavioural check would pass a loss with its terms swapped"


def test_the_catalog_states_each_balance():
    from tuneddml.catalog import catalog

    losses = catalog()["loss"]
    for name in _balanced():
        assert "lambda" in losses[name]["balance"], name
    assert losses["supcon"]["balance"].startswith("total = 2 lambda * pos + 2 (1 - lambda) * ent")
    assert "balance" not in losses["triplet"]
