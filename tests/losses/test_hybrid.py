from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from handcalc import pk_batch

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES, build_loss
from tuneddml.sampling import MINERS

C, D = 4, 16


def build(params=None, seed=0):
    torch.manual_seed(seed)
    return build_loss("hybrid", params or {}, num_classes=C, embedding_size=D)


def member(name, params=None):
    cls = LOSSES.get(name).factory
    miner = MINERS.build(cls.default_miner, {}) if cls.default_miner else None
    return LOSSES.build(name, params or {}, num_classes=C, embedding_size=D, miner=miner)


@pytest.mark.parametrize("lam", [0.5, 0.2, 1.0])
def test_weighted_sum_of_pair_and_proxy_losses(lam):
    e, labels = pk_batch(seed=1)
    loss = build({"lambda": lam}, seed=4)
    torch.manual_seed(4)
    pair, proxy = member("multi_similarity"), member("proxy_anchor")
    out = loss(e, labels)
    p, q = pair(e, labels), proxy(e, labels)
    for t in ("pos", "neg"):
        torch.testing.assert_close(out[f"pair.{t}"], p[t])
        torch.testing.assert_close(out[f"proxy.{t}"], q[t])
    torch.testing.assert_close(out["total"], 2 * lam * p["total"] + 2 * (1 - lam) * q["total"])
    assert loss.term_names == ("pair.pos", "pair.neg", "proxy.pos", "proxy.neg")


def test_members_from_specs_and_gradients_reach_the_proxies():
    e, labels = pk_batch(seed=2)
    loss = build({"pair": "contrastive:lambda=0.2", "proxy": "proxy_nca:proxies_per_class=2"})
    assert loss.parts.members["pair"].lam == 0.2
    proxies = dict(loss.named_parameters())["parts.members.proxy.proxies"]
    assert proxies.shape == (C * 2, D)
    loss(e, labels)["total"].backward()
    assert proxies.grad is not None and proxies.grad.abs().sum() > 0


def test_learnable_weighting_ignores_lambda():
    e, labels = pk_batch(seed=3)
    a = build({"weighting": "learnable", "lambda": 0.1}, seed=1)
    b = build({"weighting": "learnable", "lambda": 0.9}, seed=1)
    out_a, out_b = a(e, labels), b(e, labels)
    torch.testing.assert_close(out_a["total"], out_b["total"])
    assert out_a["weights_reg"].item() == 0.0


def test_learnable_weights_stay_bounded_with_negative_members():
    # both members negative (supcon's default aggregation=mean; normsoftmax with lambda = 0.9
    # tends to -32): the unbounded form exp(-eta_k) L_k + eta_k ran both weights to ~1e16 here.
    # On the simplex: each weight in (0, 2), the two sum to 2 (a learnt 2 lambda, 2 (1 - lambda)),
    # and total >= 2 min(L_pair, L_proxy), at every one of 1,000 Adam steps
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        loss = build_loss(
            "hybrid",
            {"pair": "supcon", "proxy": "normsoftmax:lambda=0.9", "weighting": "learnable"},
            num_classes=C,
            embedding_size=8,
        )
        g = torch.Generator().manual_seed(0)
        centres = 2 * torch.randn(C, 8, generator=g)
        x = 0.5 * torch.randn(C * 4, 8, generator=g) + centres.repeat_interleave(4, 0)
        labels = torch.arange(C).repeat_interleave(4)
        model = torch.nn.Linear(8, 8)
        optimizer = torch.optim.Adam(
            [{"params": model.parameters(), "lr": 1e-3}, {"params": loss.parameters(), "lr": 1e-2}]
        )
        names = [f"{r}.{t}" for r in ("pair", "proxy") for t in loss.parts.members[r].term_names]
        to_members = torch.zeros(len(names), 2)  # L_pair, L_proxy from the terms
        for k, role in enumerate(("pair", "proxy")):
            for t, w in loss.parts.members[role].weights().items():
                to_members[names.index(f"{role}.{t}"), k] = w
        omegas, terms, totals = [], [], []
        for _ in range(1000):
            out = loss(F.normalize(model(x), dim=1), labels)
            with torch.no_grad():
                omegas.append(torch.stack(loss.parts.omegas()))
                terms.append(torch.stack([out[n] for n in names]))
                totals.append(out["total"].detach())
            optimizer.zero_grad()
            out["total"].backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    omegas, values, totals = torch.stack(omegas), torch.stack(terms) @ to_members, torch.stack(totals)
    assert torch.isfinite(omegas).all() and torch.isfinite(totals).all()
    assert (omegas > 0).all() and (omegas < 2).all(), omegas.max()
    torch.testing.assert_close(omegas.sum(dim=1), torch.full((len(omegas),), 2.0))
    assert (totals >= 2 * values.min(dim=1).values - 1e-4 * (1 + totals.abs())).all()
    assert (values < 0).all(dim=1).any(), "the test needs both members negative at some step"


@pytest.mark.parametrize(
    ("params", "field", "valid", "invalid"),
    [
        ({"pair": "proxy_anchor"}, "loss.pair", "contrastive", "proxy_anchor"),
        ({"proxy": "contrastive"}, "loss.proxy", "proxy_anchor", "contrastive"),
        ({"pair": "ensemble"}, "loss.pair", "triplet", "ensemble"),
    ],
)
def test_role_checks_name_the_valid_choices(params, field, valid, invalid):
    with pytest.raises(ConfigError) as err:
        build(params)
    assert err.value.field == field
    choices = err.value.expected.removeprefix("one of ").split(", ")
    assert valid in choices and invalid not in choices


def test_bad_member_parameter():
    with pytest.raises(ConfigError) as err:
        build({"proxy": "proxy_anchor:alpha=-1"})
    assert err.value.field == "loss.proxy:proxy_anchor.alpha"


def test_members_are_chosen_by_their_declared_family():
    """A pml pair loss is a pair member and never a proxy member (the family a loss declares, not
    whether it takes embedding_size, decides); a wrapper (ccp) is no member at all."""
    pytest.importorskip("pytorch_metric_learning")
    loss = build({"pair": "pml:TripletMarginLoss"})
    assert type(loss.parts.members["pair"]).__name__ == "PmlTripletMarginLoss"
    build({"proxy": "pml:ProxyAnchorLoss"})
    with pytest.raises(ConfigError) as err:
        build({"proxy": "pml:TripletMarginLoss"})
    assert err.value.field == "loss.proxy" and "pml:ProxyAnchorLoss" in err.value.expected
    with pytest.raises(ConfigError) as err:
        build({"pair": "pml:ProxyAnchorLoss"})
    assert err.value.field == "loss.pair" and "pml:TripletMarginLoss" in err.value.expected
    with pytest.raises(ConfigError) as err:
        build({"proxy": "ccp"})
    assert "ccp" not in err.value.expected
