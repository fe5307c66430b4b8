from __future__ import annotations

import dataclasses

import pytest

from tuneddml.config import TrialConfig
from tuneddml.errors import ConfigError


def test_defaults_are_complete_and_round_trip():
    config = TrialConfig.from_flat({})
    flat = config.to_flat()
    assert flat["loss"] == "supcon" and flat["loss.lambda"] == 0.5 and "loss.temperature" in flat
    assert flat["sampler.samples_per_class"] == 4
    assert TrialConfig.from_flat(flat) == config


def test_strings_from_the_command_line_are_typed():
    config = TrialConfig.from_flat(
        {
            "epochs": "3",
            "lr": "1e-4",
            "loss": "supcon",
            "loss.lambda": "0.25",
            "amp": "false",
            "steps_per_epoch": "none",
        }
    )
    assert config.epochs == 3 and config.lr == 1e-4 and config.loss_params["lambda"] == 0.25
    assert config.amp == "none" and config.steps_per_epoch is None


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrialConfig.from_flat({}).epochs = 3  # type: ignore[misc]


def test_replace_resets_a_changed_components_parameters():
    config = TrialConfig.from_flat({"loss": "contrastive", "loss.pos_margin": 0.9})
    other = config.replace(loss="supcon", **{"loss.temperature": 0.2})
    assert other.loss_params["temperature"] == 0.2 and "pos_margin" not in other.loss_params
    assert config.replace(epochs=9).loss_params["pos_margin"] == 0.9


@pytest.mark.parametrize(
    ("flat", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"split": "train"}, "split"),
        ({"fold": 4}, "fold"),
        ({"device": "tpu"}, "device"),
        ({"loss.lambda": -0.1}, "loss.lambda"),
        ({"lossx.lambda": 0.1}, "lossx.lambda"),
        ({"miner.margin": 0.1}, "miner.margin"),
        ({"dataset.root": "/data"}, "dataset.root"),
        ({"embedding_aug.strength": 0.5}, "embedding_aug.strength"),
    ],
)
def test_errors_name_the_field(flat, field):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat(flat)
    assert info.value.field == field


def test_nested_file_form(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"loss": {"name": "supcon", "temperature": 0.3}, "loss_params": {"lambda": 0.2}}')
    config = TrialConfig.from_file(path, {"epochs": 2})
    assert config.loss == "supcon" and config.loss_params["temperature"] == 0.3
    assert config.loss_params["lambda"] == 0.2 and config.epochs == 2
    with pytest.raises(ConfigError, match="--config"):
        TrialConfig.from_file(tmp_path / "missing.yaml")
