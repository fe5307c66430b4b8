"""The contract every registered loss keeps (parametrised over the registry, so losses added
later are covered without an edit here)."""

from __future__ import annotations

import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES, build_loss

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
    weighted = sum(loss.weights()[t] * out[t] for t in loss.term_names)
    torch.testing.assert_close(out["total"], torch.as_tensor(weighted, dtype=dtype))

    out["total"].backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()
    assert e.grad.abs().sum() > 0, "no gradient reaches the embeddings"
    for pname, param in loss.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"no gradient for loss parameter {pname}"
            assert torch.isfinite(param.grad).all(), pname


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
