"""The ``saved`` backbone: a backbone an earlier trial trained, read back from a search's weights
file (with its architecture sidecar, as ``save_weights`` writes it) or from a trainer checkpoint;
its outputs are the original backbone's, and a file it cannot use is a ConfigError on
``backbone.path`` (or ``backbone.fold``) before a search starts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.models import BACKBONES, build_model, check_backbone

SMALL = {
    "backbone": "small_cnn",
    "backbone.width": 4,
    "backbone.depth": 1,
    "backbone.lr": 0.01,
    "backbone.freeze_bn": False,
}
GLYPH = (1, 32, 32)


def _embedder(seed: int = 0, shape=GLYPH):
    torch.manual_seed(seed)
    model = build_model("small_cnn", {"width": 4, "depth": 1}, item_shape=shape, embedding_size=8)
    with torch.no_grad():  # running statistics away from their defaults: they are weights too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _weights_file(folder, model, config=SMALL, name="t1"):
    """As a search's ``save_weights`` leaves them: ``<id>.pt`` and ``<id>.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / f"{name}.pt")
    (folder / f"{name}.json").write_text(json.dumps(config))
    return folder / f"{name}.pt"


def _saved(path, shape=GLYPH, **params):
    return BACKBONES.build("saved", {"path": str(path), **params}, field="backbone", item_shape=shape).eval()


def test_a_saved_weights_file_gives_the_original_backbones_outputs(tmp_path):
    model = _embedder()
    net = _saved(_weights_file(tmp_path, model))
    x = torch.rand(5, *GLYPH)
    assert torch.equal(net(x), model.backbone(x))
    assert net.out_features == model.backbone.out_features == 4
    assert (net.mean, net.std, net.input_size) == (None, None, None)
    assert net.inner == "small_cnn"
    # an Embedder around it: a new head, the backbone's weights as they were trained
    again = build_model("saved", {"path": str(tmp_path / "t1.pt")}, item_shape=GLYPH, embedding_size=6).eval()
    assert torch.equal(again.backbone(x), model.backbone(x)) and again(x).shape == (5, 6)
    check_backbone("saved", {"path": str(tmp_path / "t1.pt")})  # checks: fine


def test_other_image_sizes_work_other_channel_counts_are_refused(tmp_path):
    model = _embedder()
    path = _weights_file(tmp_path, model)
    bigger = torch.rand(2, 1, 48, 40)
    assert torch.equal(_saved(path, (1, 48, 40))(bigger), model.backbone(bigger))  # global pooling
    with pytest.raises(ConfigError) as err:
        _saved(path, (3, 32, 32))
    assert err.value.field == "backbone.path"
    assert "1-channel images" in str(err.value) and "has 3 channels" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _saved(path, (20,))
    assert (
        err.value.field == "backbone.path"
        and "1-channel images" in str(err.value)
        and "vectors" in str(err.value)
    )


def test_a_trainer_checkpoint_is_read_as_its_trial_left_it(tmp_path):
    from tuneddml.config import TrialConfig
    from tuneddml.training import Trainer

    config = TrialConfig.from_flat(
        {"dataset": "glyphs-tiny", "split": "test", "threads": 1, "steps_per_epoch": 2, "epochs": 1,
         "backbone": "small_cnn", "backbone.width": 4, "backbone.depth": 1, "backbone.lr": 0.05}
    )  # fmt: skip
    first = Trainer(config)
    first.train_epoch()
    first.save(tmp_path / "trainer.pt")
    net = _saved(tmp_path / "trainer.pt")
    x = torch.rand(3, *GLYPH)
    first.model.eval()
    assert torch.allclose(net(x), first.model.backbone(x))
    # a new trial on other items (another image size) starts from it
    again = Trainer(
        config.replace(
            **{"backbone": "saved", "backbone.path": str(tmp_path / "trainer.pt"), "image_size": 24}
        )
    )
    again.model.eval()
    small = torch.rand(3, 1, 24, 24)
    assert torch.allclose(again.model.backbone(small), first.model.backbone(small))
    assert again.data.train.item_shape == (1, 24, 24)


