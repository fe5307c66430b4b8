from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from handcalc import pk_batch

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES, build_loss
from tuneddml.losses.ensemble import is_proxy_loss, parse_member
from tuneddml.sampling import MINERS

C, D = 4, 16


def build(params=None, seed=0):
    torch.manual_seed(seed)
    return build_loss("ensemble", params or {}, num_classes=C, embedding_size=D)


def alone(name, params=None, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    cls = LOSSES.get(name).factory
    miner = MINERS.build(cls.default_miner, {}) if cls.default_miner else None
    return LOSSES.build(name, params or {}, num_classes=C, embedding_size=D, miner=miner)


def test_terms_are_the_members_prefixed_and_total_their_sum():
    e, labels = pk_batch(seed=1)
    loss = build(seed=5)
    torch.manual_seed(5)  # members built in the same order draw the same proxies
    members = {n: alone(n) for n in ("contrastive", "multi_similarity", "proxy_anchor")}
    out = loss(e, labels)
    expected_total = 0.0
    for name, member in members.items():
        ref = member(e, labels)
        for term in member.term_names:
            torch.testing.assert_close(out[f"{name}.{term}"], ref[term])
        expected_total += ref["total"]
    torch.testing.assert_close(out["total"], expected_total)
    assert loss.term_names == tuple(f"{n}.{t}" for n, m in members.items() for t in m.term_names)


def test_fixed_weights_scale_each_member():
    e, labels = pk_batch(seed=2)
    loss = build({"losses": "contrastive,supcon", "weights": "2,0.5"})
    out = loss(e, labels)
    c, s = alone("contrastive")(e, labels), alone("supcon")(e, labels)
    torch.testing.assert_close(out["total"], 2 * c["total"] + 0.5 * s["total"])
    assert loss.weights()["contrastive.pos"] == pytest.approx(2 * (2 * 0.5))  # omega * 2 lambda


def test_member_parameters_from_the_spec():
    loss = build({"losses": "contrastive:lambda=0.3:pos_margin=0.7,proxy_anchor:alpha=16"})
    members = loss.parts.members
    assert members["contrastive"].lam == 0.3 and members["contrastive"].pos_margin == 0.7
    assert members["proxy_anchor"].alpha == 16.0 and members["proxy_anchor"].margin == 0.1


def test_members_get_their_default_miner():
    loss = build({"losses": "contrastive,multi_similarity,triplet"})
    members = loss.parts.members
    assert members["contrastive"].miner is None
    assert type(members["multi_similarity"].miner).__name__ == "MultiSimilarityMiner"
    assert type(members["triplet"].miner).__name__ == "SemiHard"


def test_learnable_weights_are_uncertainty_weights():
    e, labels = pk_batch(seed=3)
    loss = build({"losses": "contrastive,supcon", "weighting": "learnable"})
    assert "weights_reg" in loss.term_names
    out = loss(e, labels)
    c, s = alone("contrastive")(e, labels)["total"], alone("supcon")(e, labels)["total"]
    torch.testing.assert_close(out["total"], c + s)  # eta = 0: weights 1, regulariser 0
    out["total"].backward()
    # d/d eta_k [exp(-eta_k) L_k + eta_k] = 1 - L_k at eta = 0
    expected = torch.stack([1 - c, 1 - s]).detach()
    torch.testing.assert_close(loss.parts.log_vars.grad, expected)
    with torch.no_grad():
        loss.parts.log_vars.copy_(torch.tensor([0.5, -1.0]))
    out = loss(e, labels)
    expected_total = np.exp(-0.5) * c + np.exp(1.0) * s + (0.5 - 1.0)
    torch.testing.assert_close(out["total"], expected_total.to(out["total"].dtype))
    assert "parts.log_vars" in dict(loss.named_parameters())


def test_proxies_of_members_are_parameters_of_the_ensemble():
    names = dict(build().named_parameters())
    assert "parts.members.proxy_anchor.proxies" in names


def test_raw_embeddings_reach_a_member_that_reads_the_norm():
    raw_member = next((n for n in LOSSES.names() if not LOSSES.get(n).factory.expects_normalized), None)
    if raw_member is None:
        pytest.skip("no registered loss reads the embedding norm")
    loss = build({"losses": f"contrastive,{raw_member}"}, seed=1)
    assert loss.expects_normalized is False
    torch.manual_seed(1)
    contrastive, raw = alone("contrastive"), alone(raw_member)
    g = torch.Generator().manual_seed(0)
    e = 3 * torch.randn(16, D, generator=g)
    labels = torch.arange(4).repeat_interleave(4)
    out = loss(e, labels)
    torch.testing.assert_close(out["contrastive.pos"], contrastive(F.normalize(e, dim=1), labels)["pos"])
    ref = raw(e, labels)
    for term in raw.term_names:
        torch.testing.assert_close(out[f"{raw_member}.{term}"], ref[term])


def test_epoch_hook_reaches_the_members():
    class Context:
        train_labels = np.array([0, 0, 1, 1, 1, 2, 3, 3])

    loss = build({"losses": "stochastic_ap,contrastive"})
    loss.on_epoch_start(1, Context())
    assert loss.parts.members["stochastic_ap"].class_counts.tolist() == [2, 3, 1, 2]


@pytest.mark.parametrize(
    ("params", "field", "expected_part"),
    [
        ({"losses": "contrastive,no_such_loss"}, "loss.losses", "proxy_anchor"),
        ({"losses": "contrastive,hybrid"}, "loss.losses", "contrastive"),
        ({"losses": "contrastive,contrastive:lambda=0.2"}, "loss.losses", "repeated"),
        ({"losses": "contrastive:lambda=0.3:pos_margin"}, "loss.losses", "param=value"),
        ({"losses": "contrastive:lambda"}, "loss.losses", "supcon"),
        ({"losses": "contrastive:margin=0.1"}, "loss.losses:contrastive.margin", "pos_margin"),
        ({"losses": "contrastive:lambda=2"}, "loss.losses:contrastive.lambda", "[0, 1]"),
        ({"losses": " , "}, "loss.losses", "contrastive"),
        ({"losses": "contrastive,supcon", "weights": "1"}, "loss.weights", "2 comma-separated"),
        ({"losses": "contrastive,supcon", "weights": "1,-1"}, "loss.weights", "non-negative"),
        ({"weighting": "adaptive"}, "loss.weighting", "learnable"),
    ],
)
def test_bad_specs_raise_config_errors(params, field, expected_part):
    with pytest.raises(ConfigError) as err:
        build(params)
    assert err.value.field == field
    assert expected_part in err.value.expected


def test_parse_member_and_proxy_family():
    assert parse_member(" proxy_anchor : alpha = 16 ", "f") == ("proxy_anchor", {"alpha": "16"})
    assert parse_member("pml:CircleLoss:m=0.4:gamma=80", "f") == (
        "pml:CircleLoss",
        {"m": "0.4", "gamma": "80"},
    )
    assert is_proxy_loss("proxy_anchor") and is_proxy_loss("proxy_nca")
    assert not is_proxy_loss("contrastive") and not is_proxy_loss("multi_similarity")
