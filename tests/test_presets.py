"""Shipped presets: each is a valid trial, the command line and space files start from it, and the
Reality Check preset trains end to end on a CUB-layout folder (a tiny timm model in ResNet-50's
place, no weights downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneddml.config import TrialConfig, merge_flat
from tuneddml.errors import ConfigError
from tuneddml.presets import list_presets, read_preset
from tuneddml.train import main as train_main


def test_the_shipped_presets_are_listed():
    assert {"mlrc", "dino_vits16", "dinov2_small"} <= set(list_presets())


@pytest.mark.parametrize("name", list_presets())
def test_each_preset_is_a_valid_trial_with_its_reference(name):
    preset = read_preset(name)
    assert preset.description and "Recall@1" in preset.reference
    config = TrialConfig.from_flat(preset.settings)
    flat = config.to_flat()
    for key, value in preset.settings.items():  # nothing in the file is dropped or coerced away
        assert flat[key] == value, key


def test_the_reality_check_preset_is_the_papers_protocol():
    config = TrialConfig.from_flat(read_preset("mlrc").settings)
    assert (config.batch_size, config.sampler_params["samples_per_class"]) == (32, 4)
    assert (config.embedding_size, config.optimizer, config.lr) == (128, "rmsprop", 1e-6)
    assert config.backbone_params["freeze_bn"] is True and config.backbone_params["pretrained"] is True
    assert (config.image_size, config.resize_size, config.num_folds) == (227, 256, 4)


def test_an_unknown_preset_exits_2_naming_the_shipped_ones(capsys):
    with pytest.raises(SystemExit) as info:
        train_main(["--preset", "mlrx"])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --preset") and "mlrc" in line and "dino_vits16" in line


def test_overrides_change_a_preset_and_a_new_backbone_drops_its_parameters():
    settings = read_preset("mlrc").settings
    merged = merge_flat(settings, {"backbone": "small_cnn", "lr": 1e-4})
    config = TrialConfig.from_flat(merged)
    assert config.backbone == "small_cnn" and config.lr == 1e-4
    assert "model" not in config.backbone_params  # timm's parameter went with timm
    assert config.backbone_params["freeze_bn"] is True  # valid for every backbone: kept
    assert config.optimizer == "rmsprop" and config.embedding_size == 128


def _space(tmp_path, text):
    from tuneddml.searchers.space import load_space

    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_space(str(path), validate=lambda flat: TrialConfig.from_flat(flat))


def test_a_space_starts_from_its_preset_and_searches_over_it(tmp_path):
    space = _space(
        tmp_path,
        "preset: mlrc\nfixed: {epochs: 3}\nparameters:\n  lr: {loguniform: [1.0e-6, 1.0e-4]}\n",
    )
    assert space.fixed["epochs"] == 3 and space.fixed["optimizer"] == "rmsprop"
    assert "lr" not in space.fixed  # the preset's lr is the search's to choose


def test_a_space_naming_an_unknown_preset_names_the_file_and_the_choices(tmp_path):
    with pytest.raises(ConfigError) as info:
        _space(tmp_path, "preset: nope\nparameters:\n  lr: {loguniform: [1.0e-6, 1.0e-4]}\n")
    assert info.value.field.endswith("s.yaml: preset") and "mlrc" in str(info.value)


@pytest.fixture
def cub_folder(tmp_path):
    """A CUB-200-2011 layout: 200 classes would be slow; the loader takes any class ids, and the
    split is classes 1-100 train / 101-200 test, so 4 classes on each side."""
    from PIL import Image

    base = tmp_path / "CUB_200_2011"
    rng = np.random.default_rng(0)
    images, labels = [], []
    image_id = 0
    for cls in (1, 2, 3, 4, 101, 102, 103, 104):
        folder = base / "images" / f"{cls:03d}.bird"
        folder.mkdir(parents=True)
        for i in range(4):
            image_id += 1
            pixels = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
            images.append(f"{image_id} {folder.name}/{i}.jpg")
            labels.append(f"{image_id} {cls}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return tmp_path


def test_the_reality_check_preset_trains_on_a_cub_folder(cub_folder, capsys):
    code = train_main(
        [
            "--preset",
            "mlrc",
            f"data_root={cub_folder}",
            "backbone.model=test_resnet",  # timm's tiny test model in ResNet-50's place
            "backbone.pretrained=false",
            "split=test",
            "batch_size=8",
            "epochs=1",
            "steps_per_epoch=2",
            "image_size=64",
            "resize_size=72",
            "eval_nmi=false",
            "threads=1",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= result["metrics"]["map_at_r"] <= 1 and result["config"]["optimizer"] == "rmsprop"
