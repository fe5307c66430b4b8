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


def test_optimisation_settings_round_trip_and_old_amp_booleans_still_load():
    flat = {
        "optimizer": "rmsprop",
        "lr_schedule": "cosine",
        "warmup_epochs": "0.5",
        "lr_min_factor": 0.1,
        "lr_step_epochs": 2,
        "lr_step_gamma": 0.5,
        "grad_clip": "1.5",
        "amp": "fp16",
        "channels_last": "true",
        "backbone.lr": "1e-4",
        "backbone.freeze_bn": "yes",
    }
    config = TrialConfig.from_flat(flat)
    assert (config.warmup_epochs, config.grad_clip, config.amp, config.channels_last) == (0.5, 1.5, "fp16", True)
    out = config.to_flat()
    assert out["backbone.lr"] == 1e-4 and out["backbone.freeze_bn"] is True and out["amp"] == "fp16"
    assert TrialConfig.from_flat(out) == config
    defaults = TrialConfig.from_flat({}).to_flat()
    assert defaults["backbone.lr"] is None and defaults["backbone.freeze_bn"] is False
    assert (defaults["lr_schedule"], defaults["warmup_epochs"], defaults["grad_clip"]) == ("constant", 0.0, None)
    assert (defaults["amp"], defaults["channels_last"]) == ("none", None)
    old_values = [(True, "bf16"), (False, "none"), ("true", "bf16"), ("False", "none"), (None, "none")]
    for old, new in [*old_values, (1, "bf16"), ("0", "none")]:
        assert TrialConfig.from_flat({"amp": old}).amp == new, old
    # the backbone settings are every backbone's: a new backbone keeps them, its own parameters go
    other = config.replace(backbone="timm")
    assert other.backbone_params["lr"] == 1e-4 and other.backbone_params["freeze_bn"] is True
    assert "width" not in other.backbone_params and other.backbone_params["model"] == "resnet18"


@pytest.mark.parametrize(
    ("flat", "field", "expected"),
    [
        ({"lr_schedule": "linear"}, "lr_schedule", "constant, cosine, step"),
        ({"warmup_epochs": -1}, "warmup_epochs", "[0, 100000]"),
        ({"amp": "fp8"}, "amp", "none, bf16, fp16"),
        ({"amp": 2}, "amp", "none, bf16, fp16"),
        ({"optimizer": "lamb"}, "optimizer", "adam, adamw, sgd, rmsprop"),
        ({"grad_clip": 0}, "grad_clip", "(0, inf)"),
        ({"lr_step_gamma": 1.5}, "lr_step_gamma", "(0, 1]"),
        ({"lr_min_factor": -0.1}, "lr_min_factor", "[0, 1]"),
        ({"channels_last": "maybe"}, "channels_last", "bool"),
        ({"backbone.lr": 0}, "backbone.lr", "(0, 10]"),
        ({"backbone.freeze_bn": "sometimes"}, "backbone.freeze_bn", "bool"),
        ({"backbone.lrr": 0.1}, "backbone.lrr", "width, depth, lr, freeze_bn"),
        ({"backbone": "mlp", "backbone.width": 3}, "backbone.width", "hidden, layers, lr, freeze_bn"),
    ],
)
def test_bad_optimisation_settings_name_the_field_and_the_choices(flat, field, expected):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat(flat)
    assert info.value.field == field and expected in info.value.expected
