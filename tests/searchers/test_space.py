from __future__ import annotations

import random

import pytest
from searcher_helpers import space_from_text

from tuneddml.errors import ConfigError
from tuneddml.searchers import SEARCHERS
from tuneddml.searchers.space import load_space

GOOD = """
    description: a test space
    metric: recall_at_1
    mode: min
    searcher: random
    num_samples: 9
    scheduler: fifo
    fixed: {dataset: glyphs, epochs: 2}
    parameters:
      loss: {choice: [contrastive, supcon]}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.3}
      loss.temperature: {loguniform: [1e-2, 1.0], when: {loss: supcon}}
      loss.aggregation: {choice: [sum, mean], when: {loss: supcon}}
      batch_size: {int: [16, 256], log: true}
      miner: {choice: [none, pairs], when: {loss: contrastive}}
      miner.epsilon: {uniform: [0, 1], when: {miner: pairs}}
      loss.alpha:
        - {uniform: [1, 4], when: {loss: contrastive}}
        - {loguniform: [10, 100], start: 50, when: {loss: supcon}}
"""


def test_a_space_file_loads_with_defaults_filled(tmp_path):
    space = space_from_text(tmp_path, GOOD)
    assert (space.name, space.metric, space.mode, space.searcher) == ("x", "recall_at_1", "min", "random")
    assert (space.num_samples, space.scheduler, space.description) == (9, "fifo", "a test space")
    assert space.fixed == {"dataset": "glyphs", "epochs": 2}
    assert list(space.parameters)[:3] == ["loss", "loss.lambda", "loss.temperature"]
    temperature = space.parameters["loss.temperature"][0]
    assert temperature.low == 0.01 and temperature.log and temperature.start == pytest.approx(0.1)
    assert space.parameters["batch_size"][0].start == 64  # geometric centre of [16, 256]
    assert [d.name for d in space.parameters["loss.alpha"]] == ["loss.alpha@0", "loss.alpha@1"]
    assert space.config_of(space.start_point()) == {
        "loss": "contrastive",
        "loss.lambda": 0.3,
        "batch_size": 64,
        "miner": "none",
        "loss.alpha": 2.5,
    }


def test_defaults_of_a_minimal_file(tmp_path):
    space = space_from_text(tmp_path, "parameters: {lr: {loguniform: [0.0001, 0.01]}}")
    assert (space.metric, space.mode, space.searcher, space.scheduler) == (
        "map_at_r",
        "max",
        "coordinate_descent",
        "asha",
    )
    assert space.num_samples == 16 and space.fixed == {}


def test_sample_respects_conditions_bounds_and_types(tmp_path):
    space = space_from_text(tmp_path, GOOD)
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        config = space.sample(rng)
        supcon = config["loss"] == "supcon"
        assert ("loss.temperature" in config) == supcon and ("miner" in config) == (not supcon)
        assert ("miner.epsilon" in config) == (config.get("miner") == "pairs")
        assert 0.05 <= config["loss.lambda"] <= 0.95
        assert type(config["batch_size"]) is int and 16 <= config["batch_size"] <= 256
        assert (10 <= config["loss.alpha"] <= 100) if supcon else (1 <= config["loss.alpha"] <= 4)
        seen.add(config["batch_size"])
    assert min(seen) < 24 and max(seen) > 180  # the log-int covers its range
    assert space.sample(5) == space.sample(5)


def test_grid_expands_conditions_within_their_branch(tmp_path):
    space = space_from_text(tmp_path, GOOD)
    grid = space.grid(2)
    # contrastive: lambda 2 x batch 2 x (miner none + miner pairs x epsilon 2) x alpha 2 = 24
    # supcon: lambda 2 x temperature 2 x aggregation 2 x batch 2 x alpha 2 = 32
    assert len(grid) == 24 + 32
    assert len({tuple(sorted(c.items())) for c in grid}) == len(grid)
    assert {c["loss.lambda"] for c in grid} == {0.275, 0.725}  # centres of two equal cells
    assert all(("miner.epsilon" in c) == (c.get("miner") == "pairs") for c in grid)