def test_cross_validated_weights_by_fold(tmp_path):
    a, b = _embedder(0), _embedder(1)
    weights = {
        **{f"fold0.{k}": v for k, v in a.state_dict().items()},
        **{f"fold1.{k}": v for k, v in b.state_dict().items()},
    }
    torch.save(weights, tmp_path / "cv.pt")
    (tmp_path / "cv.json").write_text(json.dumps({**SMALL, "cross_validate": True}))
    x = torch.rand(2, *GLYPH)
    assert torch.equal(_saved(tmp_path / "cv.pt")(x), a.backbone(x))
    assert torch.equal(_saved(tmp_path / "cv.pt", fold=1)(x), b.backbone(x))
    with pytest.raises(ConfigError) as err:
        check_backbone("saved", {"path": str(tmp_path / "cv.pt"), "fold": 2})
    assert err.value.field == "backbone.fold" and "0, 1" in str(err.value)
    single = _weights_file(tmp_path, a, name="one")
    with pytest.raises(ConfigError) as err:
        check_backbone("saved", {"path": str(single), "fold": 1})
    assert err.value.field == "backbone.fold"


def _refused(path, **params):
    with pytest.raises(ConfigError) as err:
        check_backbone("saved", {"path": str(path), **params})
    assert err.value.field == "backbone.path"
    return str(err.value)


def test_files_it_cannot_use_are_refused_before_a_search(tmp_path):
    model = _embedder()
    assert "weights file a search saved" in _refused("")
    assert "no such file" in _refused(tmp_path / "missing.pt")
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # weights without their architecture
    assert "bare.json" in _refused(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_text("not a torch file")
    assert "readable" in _refused(tmp_path / "junk.pt")
    nested = _weights_file(tmp_path, model, {"backbone": "saved", "backbone.path": "/x/t0.pt"}, name="nested")
    assert "/x/t0.pt" in _refused(nested) and "saved backbone of a saved backbone" in _refused(nested)
    unknown = _weights_file(tmp_path, model, {"backbone": "nope"}, name="unknown")
    assert "'nope'" in _refused(unknown)
    bad = _weights_file(tmp_path, model, {**SMALL, "backbone.depth": 99}, name="bad")
    assert "backbone.depth" in _refused(bad)
    nothing = _weights_file(tmp_path, torch.nn.Linear(2, 2), name="foreign")  # keys weight, bias
    assert "no backbone.* keys" in _refused(nothing)
    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    torch.save(head, tmp_path / "head.pt")  # a features=cached trial's weights: the head alone
    (tmp_path / "head.json").write_text(json.dumps({**SMALL, "features": "cached"}))
    assert "features=cached trial trains only the head" in _refused(tmp_path / "head.pt")
    wrong = _weights_file(
        tmp_path, _embedder(), {**SMALL, "backbone.width": 8}, name="wrong"
    )  # another width
    with pytest.raises(ConfigError) as err:
        _saved(wrong)
    assert err.value.field == "backbone.path" and "small_cnn" in str(err.value)


def test_save_weights_writes_the_architecture_beside_the_weights(tmp_path):
    from tuneddml.tuning.outcome import save_weights

    model = _embedder()
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    flat = {**SMALL, "dataset": "glyphs-tiny", "loss": "supcon", "lr": 0.001}
    torch.save({"config": flat, "model": model.state_dict()}, checkpoint / "trainer.pt")
    rows = [
        {"trial_id": "a", "status": "finished", "best.map_at_r": 0.5, "order": 0, "config.lr": 0.001},
        {"trial_id": "b", "status": "failed", "best.map_at_r": None, "order": 1},
    ]
    request = SimpleNamespace(
        space=SimpleNamespace(metric="map_at_r", mode="max"), folder=tmp_path / "search"
    )
    request.folder.mkdir()
    saved = save_weights(rows, {"a": str(checkpoint)}, request, out=None)
    assert saved == {"a": request.folder / "weights" / "a.pt"}
    assert json.loads((request.folder / "weights" / "a.json").read_text()) == flat
    assert set(torch.load(saved["a"], weights_only=True)) == set(model.state_dict())  # the .pt as before
    x = torch.rand(2, *GLYPH)
    assert torch.equal(_saved(saved["a"])(x), model.backbone(x))
    assert torch.equal(
        _saved(request.folder / "weights" / "a.json")(x), model.backbone(x)
    )  # the sidecar named
