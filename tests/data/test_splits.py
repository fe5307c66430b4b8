from __future__ import annotations

import numpy as np
import pytest

from tuneddml.data.base import ArrayItems, Dataset
from tuneddml.data.splits import class_halves, make_split
from tuneddml.errors import ConfigError


def vectors_dataset(num_train_classes: int = 10, gallery: bool = False) -> Dataset:
    """Each item's vector is [original class, item number], so tests can trace where items went."""
    train_labels = np.repeat(np.arange(num_train_classes) * 3 + 7, 3)  # sparse, non-contiguous ids
    train = ArrayItems(
        np.stack([train_labels, np.arange(len(train_labels))], 1).astype(np.float32), train_labels
    )
    test_labels = np.array([100, 100, 105, 105, 109])
    test = ArrayItems(np.stack([test_labels, np.arange(5)], 1).astype(np.float32), test_labels)
    extra = None
    if gallery:
        g_labels = np.array([109, 105, 100, 111])
        extra = ArrayItems(np.stack([g_labels, np.arange(4)], 1).astype(np.float32), g_labels)
    return Dataset(name="toy", train=train, test=test, test_gallery=extra, augmentation="none")


def original(items: ArrayItems) -> np.ndarray:
    return items.data[:, 0].astype(int)


@pytest.mark.parametrize("num_folds", [2, 3, 4])
def test_val_folds_are_disjoint_and_cover_every_training_class(num_folds):
    data = vectors_dataset()
    held_out = []
    for fold in range(num_folds):
        split = make_split(data, split="val", num_folds=num_folds, fold=fold, seed=3)
        train_classes, val_classes = set(original(split.train)), set(original(split.query))
        assert train_classes.isdisjoint(val_classes)
        assert train_classes | val_classes == set(data.train.labels.tolist())
        assert split.gallery is None
        # labels contiguous from 0, consistent with the original classes
        assert np.array_equal(np.unique(split.train.labels), np.arange(split.num_train_classes))
        assert split.num_train_classes == len(train_classes)
        assert np.array_equal(np.unique(split.query.labels), np.arange(len(val_classes)))
        for items in (split.train, split.query):
            pairs = set(zip(items.labels.tolist(), original(items).tolist()))
            assert len(pairs) == len(set(items.labels.tolist()))  # one original class per new label
        held_out.append(val_classes)
    assert set().union(*held_out) == set(data.train.labels.tolist())
    assert sum(len(h) for h in held_out) == len(set(data.train.labels.tolist()))
    assert max(map(len, held_out)) - min(map(len, held_out)) <= 1


def test_folds_depend_on_the_seed_only():
    data = vectors_dataset(num_train_classes=12)
    a = make_split(data, split="val", num_folds=4, fold=1, seed=0)
    b = make_split(data, split="val", num_folds=4, fold=1, seed=0)
    assert np.array_equal(a.query.data, b.query.data) and np.array_equal(a.train.labels, b.train.labels)
    others = {
        tuple(sorted(set(original(make_split(data, split="val", fold=1, seed=s).query)))) for s in range(5)
    }
    assert len(others) > 1


def test_test_split_trains_on_everything_and_evaluates_on_the_test_part():
    data = vectors_dataset()
    split = make_split(data, split="test")
    assert len(split.train) == len(data.train) and split.num_train_classes == 10
    assert np.array_equal(np.unique(split.train.labels), np.arange(10))
    assert split.query.labels.tolist() == [0, 0, 1, 1, 2] and split.gallery is None
    assert split.augmentation == "none"


def test_test_split_with_a_gallery_shares_one_label_space():
    data = vectors_dataset(gallery=True)
    split = make_split(data, split="test")
    assert split.gallery is not None
    # 100 -> 0, 105 -> 1, 109 -> 2, 111 -> 3 in both queries and gallery
    assert split.query.labels.tolist() == [0, 0, 1, 1, 2]
    assert split.gallery.labels.tolist() == [2, 1, 0, 3]
    assert data.test_gallery.labels.tolist() == [109, 105, 100, 111]  # the dataset is left as it was


def test_bad_fold_settings():
    data = vectors_dataset(num_train_classes=3)
    with pytest.raises(ConfigError) as err:
        make_split(data, split="val", num_folds=4)
    assert err.value.field == "num_folds"
    with pytest.raises(ConfigError) as err:
        make_split(data, split="val", num_folds=3, fold=3)
    assert err.value.field == "fold"
    with pytest.raises(ConfigError) as err:
        make_split(data, split="train")  # type: ignore[arg-type]
    assert err.value.field == "split"


def test_class_halves_is_a_seeded_partition():
    train, test = class_halves(7, seed=0)
    assert len(train) == 4 and len(test) == 3
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(7))
    assert np.array_equal(class_halves(7, seed=0)[0], train)


def test_glyphs_tiny_val_split(tiny):
    split = make_split(tiny, split="val", num_folds=4, fold=2, seed=0)
    assert split.augmentation == "glyph" and split.train.item_shape == (1, 32, 32)
    assert split.num_train_classes + len(np.unique(split.query.labels)) == len(tiny.info["train_classes"])
    assert len(split.train) + len(split.query) == len(tiny.train)