def test_define_by_run_follows_conditions_in_optuna(tmp_path):
    optuna = pytest.importorskip("optuna")
    space = space_from_text(tmp_path, GOOD)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    losses = set()
    for _ in range(40):
        trial = study.ask()
        assert space.define_by_run(trial) is None
        config = space.keys_of(trial.params)
        losses.add(config["loss"])
        assert set(trial.params) == set(space.names_of(config))
        alpha = "loss.alpha@1" if config["loss"] == "supcon" else "loss.alpha@0"
        assert alpha in trial.params
        assert ("loss.temperature" in config) == (config["loss"] == "supcon")
        assert ("miner.epsilon" in config) == (config.get("miner") == "pairs")
        study.tell(trial, 0.0)
    assert losses == {"contrastive", "supcon"}


def test_representative_configs_cover_extremes_and_branches(tmp_path):
    space = space_from_text(tmp_path, GOOD)
    configs = space.representative_configs()
    assert {c["loss.lambda"] for c in configs} >= {0.05, 0.95, 0.3}
    assert {c.get("loss.temperature") for c in configs} >= {0.01, 1.0}
    assert any(c.get("miner.epsilon") == 1.0 and c["miner"] == "pairs" for c in configs)
    assert {c["loss.alpha"] for c in configs} >= {1.0, 4.0, 10.0, 100.0}


def test_validator_sees_each_point_over_fixed(tmp_path):
    seen = []
    space_from_text(tmp_path, GOOD, validate=seen.append)
    assert seen and all(c["dataset"] == "glyphs" and c["epochs"] == 2 for c in seen)
    assert any(c["loss"] == "supcon" and c["loss.aggregation"] == "sum" for c in seen)


BASE = "parameters:\n  a: {choice: [p, q]}\n"


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("foo: 1\n" + BASE, "x.yaml: foo", "parameters"),
        ("mode: maximise\n" + BASE, "x.yaml: mode", "max, min"),
        ("searcher: bayes\n" + BASE, "x.yaml: searcher", ", ".join(SEARCHERS)),
        ("scheduler: hyperband\n" + BASE, "x.yaml: scheduler", "asha, fifo"),
        ("num_samples: 0\n" + BASE, "x.yaml: num_samples", "positive"),
        ("fixed: [1, 2]\n" + BASE, "x.yaml: fixed", "mapping"),
        ("parameters: {}\n", "x.yaml: parameters", "non-empty"),
        (BASE + "  b: {normal: [0, 1]}\n", "x.yaml: parameters.b.normal", "uniform"),
        (BASE + "  b: {uniform: [0, 1], loguniform: [1, 2]}\n", "x.yaml: parameters.b", "exactly one"),
        (BASE + "  b: {uniform: [1, 0]}\n", "x.yaml: parameters.b.uniform", "low < high"),
        (BASE + "  b: {uniform: [0, 1, 2]}\n", "x.yaml: parameters.b.uniform", "low < high"),
        (BASE + "  b: {uniform: [0, x]}\n", "x.yaml: parameters.b.uniform", "low < high"),
        (BASE + "  b: {loguniform: [0, 1]}\n", "x.yaml: parameters.b.loguniform", "low > 0"),
        (BASE + "  b: {int: [1.5, 4]}\n", "x.yaml: parameters.b.int", "integers"),
        (BASE + "  b: {int: [0, 4], log: true}\n", "x.yaml: parameters.b.int", "low >= 1"),
        (BASE + "  b: {uniform: [0, 1], log: true}\n", "x.yaml: parameters.b.log", "only with int"),
        (BASE + "  b: {choice: []}\n", "x.yaml: parameters.b.choice", "non-empty"),
        (BASE + "  b: {choice: [1, 1]}\n", "x.yaml: parameters.b.choice", "without repeated"),
        (BASE + "  b: {uniform: [0, 1], start: 2}\n", "x.yaml: parameters.b.start", "[0, 1]"),
        (BASE + "  b: {int: [1, 9], start: 2.5}\n", "x.yaml: parameters.b.start", "[1, 9]"),
        (BASE + "  b: {choice: [u, v], start: w}\n", "x.yaml: parameters.b.start", "u"),
        (BASE + "  b: {uniform: [0, 1], when: {c: p}}\n", "x.yaml: parameters.b.when.c", "listed before"),
        (BASE + "  b: {uniform: [0, 1], when: {a: r}}\n", "x.yaml: parameters.b.when.a", "p, q"),
        (BASE + "  b: {uniform: [0, 1], when: {b: 0.5}}\n", "x.yaml: parameters.b.when.b", "listed before"),
        (BASE + "  b: {uniform: [0, 1], bounds: 1}\n", "x.yaml: parameters.b.bounds", "when"),
        (
            BASE
            + "  b:\n    - {uniform: [0, 1], when: {a: p}}\n    - {uniform: [2, 3], when: {a: [p, q]}}\n",
            "x.yaml: parameters.b",
            "exclude each other",
        ),
        (
            BASE + "  b:\n    - {uniform: [0, 1]}\n    - {uniform: [2, 3]}\n",
            "x.yaml: parameters.b",
            "exclude",
        ),
        ("fixed: {a: p}\n" + BASE, "x.yaml: parameters.a", "not also fixed"),
        ("parameters: [1, 2\n", "x.yaml", "YAML"),
        ("- 1\n", "x.yaml", "mapping"),
    ],
)
def test_invalid_space_names_file_and_key(tmp_path, text, field, expected):
    with pytest.raises(ConfigError) as info:
        space_from_text(tmp_path, text)
    assert info.value.field.endswith(field) and str(tmp_path) in info.value.field
    assert expected in info.value.expected


