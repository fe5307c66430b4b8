"""The spaces in tuneddml/search_spaces/ load, validate against the real TrialConfig, and run."""

from __future__ import annotations

import random

import pytest
from searcher_helpers import drive, no_check, space_from_text

from tuneddml.config import TrialConfig
from tuneddml.errors import ConfigError
from tuneddml.registry import Registry
from tuneddml.searchers import SEARCHERS
from tuneddml.searchers.balance import BalanceSearch
from tuneddml.searchers.coordinate_descent import CoordinateDescent
from tuneddml.searchers.space import list_spaces, load_space

SHIPPED = ["contrastive_balance", "proxy_counts", "margins", "loss_sampler", "quick", "cub_dinov2", "mlrc_optima"]
DATASET_NAMES = ("glyphs", "glyphs-tiny", "cub200")


@pytest.fixture
def datasets(monkeypatch):
    """The real registries; the datasets the spaces name are stand-ins until they are registered
    (TrialConfig checks only a dataset's name and parameters, it builds nothing)."""
    import tuneddml.config as config

    real = config.component_registries
    if all(name in real()["dataset"] for name in DATASET_NAMES):
        return
    stand_ins: Registry = Registry("dataset")

    class StandIn:
        def __init__(self, *, root: str | None = None, image_size: int = 32) -> None:
            pass

    for name in DATASET_NAMES:
        stand_ins.register(name, runtime=("root", "image_size"))(StandIn)
    monkeypatch.setattr(config, "component_registries", lambda: {**real(), "dataset": stand_ins})


def test_every_space_is_listed():
    assert set(SHIPPED) <= set(list_spaces())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_is_well_formed(name):
    space = load_space(name, validate=no_check)
    assert space.name == name and space.path.name == f"{name}.yaml"
    assert space.description and space.searcher in SEARCHERS and space.metric == "map_at_r"
    assert space.fixed["split"] == "val"
    configs = space.representative_configs()
    assert len(configs) > 1


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_validates_against_the_trial_config(name, datasets):
    space = load_space(name)  # the real validator: TrialConfig.from_flat
    rng = random.Random(0)
    for _ in range(20):
        TrialConfig.from_flat({**space.fixed, **space.sample(rng)})


@pytest.mark.parametrize("searcher", ["coordinate_descent", "balance"])
@pytest.mark.parametrize("name", SHIPPED)
def test_the_cores_on_a_shipped_space_propose_valid_trials(name, searcher, datasets):
    space = load_space(name, validate=no_check)
    cls = CoordinateDescent if searcher == "coordinate_descent" else BalanceSearch
    core = cls(space, seed=0, max_trials=space.num_samples)

    def objective(config):
        TrialConfig.from_flat({**space.fixed, **config})  # raises on an invalid proposal
        return random.Random(str(sorted(config.items()))).random()

    history = drive(core, objective)
    assert len(history) == space.num_samples


def test_quick_is_tiny():
    space = load_space("quick", validate=no_check)
    assert space.fixed["dataset"] == "glyphs-tiny" and space.fixed["epochs"] <= 2
    assert 4 <= space.num_samples <= 6


@pytest.mark.parametrize(
    ("parameters", "field", "expected"),
    [
        ("  loss.lambdaa: {uniform: [0, 1]}\n", "parameters.loss.lambdaa", "lambda"),
        ("  loss: {choice: [contrastive, nosuchloss]}\n", "parameters.loss", "supcon"),
        ("  loss.lambda: {uniform: [0.5, 1.5]}\n", "parameters.loss.lambda", "[0, 1]"),
        (
            "  loss: {choice: [supcon]}\n  loss.margin: {uniform: [0, 1], when: {loss: supcon}}\n",
            "parameters.loss.margin",
            "temperature",
        ),
        (
            "  batch_size: {choice: [30, 64]}\n",
            "sampler.samples_per_class",
            "divisor of batch_size=30; checked at the start point batch_size=30",
        ),
    ],
)
def test_real_validator_errors_name_file_and_key(tmp_path, datasets, parameters, field, expected):
    text = "fixed: {dataset: glyphs, epochs: 2}\nparameters:\n" + parameters
    with pytest.raises(ConfigError) as info:
        space_from_text(tmp_path, text, validate=None)
    assert info.value.field == f"{tmp_path / 'x.yaml'}: {field}"
    assert expected in info.value.expected


def test_a_bad_fixed_key_is_reported_under_fixed(tmp_path, datasets):
    with pytest.raises(ConfigError) as info:
        space_from_text(
            tmp_path,
            "fixed: {dataset: glyphs, epoch: 2}\nparameters:\n  lr: {loguniform: [0.0001, 0.01]}\n",
            validate=None,
        )
    assert info.value.field.endswith("x.yaml: fixed.epoch") and "epochs" in info.value.expected
