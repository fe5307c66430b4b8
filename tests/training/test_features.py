"""Cached-feature trials: the keys, the features, and a cached trial equal to a frozen full one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuneddml.config import TrialConfig
from tuneddml.data import DATASETS
from tuneddml.data.feature_cache import FeatureItems, feature_key, key_parts_of
from tuneddml.errors import ConfigError
from tuneddml.models import build_model
from tuneddml.training import FoldsTrainer, Trainer, run_trial
from tuneddml.training.features import CachedBackbone, cache_folder, key_parts

SMALL = {
    "dataset": "glyphs-tiny",
    "image_size": 16,
    "backbone.width": 4,
    "backbone.depth": 1,
    "split": "test",
    "threads": 1,
    "steps_per_epoch": 3,
    "epochs": 2,
    "backbone.freeze": True,
    "augment": False,
}


def _config(tmp_path, **flat):
    return TrialConfig.from_flat({**SMALL, "feature_cache": str(tmp_path / "cache"), **flat})


def _backbone(config, seed=0):
    torch.manual_seed(seed)
    own = {k: v for k, v in config.backbone_params.items() if k not in ("lr", "freeze_bn", "freeze")}
    return build_model(config.backbone, own, item_shape=(1, config.image_size, config.image_size), embedding_size=8).backbone


def _dataset(config, root=None):
    return DATASETS.build(
        config.dataset, config.dataset_params, field="dataset", root=root, image_size=config.image_size
    )


def _key(config, backbone, part="train", view=-1, dataset=None):
    dataset = dataset if dataset is not None else _dataset(config)
    return feature_key(key_parts(config, backbone, part, getattr(dataset, part), view, "glyph"))


def test_the_key_changes_with_each_of_its_parts_and_nothing_else(tmp_path):
    config = _config(tmp_path)
    backbone = _backbone(config)
    dataset = _dataset(config)
    base = _key(config, backbone, dataset=dataset)
    # the same parts, a rebuilt identical backbone, another data_root with the same data, and the
    # settings the features do not depend on
    assert _key(config, backbone, dataset=dataset) == base
    assert _key(config, _backbone(config), dataset=dataset) == base
    assert _key(config, backbone, dataset=_dataset(config, root=str(tmp_path / "glyph-cache"))) == base
    same = _config(
        tmp_path, **{"loss": "proxy_anchor", "seed": 3, "lr": 0.1, "backbone.lr": 1e-4, "backbone.freeze_bn": True}
    )
    assert _key(same, _backbone(same), dataset=dataset) == base

    other = _config(tmp_path, **{"dataset.split_seed": 1})
    assert _key(other, backbone, dataset=_dataset(other)) != base  # a dataset parameter
    bigger = _config(tmp_path, image_size=20)
    assert _key(bigger, _backbone(bigger), dataset=_dataset(bigger)) != base  # image_size
    assert _key(config, backbone, "test", dataset=dataset) != base  # the part
    assert _key(config, backbone, view=0, dataset=dataset) != base  # the view
    assert _key(config, backbone, view=1, dataset=dataset) != _key(config, backbone, view=0, dataset=dataset)
    wider = _config(tmp_path, **{"backbone.width": 5})
    assert _key(wider, _backbone(wider), dataset=dataset) != base  # a backbone parameter
    assert _key(config, _backbone(config, seed=1), dataset=dataset) != base  # other weights
    nudged = _backbone(config)
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-3  # one weight
    assert _key(config, nudged, dataset=dataset) != base
    normalised = _backbone(config)
    normalised.mean, normalised.std = (0.5,), (0.25,)  # its preprocessing
    assert _key(config, normalised, dataset=dataset) != base
    normalised.std = (0.3,)
    assert _key(config, normalised, dataset=dataset) != _key(config, _backbone(config), dataset=dataset)


def test_the_cache_folder_setting_then_the_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEDDML_FEATURE_CACHE", raising=False)
    assert cache_folder(TrialConfig()).parts[-3:] == (".cache", "tuneddml", "features")
    monkeypatch.setenv("TUNEDDML_FEATURE_CACHE", str(tmp_path / "env"))
    assert cache_folder(TrialConfig()) == tmp_path / "env"
    assert cache_folder(_config(tmp_path)) == tmp_path / "cache"


def _same_history(a, b, rtol=1e-4, atol=1e-5):
    assert [r.epoch for r in a.history] == [r.epoch for r in b.history]
    for x, y in zip(a.history, b.history):
        assert x.metrics.keys() == y.metrics.keys() and x.terms.keys() == y.terms.keys()
        for key in x.metrics:
            assert np.isclose(x.metrics[key], y.metrics[key], rtol=rtol, atol=atol), (x.epoch, key)
        for key in x.terms:
            assert np.isclose(x.terms[key], y.terms[key], rtol=rtol, atol=atol), (x.epoch, key)


@pytest.mark.parametrize("loss", ["supcon", "proxy_anchor"])
def test_a_cached_trial_equals_a_frozen_full_trial_without_augmentation(tmp_path, loss):
    full = run_trial(_config(tmp_path, loss=loss))
    cached = run_trial(_config(tmp_path, loss=loss, features="cached"))
    _same_history(full, cached)
    again = run_trial(_config(tmp_path, loss=loss, features="cached"))  # from the files now
    assert [r.metrics for r in again.history] == [r.metrics for r in cached.history]
    files = sorted(p.name for p in (tmp_path / "cache").glob("*.arrow"))
    assert len(files) == 2  # train and test, shared by both losses
    assert {key_parts_of(tmp_path / "cache" / f)["part"] for f in files} == {"train", "test"}


def test_a_cached_trial_trains_the_head_on_feature_items(tmp_path):
    config = _config(tmp_path, features="cached")
    trainer = Trainer(config)
    assert isinstance(trainer.model.backbone, CachedBackbone)
    assert isinstance(trainer.data.train, FeatureItems) and isinstance(trainer.data.query, FeatureItems)
    assert trainer.data.train.item_shape == (4,) and trainer.data.augmentation == "none"
    full = Trainer(_config(tmp_path))
    torch.testing.assert_close(trainer.model.head.weight, full.model.head.weight, rtol=0, atol=0)
    np.testing.assert_array_equal(trainer.data.train.labels, full.data.train.labels)
    features = trainer.data.query.load(np.arange(5))
    with torch.no_grad():
        full.model.eval()
        expected = full.model.backbone(full.data.query.load(np.arange(5)))
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)


def test_a_frozen_backbone_does_not_train(tmp_path):
    trainer = Trainer(_config(tmp_path, augment=True))
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    head = trainer.model.head.weight.detach().clone()
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not trained & {id(p) for p in trainer.model.backbone.parameters()}
    trainer.train_epoch()
    assert not trainer.model.backbone.training and trainer.model.head.training
    for key, value in trainer.model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # running statistics too: eval mode
    assert not torch.equal(trainer.model.head.weight, head)
    assert trainer.inputs.augmentation == "glyph"
    assert Trainer(_config(tmp_path)).inputs.augmentation == "none"  # augment=false


def test_a_cached_trial_resumes_from_a_checkpoint_exactly(tmp_path):
    config = _config(tmp_path, features="cached", loss="proxy_anchor")
    straight = run_trial(config)
    first = Trainer(config)
    first.train_epoch()
    first.save(tmp_path / "state.pt")
    resumed = run_trial(config, resume=tmp_path / "state.pt")
    assert resumed.metrics == straight.metrics and [r.epoch for r in resumed.history] == [2]


def test_feature_views_train_each_epoch_on_its_own_augmented_draw(tmp_path):
    config = _config(tmp_path, features="cached", feature_views=2, augment=True, epochs=3)
    trainer = Trainer(config)
    train = trainer.data.train
    assert len(train.views) == 2
    seen = []
    real_load = train.load
    train.load = lambda idx: (seen.append(train.view), real_load(idx))[1]  # type: ignore[method-assign]
    trainer.run()
    assert sorted(set(seen)) == [0, 1] and seen[0] == 0 and seen[-1] == 0  # epochs 1, 2, 3: views 0, 1, 0
    train.select_view(-1)
    eval_view = train.load(np.arange(4))
    for v in (0, 1):
        train.select_view(v)
        assert not torch.allclose(train.load(np.arange(4)), eval_view)  # augmented
    assert trainer.data.query.view == -1
    parts = [key_parts_of(p) for p in (tmp_path / "cache").glob("*.arrow")]
    assert sorted((p["part"], p["view"]) for p in parts) == [("test", -1), ("train", -1), ("train", 0), ("train", 1)]
    # the trials of one backbone share the views: another loss reads the same files (another
    # seed draws another random small_cnn, whose features are other files)
    again = Trainer(_config(tmp_path, features="cached", feature_views=2, augment=True, loss="proxy_anchor"))
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 4
    assert again.data.train.views[1] is not train.views[1]  # mapped again, the same bytes
    np.testing.assert_array_equal(again.data.train.views[1], train.views[1])
    Trainer(_config(tmp_path, features="cached", feature_views=2, augment=True, seed=5))
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 8
    # a view's draws do not depend on the settings the key leaves out (eval_batch_size here)
    elsewhere = _config(tmp_path, features="cached", feature_views=2, augment=True, eval_batch_size=7)
    elsewhere = Trainer(TrialConfig.from_flat({**elsewhere.to_flat(), "feature_cache": str(tmp_path / "other")}))
    np.testing.assert_allclose(elsewhere.data.train.views[1], train.views[1], rtol=1e-5, atol=1e-6)


def test_a_cross_validated_cached_trial_equals_the_full_one_and_builds_the_cache_once(tmp_path):
    flat = {"cross_validate": True, "num_folds": 2, "epochs": 1, "batch_size": 32}
    full = FoldsTrainer(_config(tmp_path, **flat)).run()
    cached = FoldsTrainer(_config(tmp_path, features="cached", **flat))
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 2  # train and test, once for both folds
    _same_history(full, cached.run())


@pytest.mark.parametrize(
    ("flat", "field", "expected"),
    [
        ({"feature_views": 2}, "feature_views", "features=full"),
        ({"features": "cached", "backbone.freeze": False}, "backbone.freeze", "true or unset with features=cached"),
        ({"features": "cached", "augment": True}, "augment", "feature_views > 0"),
        ({"features": "cached", "feature_views": 2, "augment": False}, "feature_views", "augment=false"),
        ({"features": "some"}, "features", "full, cached"),
        ({"features": "cached", "feature_views": -1}, "feature_views", "[0, 1000]"),
        ({"backbone.freeze": "sometimes"}, "backbone.freeze", "bool"),
        ({"augment": "maybe"}, "augment", "bool"),
    ],
)
def test_bad_combinations_are_refused_naming_the_field(tmp_path, flat, field, expected):
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, **flat)
    assert info.value.field == field and expected in str(info.value)


def _image_folder(root, classes=6, per_class=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            pixels = (rng.random((14, 18, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{k}.png")
    return root


def test_file_backed_items_match_the_full_trial_and_another_mount_reads_the_same_files(tmp_path):
    import shutil

    root = _image_folder(tmp_path / "images")
    flat = {
        "dataset": "imagefolder",
        "data_root": str(root),
        "image_size": 12,
        "resize_size": 14,
        "batch_size": 6,
        "sampler.samples_per_class": 2,
        "workers": 0,
        "eval_batch_size": 5,
    }
    full = run_trial(_config(tmp_path, **flat))
    cached = run_trial(_config(tmp_path, features="cached", **flat))
    _same_history(full, cached)
    files = sorted((tmp_path / "cache").glob("*.arrow"))
    assert len(files) == 2
    shutil.copytree(root, tmp_path / "mounted" / "elsewhere")  # keeps the mtimes
    moved = run_trial(_config(tmp_path, features="cached", **{**flat, "data_root": str(tmp_path / "mounted" / "elsewhere")}))
    assert sorted((tmp_path / "cache").glob("*.arrow")) == files
    assert [r.metrics for r in moved.history] == [r.metrics for r in cached.history]
    # augmented views of file-backed items: the training crops, the same for every trial
    views = Trainer(_config(tmp_path, features="cached", feature_views=2, augment=True, **flat)).data.train
    again = Trainer(_config(tmp_path, features="cached", feature_views=2, augment=True, **flat)).data.train
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 4
    np.testing.assert_array_equal(views.views[0], again.views[0])
    assert not np.allclose(views.views[0], views.views[1]) and not np.allclose(views.views[0], views.features)


def test_features_cached_alone_implies_a_frozen_backbone_and_no_augmentation():
    cached = TrialConfig.from_flat({"features": "cached"})
    assert cached.backbone_frozen and not cached.augments
    views = TrialConfig.from_flat({"features": "cached", "feature_views": 2})
    assert views.backbone_frozen and views.augments
    full = TrialConfig.from_flat({})
    assert not full.backbone_frozen and full.augments
    assert TrialConfig.from_flat({"backbone.freeze": True, "augment": False}).backbone_frozen
    # a full config turned into a cached one keeps working (its flat keys hold augment=None)
    assert not full.replace(features="cached").augments


_TRIAL_CHILD = """
import json, sys, time
import tuneddml.data.feature_cache as fc
from tuneddml.config import TrialConfig
from tuneddml.training import run_trial

