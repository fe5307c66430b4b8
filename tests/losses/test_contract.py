"""The contract every registered loss keeps (parametrised over the registry, so losses added
later are covered without an edit here)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES, build_loss
from tuneddml.losses.base import BaseLoss
from tuneddml.losses.contrastive import ContrastiveLoss
from tuneddml.losses.softtriple import SoftTripleLoss
from tuneddml.losses.supcon import SupConLoss

NUM_CLASSES, PER_CLASS, DIM = 4, 4, 16


def _batch(dtype: torch.dtype, normalized: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(NUM_CLASSES * PER_CLASS, DIM, generator=g, dtype=dtype)
    if normalized:
        e = torch.nn.functional.normalize(e, dim=1)
    return e, torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)


def _build(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    return build_loss(name, num_classes=NUM_CLASSES, embedding_size=DIM).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LOSSES.names())
def test_terms_total_and_gradients(name, dtype):
    loss = _build(name, dtype)
    e, labels = _batch(dtype, loss.expects_normalized)
    e.requires_grad_(True)
    out = loss(e, labels)

    assert set(out) == set(loss.term_names) | {"total"}
    assert set(loss.weights()) == set(loss.term_names)
    for key, value in out.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        assert value.dtype == dtype, key
    # what ``total`` is made of: test_total_is_the_balanced_sum_of_the_terms

    out["total"].backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()
    assert e.grad.abs().sum() > 0, "no gradient reaches the embeddings"
    for pname, param in loss.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"no gradient for loss parameter {pname}"
            assert torch.isfinite(param.grad).all(), pname


# -- total = 2 lambda * first + 2 (1 - lambda) * second + others ---------------------------------
#
# The check below never calls ``combine``: it reads only what ``forward`` returns (the terms and
# ``total``) and predicts ``total`` from the loss's declared :class:`Balance`, its ``lambda`` and,
# for the terms the balance does not weigh, their weights at lambda = 0.5. It evaluates the loss at
# three lambdas on two batches (a fresh seed, hence fresh proxies, for each); on a failure it adds
# batches up to ``len(terms) + 1``, solves by least squares for the weights the outputs imply and
# shows them next to the expected ones.

LAMBDAS = (0.2, 0.5, 0.9)


def _outputs(loss: BaseLoss, seed: int) -> dict[str, float]:
    loss = loss.to(torch.float64)
    e, labels = _batch(torch.float64, loss.expects_normalized, seed=seed)
    with torch.no_grad():
        return {k: float(v) for k, v in loss(e, labels).items()}


def _evaluate(make, lam, names, seeds) -> tuple[np.ndarray, np.ndarray]:
    """The terms (one row per seed) and the totals of ``make(lam, seed)`` on batch ``seed``."""
    outs = [_outputs(make(lam, seed), seed) for seed in seeds]
    return np.array([[out[t] for t in names] for out in outs]), np.array([out["total"] for out in outs])


def check_balanced_total(make: Callable[[float | None, int], BaseLoss]) -> None:
    """Raise AssertionError unless ``make(lam, seed)``'s ``total`` is, on every batch and at every
    lambda in :data:`LAMBDAS`, ``sum_t w_t(lam) * term_t`` with

    - ``w_t(lam) = 1`` at ``lam = 0.5`` for a side that is one term, and for a side that is a group
      (``"pair."``) ``w_t(0.5)`` = the weight ``weights()`` states at 0.5 (the member's own);
    - ``w_t(lam) = 2 lam w_t(0.5)`` on the declared first side, ``2 (1 - lam) w_t(0.5)`` on the
      second, and ``w_t(0.5)`` (unmoved by lambda) for the other terms.

    ``make(None, seed)`` builds the loss with its default parameters; a loss without a balance is
    checked there only (every term at the weight ``weights()`` states).
    """
    probe = make(None, 0)
    names = tuple(probe.term_names)
    balance = probe.balance
    declared = {t: float(w) for t, w in probe.weights().items()}
    base = {}
    for t in names:
        side = None if balance is None else balance.side(t)
        base[t] = 1.0 if side is not None and t in (balance.first, balance.second) else declared[t]
    problems = []
    for lam in LAMBDAS if balance is not None else (None,):
        factor = {"first": 2 * lam, "second": 2 * (1 - lam), None: 1.0} if lam is not None else {None: 1.0}
        expected = np.array([factor[None if balance is None else balance.side(t)] * base[t] for t in names])
        terms, totals = _evaluate(make, lam, names, range(2))
        if not np.allclose(terms @ expected, totals, rtol=1e-7, atol=1e-9):
            # enough batches to solve for every weight
            terms, totals = _evaluate(make, lam, names, range(len(names) + 1))
            used = np.abs(terms).max(axis=0) > 0  # an all-zero term's weight cannot be seen
            solved = np.full(len(names), np.nan)
            solved[used] = np.linalg.lstsq(terms[:, used], totals, rcond=None)[0]
            problems.append(
                f"lambda={lam}: "
                + ", ".join(f"{t} weight {s:.4g} (expected {x:.4g})" for t, s, x in zip(names, solved, expected))
            )
    assert not problems, "; ".join(problems)


def _maker(name: str) -> Callable[[float | None, int], BaseLoss]:
    def make(lam: float | None, seed: int) -> BaseLoss:
        torch.manual_seed(seed)
        params = {} if lam is None else {"lambda": lam}
        return build_loss(name, params, num_classes=NUM_CLASSES, embedding_size=DIM)

    return make


@pytest.mark.parametrize("name", LOSSES.names())
def test_total_is_the_balanced_sum_of_the_terms(name):
    check_balanced_total(_maker(name))


class _SwappedSupCon(SupConLoss):
    """Mutant: reports ``pos`` and ``ent`` right but weighs ``ent`` by ``2 lambda`` in ``total``."""

    def combine(self, terms):
        out = super().combine({"pos": terms["ent"], "ent": terms["pos"]})
        return {**out, "pos": terms["pos"], "ent": terms["ent"]}


class _UnscaledContrastive(ContrastiveLoss):
    """Mutant: ``lambda pos + (1 - lambda) neg`` in ``weights()`` and ``total`` alike (scale 1)."""

    def weights(self):
        return {"pos": self.lam, "neg": 1.0 - self.lam}


class _SoftTripleWithoutReg(SoftTripleLoss):
    """Mutant: states ``reg``'s weight ``tau`` but leaves ``reg`` out of ``total``."""

    def combine(self, terms):
        out = super().combine({**terms, "reg": torch.zeros_like(terms["reg"])})
        return {**out, "reg": terms["reg"]}


def _mutant_maker(cls: type) -> Callable[[float | None, int], BaseLoss]:
    def make(lam: float | None, seed: int) -> BaseLoss:
        torch.manual_seed(seed)
        kwargs = {"num_classes": NUM_CLASSES, "embedding_size": DIM} if issubclass(cls, SoftTripleLoss) else {}
        return cls(lam=0.5 if lam is None else lam, **kwargs)

    return make


@pytest.mark.parametrize("mutant", [_SwappedSupCon, _UnscaledContrastive, _SoftTripleWithoutReg])
def test_the_total_check_catches_a_mutant(mutant):
    check_balanced_total(_mutant_maker(mutant.__mro__[1]))  # the real loss passes
    with pytest.raises(AssertionError, match="expected"):
        check_balanced_total(_mutant_maker(mutant))


def _learnable() -> list[str]:
    return [n for n in LOSSES.names() if any(p.requires_grad for p in _build(n).parameters())]


@pytest.mark.parametrize("name", _learnable())
def test_every_loss_parameter_gets_a_nonzero_gradient(name):
    loss = _build(name)
    params = [(n, p) for n, p in loss.named_parameters() if p.requires_grad]
    e, labels = _batch(torch.float32, loss.expects_normalized)
    out = loss(e, labels)
    # distinct weights per term: in ``total`` a parameter's gradients from two terms may cancel
    # exactly (e.g. a margin boundary pushed equally by positives and negatives)
    probe = sum((k + 1) * out[t] for k, t in enumerate(loss.term_names))
    probe.backward()
    for pname, param in params:
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", LOSSES.names())
def test_deterministic_with_a_seed(name):
    results = []
    for _ in range(2):
        loss = _build(name, seed=3)
        e, labels = _batch(torch.float32, loss.expects_normalized, seed=1)
        results.append({k: v.item() for k, v in loss(e, labels).items()})
    assert results[0] == results[1]


def test_unknown_loss_names_the_choices():
    with pytest.raises(ConfigError) as err:
        build_loss("contrastiv", num_classes=4, embedding_size=8)
    assert err.value.field == "loss"
    for name in LOSSES.names():
        assert name in err.value.expected


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        build_loss("contrastive", {"margin": 0.1}, num_classes=4, embedding_size=8)
    assert err.value.field == "loss.margin"
    assert "pos_margin" in err.value.expected and "lambda" in err.value.expected


@pytest.mark.parametrize("value", [-0.1, 1.5, "nan"])
@pytest.mark.parametrize("name", ["contrastive", "supcon", "multi_similarity", "proxy_nca", "proxy_anchor"])
def test_lambda_outside_unit_interval(name, value):
    with pytest.raises(ConfigError) as err:
        build_loss(name, {"lambda": value}, num_classes=4, embedding_size=8)
    assert err.value.field == "loss.lambda" and "[0, 1]" in err.value.expected


def test_bad_choice_and_bad_proxies_per_class():
    with pytest.raises(ConfigError) as err:
        build_loss("supcon", {"aggregation": "max"}, num_classes=4, embedding_size=8)
    assert "sum" in err.value.expected and "mean" in err.value.expected
    with pytest.raises(ConfigError):
        build_loss("proxy_anchor", {"proxies_per_class": 0}, num_classes=4, embedding_size=8)


def test_unsuitable_miner_names_the_choices():
    with pytest.raises(ConfigError) as err:
        build_loss("triplet", miner="multi_similarity", num_classes=4, embedding_size=8)
    assert err.value.field == "miner"
    assert "semihard" in err.value.expected and "hard" in err.value.expected
    assert "multi_similarity" not in err.value.expected
    with pytest.raises(ConfigError) as err:
        build_loss("proxy_anchor", miner="semihard", num_classes=4, embedding_size=8)
    assert err.value.field == "miner"
    with pytest.raises(ConfigError):
        build_loss("multi_similarity", miner="no_such_miner", num_classes=4, embedding_size=8)


def test_miner_parameters_are_checked():
    loss = build_loss(
        "triplet", miner="semihard", miner_params={"margin": 0.3}, num_classes=4, embedding_size=8
    )
    assert loss.miner.margin == 0.3
    with pytest.raises(ConfigError) as err:
        build_loss(
            "triplet", miner="semihard", miner_params={"epsilon": 0.3}, num_classes=4, embedding_size=8
        )
    assert "margin" in err.value.expected


def _loss_miner_pairs():
    from tuneddml.losses import resolve_miner
    from tuneddml.sampling import MINERS

    # Every native loss with every suitable native miner; the pytorch-metric-learning adapter's
    # components (``pml:``) are paired with representatives only, or the grid runs to ~600 cases.
    native_reps = {"triplet", "contrastive", "multi_similarity"}
    pml_reps = {"semihard", "multi_similarity", "all_triplets"}
    combos = []
    for name in LOSSES.names():
        for miner in MINERS.names():
            if name.startswith("pml:") and miner not in pml_reps:
                continue
            if miner.startswith("pml:") and name not in native_reps:
                continue
            try:
                resolve_miner(name, miner)
            except ConfigError:
                continue
            combos.append((name, miner))
    return combos


@pytest.mark.parametrize(("name", "miner"), _loss_miner_pairs())
def test_every_suitable_miner_works(name, miner):
    torch.manual_seed(0)
    loss = build_loss(name, num_classes=NUM_CLASSES, embedding_size=DIM, miner=miner)
    assert loss.miner is not None
    e, labels = _batch(torch.float32, loss.expects_normalized, seed=2)
    e.requires_grad_(True)
    out = loss(e, labels)
    assert all(torch.isfinite(v) for v in out.values())
    out["total"].backward()
    assert torch.isfinite(e.grad).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_declares_its_family(name):
    """One source of truth for which losses are pair-based, proxy-based or wrappers."""
    from tuneddml.losses import loss_family

    family = loss_family(name)
    assert family in ("pair", "proxy", "wrapper")
    if family == "proxy":  # a proxy loss owns per-class vectors, so it needs the class count
        assert "num_classes" in LOSSES.get(name).runtime, name


def test_the_families_of_our_own_losses():
    from tuneddml.losses import loss_family

    wrappers = {n for n in LOSSES.names() if loss_family(n) == "wrapper"}
    assert wrappers == {"ccp", "ensemble", "hybrid", "lsd"}
    proxies = {n for n in LOSSES.names() if loss_family(n) == "proxy" and ":" not in n}
    assert proxies == {"normsoftmax", "proxy_anchor", "proxy_nca", "softtriple", "multi_proxy_anchor", "vmf_proxies"}


def test_a_loss_without_a_family_is_refused_at_registration():
    from tuneddml.losses.base import BaseLoss

    class NoFamily(BaseLoss):
        def __init__(self) -> None:
            super().__init__()

    with pytest.raises(ValueError, match="family"):
        LOSSES.register("no_family_probe")(NoFamily)
    assert "no_family_probe" not in LOSSES
