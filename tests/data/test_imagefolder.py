from __future__ import annotations

import numpy as np
import pytest

from tuneddml.data import DATASETS
from tuneddml.errors import ConfigError


def make_folder(root, write_image, classes=("ant", "bee", "cat", "dog", "eel"), per_class=3):
    for c, name in enumerate(classes):
        for k in range(per_class):
            write_image(root / name / f"{k}.{'png' if k % 2 else 'jpg'}", seed=10 * c + k)
    return root


def test_classes_are_split_by_a_seeded_shuffle(tmp_path, write_image):
    root = make_folder(tmp_path, write_image)
    (root / "ant" / ".hidden.jpg").write_bytes(b"not an image, and ignored")
    (root / "ant" / "notes.txt").write_text("ignored")
    data = DATASETS.build("imagefolder", {}, root=str(root), image_size=12)
    info = data.info
    assert len(info["train_classes"]) == 3 and len(info["test_classes"]) == 2
    assert set(info["train_classes"]).isdisjoint(info["test_classes"])
    assert sorted(info["train_classes"] + info["test_classes"]) == ["ant", "bee", "cat", "dog", "eel"]
    assert list(data.train.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.train.load(np.arange(9)).shape == (9, 3, 12, 12)
    again = DATASETS.build("imagefolder", {}, root=str(root), image_size=12)
    assert again.info["train_classes"] == info["train_classes"]
    splits = {
        tuple(DATASETS.build("imagefolder", {"split_seed": s}, root=str(root)).info["train_classes"])
        for s in range(6)
    }
    assert len(splits) > 1


def test_train_and_test_folders_are_used_when_present(tmp_path, write_image):
    make_folder(tmp_path / "train", write_image, ("a", "b"))
    make_folder(tmp_path / "test", write_image, ("c", "d", "e"), per_class=2)
    data = DATASETS.build("imagefolder", {"augmentation": "none"}, root=str(tmp_path))
    assert data.info["train_classes"] == ["a", "b"] and data.info["test_classes"] == ["c", "d", "e"]
    assert len(data.test) == 6 and data.augmentation == "none"


def test_shared_class_names_between_train_and_test_are_refused(tmp_path, write_image):
    make_folder(tmp_path / "train", write_image, ("a", "b"))
    make_folder(tmp_path / "test", write_image, ("b", "c"))
    with pytest.raises(ConfigError, match="different classes"):
        DATASETS.build("imagefolder", {}, root=str(tmp_path))


def test_bad_folders(tmp_path, write_image):
    with pytest.raises(ConfigError) as err:
        DATASETS.build("imagefolder", {}, root=str(tmp_path / "missing"))
    assert err.value.field == "data_root"
    make_folder(tmp_path / "one", write_image, ("only",))
    with pytest.raises(ConfigError, match="at least 2"):
        DATASETS.build("imagefolder", {}, root=str(tmp_path / "one"))
    root = make_folder(tmp_path / "bad", write_image, ("a", "b"))
    (root / "b" / "1.png").write_bytes(b"broken")
    with pytest.raises(ConfigError) as err:
        DATASETS.build("imagefolder", {}, root=str(root))
    assert err.value.value == str(root / "b" / "1.png")
