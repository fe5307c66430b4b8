from __future__ import annotations

import pytest
import torch
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
