from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from handcalc import pk_batch

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES, build_loss
from tuneddml.losses.base import BaseLoss
from tuneddml.losses.members import MemberLoss, WeightedMembers, is_proxy_loss, parse_member
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


def test_learnable_weights_are_kendall_weights_on_the_simplex():
    e, labels = pk_batch(seed=3)
    loss = build({"losses": "contrastive,supcon", "weighting": "learnable"})
    assert "weights_reg" in loss.term_names
    out = loss(e, labels)
    c, s = alone("contrastive")(e, labels)["total"], alone("supcon")(e, labels)["total"]
    torch.testing.assert_close(out["total"], c + s)  # theta = 0: weights 1, regulariser 0
    assert out["weights_reg"].item() == 0.0
    out["total"].backward()
    # total = sum_k 2 softmax(theta)_k L_k - sum_k log(2 softmax(theta)_k); at theta = 0,
    # d/d theta_j = K p_j (L_j - sum_k p_k L_k) - (1 - K p_j) with p = softmax(theta) = 1 / K:
    # L_j - mean L
    expected = torch.stack([(c - s) / 2, (s - c) / 2]).detach()
    torch.testing.assert_close(loss.parts.weight_logits.grad, expected)
    with torch.no_grad():
        loss.parts.weight_logits.copy_(torch.tensor([0.5, -1.0]))
    out = loss(e, labels)
    omega = 2 * torch.softmax(torch.tensor([0.5, -1.0]), dim=0)
    torch.testing.assert_close(torch.stack(loss.parts.omegas()).detach(), omega)
    torch.testing.assert_close(out["weights_reg"], -torch.log(omega).sum())  # sum_k eta_k
    expected_total = omega[0] * c + omega[1] * s - torch.log(omega).sum()
    torch.testing.assert_close(out["total"], expected_total.to(out["total"].dtype))
    assert "parts.weight_logits" in dict(loss.named_parameters())


class _Constant(BaseLoss):
    """A member whose total is a given number (a test double for a loss at a given value)."""

    term_names: ClassVar[tuple[str, ...]] = ("value",)

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, embeddings, labels):
        return self.combine({"value": embeddings.sum() * 0 + self.value})


def simplex_kendall_weights(values: list[float]) -> list[float]:
    """The minimiser over ``sum_k omega_k = K`` of ``sum_k omega_k L_k - log omega_k``:
    ``omega_k = 1 / (L_k + mu)`` with ``mu`` (found by bisection) making them sum to ``K``."""
    k, low = len(values), -min(values)
    lo, hi = low + 1e-12, low + 1e6
    for _ in range(200):
        mu = (lo + hi) / 2
        lo, hi = (mu, hi) if sum(1 / (v + mu) for v in values) > k else (lo, mu)
    return [1 / (v + (lo + hi) / 2) for v in values]


