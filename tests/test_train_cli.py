"""``python -m tuneddml.train`` and ``python -m tuneddml.catalog`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tuneddml.catalog import main as catalog_main
from tuneddml.losses import LOSSES
from tuneddml.train import main as train_main


def test_one_trial_prints_progress_and_a_json_last_line(tmp_path):
    args = [
        sys.executable,
        "-m",
        "tuneddml.train",
        "dataset=glyphs-tiny",
        "epochs=2",
        "steps_per_epoch=2",
        "loss=supcon",
        "loss.lambda=0.3",
        "threads=1",
        "--json",
        "--save",
        str(tmp_path / "trial.pt"),
    ]
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "finished" and result["epochs"] == 2
    assert result["config"]["loss.lambda"] == 0.3 and result["config"]["loss.temperature"] == 0.1
    assert 0 <= result["metrics"]["recall_at_1"] <= 1
    assert "epoch 1/2" in proc.stderr and "epoch 2/2" in proc.stderr and "left" in proc.stderr
    assert (tmp_path / "trial.pt").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "field", "hint"),
    [
        (["loss=contrastiv"], "loss", "supcon"),
        (["loss.lambda=1.5"], "loss.lambda", "[0, 1]"),
        (["loss=supcon", "loss.aggregation=max"], "loss.aggregation", "sum, mean"),
        (["lambda=0.5"], "lambda", "loss"),
        (["batch_size=30", "sampler.samples_per_class=4"], "sampler.samples_per_class", "divisor"),
        (["dataset=cub200", "data_root=/nonexistent/cub"], "data_root", "CUB_200_2011"),
        (["dataset=imagenet"], "dataset", "glyphs"),
        (["optimizer=lbfgs"], "optimizer", "adam"),
        (["miner=semihard"], "miner", "default"),
        (["epochs"], "argument", "KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, field, hint):
    target = tmp_path / "trial.pt"
    with pytest.raises(SystemExit) as info:
        train_main([*args, "epochs=1", "--save", str(target)] if args != ["epochs"] else args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}:") and hint in err[0]
    assert not target.exists()


def test_a_layout_error_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "CUB_200_2011").mkdir()
    with pytest.raises(SystemExit) as info:
        train_main(["dataset=cub200", f"data_root={tmp_path}"])
    assert info.value.code == 2
    assert "images.txt" in capsys.readouterr().err


def test_config_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_text("dataset: glyphs-tiny\nloss:\n  name: supcon\n  temperature: 0.2\nepochs: 1\n")
    with pytest.raises(SystemExit) as info:
        train_main(["--config", str(config), "loss.temperature=-1"])
    assert info.value.code == 2 and "loss.temperature" in capsys.readouterr().err


def test_catalog_lists_every_component_with_parameters(capsys):
    assert catalog_main([]) == 0
    text = capsys.readouterr().out
    for name in LOSSES.names():
        assert f"  {name}:" in text
    assert "lambda: float = 0.5 in [0, 1]" in text
    assert catalog_main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"trial", "dataset", "loss", "miner", "sampler", "backbone", "embedding_aug"}
    assert data["loss"]["supcon"]["params"]["aggregation"]["choices"] == ["sum", "mean"]