flat, counter, start = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
original = fc.cached

def counting(folder, key, build, **kwargs):
    def counted():
        with open(counter, "a") as out:
            out.write(key + "\\n")
        return build()
    return original(folder, key, counted, **kwargs)

fc.cached = counting  # features.py looks it up in the module when it needs it
config = TrialConfig.from_flat(flat)
while time.time() < start:
    time.sleep(0.01)
print(json.dumps(run_trial(config).metrics))
"""


@pytest.mark.slow  # two processes, each importing torch and training
def test_two_concurrent_cached_trials_build_one_cache_and_agree(tmp_path):
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    flat = {**SMALL, "features": "cached", "feature_cache": str(tmp_path / "cache"), "epochs": 1}
    counter = tmp_path / "builds"
    start = str(time.time() + 6.0)  # both import torch first, then start their trials together
    env = {**os.environ, "PYTHONPATH": str(repo)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TRIAL_CHILD, json.dumps(flat), str(counter), start],
            stdout=subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    built = counter.read_text().split()
    assert len(built) == len(set(built)) == 2  # train and test: each part built once, by one of them
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 2
    assert not list((tmp_path / "cache").glob("*.tmp*"))
    first, second = (json.loads(o.strip().splitlines()[-1]) for o in outs)
    assert first == second