@pytest.mark.parametrize(
    "values",
    [
        [2 / 3, 2.0],  # sum_k 1 / L_k = K: exactly Kendall's 1 / L_k = (1.5, 0.5)
        [0.25, 1.0, 4.0],  # positive: Kendall's order, shifted
        [-3.0, 0.5],  # a negative member: Kendall's weight would grow without bound
        [0.0, 1.0],  # a hinge member at 0: Kendall's weight would grow without bound too
    ],
)
def test_learnt_weights_reach_kendalls_weights_on_the_simplex(values):
    parts = WeightedMembers({f"m{k}": _Constant(v) for k, v in enumerate(values)}, [], "learnable")
    loss = MemberLoss()
    loss.set_members(parts)
    e, labels = pk_batch(seed=0)
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-2)
    for _ in range(1000):
        total = loss(e, labels)["total"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    omega = torch.stack(parts.omegas()).tolist()
    assert omega == pytest.approx(simplex_kendall_weights(values), abs=2e-2)
    assert sorted(range(len(values)), key=lambda k: omega[k]) == sorted(
        range(len(values)), key=lambda k: -values[k]
    ), "the member with the larger loss gets the smaller weight"
    assert sum(omega) == pytest.approx(len(values), abs=1e-5)


SMALL = 8  # embedding size of the training tests: 1,000 steps stay well under 5 s on one thread


def build_small(params):
    torch.manual_seed(0)
    return build_loss("ensemble", params, num_classes=C, embedding_size=SMALL)


def _train_learnable(loss, steps, *, signal=True):
    """``steps`` Adam steps on a seeded 4-class, 16-sample problem: a linear model (lr 1e-3, as
    for a backbone) and the loss's parameters (lr 1e-2, the trainer's ``proxy_lr``).

    Returns each step's member weights ``(steps, K)``, member totals ``L_k`` ``(steps, K)`` and
    total ``(steps,)``, as seen by that step's forward pass."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(C * 4, 8, generator=g)
    if signal:  # separable classes; without, the members stay well above their minimum
        x = x * 0.5 + (2 * torch.randn(C, 8, generator=g)).repeat_interleave(4, 0)
    labels = torch.arange(C).repeat_interleave(4)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, SMALL)
    optimizer = torch.optim.Adam(
        [{"params": model.parameters(), "lr": 1e-3}, {"params": loss.parameters(), "lr": 1e-2}]
    )
    # L_k = sum_t w_kt * <P_k.t>: the members' term weights are fixed, so one matrix maps the terms
    names = [f"{p}.{t}" for p, m in loss.parts.members.items() for t in m.term_names]
    to_members = torch.zeros(len(names), len(loss.parts.members))
    for k, (p, m) in enumerate(loss.parts.members.items()):
        for t, w in m.weights().items():
            to_members[names.index(f"{p}.{t}"), k] = w
    omegas, terms, totals = [], [], []
    for _ in range(steps):
        out = loss(F.normalize(model(x), dim=1), labels)
        with torch.no_grad():
            omegas.append(torch.stack(loss.parts.omegas()))
            terms.append(torch.stack([out[n] for n in names]))
            totals.append(out["total"].detach())
        optimizer.zero_grad()
        out["total"].backward()
        optimizer.step()
    return torch.stack(omegas), torch.stack(terms) @ to_members, torch.stack(totals)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("losses", "kind"),
    [
        ("supcon,softtriple", "negative"),  # supcon (aggregation=mean) tends to log 3 - log 15
        ("normsoftmax:lambda=0.9,contrastive", "negative"),  # 1.8 pos + 0.2 ent tends to -32
        ("contrastive,proxy_anchor", "zero"),  # contrastive (a hinge loss) reaches 0
    ],
)
def test_learnable_weights_stay_bounded_for_any_member(losses, kind, one_thread):
    # Bound, at every step: each weight in (0, K), the weights sum to K, total >= K min_k L_k.
    # The unbounded form (exp(-eta_k) L_k + eta_k) ran the weights of these members to ~1e16
    # (negative members) and ~1e5 (contrastive at 0) in the same 1,000 steps.
    loss = build_small({"losses": losses, "weighting": "learnable"})
    k = len(loss.parts.members)
    omegas, values, totals = _train_learnable(loss, 1000)
    assert torch.isfinite(omegas).all() and torch.isfinite(totals).all()
    assert (omegas > 0).all() and (omegas < k).all(), omegas.max()
    torch.testing.assert_close(omegas.sum(dim=1), torch.full((len(omegas),), float(k)))
    floor = k * values.min(dim=1).values
    assert (totals >= floor - 1e-4 * (1 + totals.abs())).all()
    assert torch.isfinite(loss.parts.weight_logits).all()
    if kind == "negative":
        assert values.min() < -1.0, "the test needs a member with a negative total"
    else:
        assert values.min() == 0.0, "the test needs a member whose total reaches 0"


def test_positive_members_get_weights_in_kendalls_order(one_thread):
    # a problem without class structure keeps both members well above 0 (contrastive ~0.4,
    # proxy_anchor ~2.9 after 1,000 steps): Kendall et al. would weight them 1 / L_k; on the
    # simplex they get 1 / (L_k + mu), the same order with a common shift
    loss = build_small({"losses": "contrastive,proxy_anchor", "weighting": "learnable"})
    omegas, values, _ = _train_learnable(loss, 1000, signal=False)
    assert values.min() > 0.2
    omega, last = omegas[-1].tolist(), values[-1].tolist()
    assert last[1] > 3 * last[0] and omega[1] < omega[0] / 3, (last, omega)
    recent = values[-100:].mean(dim=0).tolist()  # the weights follow the recent losses
    assert omega == pytest.approx(simplex_kendall_weights(recent), abs=0.05)


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
    torch.manual_seed(2)  # the same Monte Carlo draws (vmf_proxies samples) in both calls
    out = loss(e, labels)
    torch.testing.assert_close(out["contrastive.pos"], contrastive(F.normalize(e, dim=1), labels)["pos"])
    torch.manual_seed(2)
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
