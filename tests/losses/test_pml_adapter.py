"""pytorch-metric-learning components by name (tuneddml.losses.pml_adapter)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

from tests.synthetic import assert_learns_on_glyphs_tiny  # noqa: E402
from tuneddml.errors import ConfigError  # noqa: E402
from tuneddml.losses import LOSSES, build_loss, resolve_miner  # noqa: E402
from tuneddml.losses.pml_adapter import EXCLUDED, PREFIX, _probe_output  # noqa: E402
from tuneddml.sampling import MINERS  # noqa: E402


def _batch(seed: int = 0, classes: int = 4, per_class: int = 4, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(classes * per_class, dim, generator=g), dim=1)
    return e, torch.arange(classes).repeat_interleave(per_class)


def _pml_names(registry) -> list[str]:
    return [n for n in registry.names() if n.startswith(PREFIX)]


@pytest.mark.parametrize(("module", "registry"), [(pml_losses, LOSSES), (pml_miners, MINERS)])
def test_every_pml_class_is_registered_or_excluded_with_a_reason(module, registry):
    for name, obj in vars(module).items():
        if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and not name.startswith("_"):
            key = PREFIX + name
            assert (key in registry) != (key in EXCLUDED), key
            if key in EXCLUDED:
                assert len(EXCLUDED[key]) > 10
    assert len(_pml_names(LOSSES)) >= 30 and len(_pml_names(MINERS)) >= 9


def test_parameters_come_from_the_pml_signatures_through_kwargs():
    assert {p.name: p.default for p in LOSSES.get("pml:CircleLoss").params} == {"m": 0.4, "gamma": 80.0}
    # ProxyNCALoss(num_classes, embedding_size, **kwargs) -> NCALoss(softmax_scale=1)
    assert [p.name for p in LOSSES.get("pml:ProxyNCALoss").params] == ["softmax_scale"]
    # SignalToNoiseRatioContrastiveLoss(**kwargs) -> ContrastiveLoss(pos_margin, neg_margin)
    assert [p.name for p in LOSSES.get("pml:SignalToNoiseRatioContrastiveLoss").params] == [
        "pos_margin",
        "neg_margin",
    ]
    # SubCenterArcFaceLoss(*args, margin, scale, sub_centers) -> ArcFaceLoss(num_classes, embedding_size, ...)
    sub = LOSSES.get("pml:SubCenterArcFaceLoss")
    assert [p.name for p in sub.params] == ["margin", "scale", "sub_centers"]
    assert sub.param("sub_centers").kind is int and sub.param("margin").kind is float
    # BatchHardMiner fixes its parent's strategies: they are not offered
    assert MINERS.get("pml:BatchHardMiner").params == ()
    easy_hard = MINERS.get("pml:BatchEasyHardMiner")
    assert easy_hard.param("pos_strategy").choices == ("easy", "semihard", "hard", "all")
    # objects (distance, reducer, regularisers) and None-valued tuples are skipped
    for entry in [LOSSES.get(n) for n in _pml_names(LOSSES)] + [MINERS.get(n) for n in _pml_names(MINERS)]:
        names = {p.name for p in entry.params}
        assert not names & {
            "distance",
            "reducer",
            "embedding_regularizer",
            "weight_regularizer",
            "weight_init_func",
        }
        assert not names & {"num_classes", "embedding_size", "descriptors_dim", "allowed_pos_range"}
    # an integer default that is not a count becomes a float, so a search may use 40.5
    assert LOSSES.get("pml:AngularLoss").param("alpha").kind is float
    assert LOSSES.get("pml:LargeMarginSoftmaxLoss").param("margin").kind is int


@pytest.mark.parametrize("name", _pml_names(LOSSES) + _pml_names(MINERS))
def test_every_parameter_can_be_given_explicitly(name):
    registry = LOSSES if name in LOSSES else MINERS
    entry = registry.get(name)
    params = {p.name: p.default for p in entry.params if p.default is not None}
    if name == "pml:HistogramLoss":
        params = {"n_bins": 50}
    torch.manual_seed(0)
    built = registry.build(name, params, num_classes=4, embedding_size=16, miner=None)
    assert built is not None


@pytest.mark.parametrize(
    ("name", "params", "direct"),
    [
        ("pml:TripletMarginLoss", {"margin": 0.2}, lambda: pml_losses.TripletMarginLoss(margin=0.2)),
        ("pml:CircleLoss", {"m": 0.3, "gamma": 40}, lambda: pml_losses.CircleLoss(m=0.3, gamma=40)),
        ("pml:MultiSimilarityLoss", {}, lambda: pml_losses.MultiSimilarityLoss()),
        ("pml:SupConLoss", {"temperature": 0.2}, lambda: pml_losses.SupConLoss(temperature=0.2)),
    ],
)
def test_value_equals_the_pml_loss_called_directly(name, params, direct):
    e, labels = _batch(seed=5)
    out = build_loss(name, params, num_classes=4, embedding_size=16)
    assert set(out(e, labels)) == {"pml", "total"}
    expected = direct()(e, labels)
    torch.testing.assert_close(out(e, labels)["pml"], expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out(e, labels)["total"], expected, atol=1e-6, rtol=1e-6)


def test_proxy_loss_gets_runtime_sizes_and_trains_its_proxies():
    torch.manual_seed(0)
    loss = build_loss("pml:ProxyAnchorLoss", {"margin": 0.2}, num_classes=5, embedding_size=16)
    (proxies,) = list(loss.parameters())
    assert proxies.shape in {(5, 16), (16, 5)}
    e, labels = _batch()
    loss(e, labels)["total"].backward()
    assert proxies.grad is not None and proxies.grad.abs().sum() > 0
    # MarginLoss(num_classes=None) gets the trial's classes: one learnable beta per class
    margin = build_loss("pml:MarginLoss", {"learn_beta": True}, num_classes=4, embedding_size=16)
    (beta,) = list(margin.parameters())
    assert beta.numel() == 4


def test_a_miner_feeds_the_pml_loss_its_indices():
    e, labels = _batch(seed=2)
    ours = build_loss(
        "pml:TripletMarginLoss",
        {"margin": 0.1},
        num_classes=4,
        embedding_size=16,
        miner="pml:TripletMarginMiner",
        miner_params={"type_of_triplets": "semihard", "margin": 0.1},
    )
    miner = pml_miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")
    expected = pml_losses.TripletMarginLoss(margin=0.1)(e, labels, miner(e, labels))
    torch.testing.assert_close(ours(e, labels)["total"], expected)
    # one of our own miners (pairs) into a pml pair loss
    mixed = build_loss("pml:ContrastiveLoss", num_classes=4, embedding_size=16, miner="multi_similarity")
    pairs = MINERS.build("multi_similarity", {})(e, labels)
    torch.testing.assert_close(mixed(e, labels)["total"], pml_losses.ContrastiveLoss()(e, labels, pairs))


@pytest.mark.parametrize("name", _pml_names(MINERS))
def test_miner_output_kind_matches_what_it_returns(name):
    miner = MINERS.build(name, {})
    e, labels = _batch(seed=3)
    out = miner(e, labels)
    assert len(out) == {"triplets": 3, "pairs": 4}[MINERS.get(name).factory.output]
    assert all(t.dtype == torch.long for t in out)


def test_miner_kinds_of_well_known_miners():
    assert MINERS.get("pml:TripletMarginMiner").factory.output == "triplets"
    assert MINERS.get("pml:MultiSimilarityMiner").factory.output == "pairs"
    assert MINERS.get("pml:PairMarginMiner").factory.output == "pairs"


def test_losses_that_reject_indices_take_no_miner():
    assert LOSSES.get("pml:InstanceLoss").factory.miner_outputs == ()
    with pytest.raises(ConfigError) as err:
        build_loss("pml:InstanceLoss", num_classes=4, embedding_size=8, miner="semihard")
    assert err.value.field == "miner"


def test_bad_values_raise_config_errors():
    with pytest.raises(ConfigError) as err:
        build_loss("pml:CircleLoss", {"margin": 0.1}, num_classes=4, embedding_size=8)
    assert err.value.field == "loss.margin" and "gamma" in err.value.expected
    with pytest.raises(ConfigError) as err:
        build_loss("pml:PNPLoss", {"variant": "X"}, num_classes=4, embedding_size=8)
    assert "Ds" in err.value.expected
    # a value pml's own constructor rejects (delta must equal 2 / n_bins)
    with pytest.raises(ConfigError) as err:
        build_loss("pml:HistogramLoss", {"n_bins": 10, "delta": 0.5}, num_classes=4, embedding_size=8)
    assert "HistogramLoss" in str(err.value)
    with pytest.raises(ConfigError):
        build_loss("pml:NoSuchLoss", num_classes=4, embedding_size=8)


def test_config_strings_are_validated_and_typed():
    # what TrialConfig.from_flat does with ``loss=pml:CircleLoss loss.m=0.3 miner=pml:MultiSimilarityMiner``
    assert LOSSES.validate("pml:CircleLoss", {"m": "0.3"}) == {"m": 0.3, "gamma": 80.0}
    assert MINERS.validate("pml:MultiSimilarityMiner", {"epsilon": "0.2"}) == {"epsilon": 0.2}
    assert resolve_miner("pml:CircleLoss", "pml:MultiSimilarityMiner") == "pml:MultiSimilarityMiner"
    assert resolve_miner("pml:CircleLoss", "default") is None


def test_probing_a_miner_leaves_the_global_random_state_alone():
    torch.manual_seed(7)
    np.random.seed(7)
    before = (torch.get_rng_state().clone(), np.random.get_state()[1].copy())
    assert _probe_output(pml_miners.DistanceWeightedMiner) == "triplets"
    assert _probe_output(pml_miners.UniformHistogramMiner) == "pairs"
    assert torch.equal(before[0], torch.get_rng_state())
    assert (before[1] == np.random.get_state()[1]).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("loss", "miner"),
    [
        ("pml:CircleLoss", "none"),
        ("pml:ProxyAnchorLoss", "none"),
        ("pml:TripletMarginLoss", "pml:TripletMarginMiner"),
    ],
)
def test_trains_on_glyphs_tiny(loss, miner):
    assert_learns_on_glyphs_tiny({"loss": loss, "miner": miner})