def test_validator_errors_are_located_in_the_file(tmp_path):
    def validate(flat):
        if flat.get("loss.temperature", 0) > 0.5:
            raise ConfigError("loss.temperature", flat["loss.temperature"], "a value in (0, 0.5]")
        if flat["epochs"] > 5:
            raise ConfigError("epochs", flat["epochs"], "at most 5")

    text = GOOD.replace("loguniform: [1e-2, 1.0]", "loguniform: [1e-2, 0.5]")
    space_from_text(tmp_path, text, validate=validate)
    with pytest.raises(ConfigError) as info:
        space_from_text(tmp_path, GOOD, validate=validate)
    assert info.value.field.endswith("x.yaml: parameters.loss.temperature") and info.value.value == 1.0
    assert "(0, 0.5]" in info.value.expected and "loss=supcon" in info.value.expected
    with pytest.raises(ConfigError) as info:
        space_from_text(tmp_path, text.replace("epochs: 2", "epochs: 9"), validate=validate)
    assert info.value.field.endswith("x.yaml: fixed.epochs")


def test_overrides_are_checked_and_may_not_shadow_a_parameter(tmp_path):
    def validate(flat):
        if flat["epochs"] > 5:
            raise ConfigError("epochs", flat["epochs"], "at most 5")

    space = space_from_text(tmp_path, GOOD, validate=validate)
    space.validate_overrides({**space.fixed, "epochs": 3}, validate=validate)
    with pytest.raises(ConfigError) as info:
        space.validate_overrides({**space.fixed, "epochs": 7}, validate=validate)
    assert info.value.field == "epochs"
    with pytest.raises(ConfigError) as info:
        space.validate_overrides({**space.fixed, "loss.lambda": 0.5}, validate=validate)
    assert info.value.field == "loss.lambda" and "does not search" in info.value.expected


def test_unknown_space_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_space("no_such_space")
    assert info.value.field == "--space" and "contrastive_balance" in info.value.expected
    with pytest.raises(ConfigError) as info:
        load_space(tmp_path / "missing.yaml")
    assert info.value.field == "--space"
