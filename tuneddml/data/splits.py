"""What a trial trains and evaluates on: class-disjoint folds (Musgrave et al., "A Metric Learning
Reality Check", ECCV 2020).

A search must never look at the test classes. With ``split="val"`` the *training* classes are
partitioned, by a seeded permutation, into ``num_folds`` groups of (nearly) equal size; the trial
trains on all groups but ``fold`` and evaluates retrieval on fold ``fold`` (leave-one-out within
it). With ``split="test"`` (the final, once-only evaluation) it trains on every training class and
evaluates on the dataset's test part (queries against ``test_gallery`` where there is one).

Training labels are remapped to 0..C-1, since proxy losses index a ``[C, D]`` parameter with them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tuneddml.data.base import Dataset, ItemSet
from tuneddml.errors import ConfigError


@dataclass
class TrialData:
    """The items one trial uses: training items, evaluation queries and (optionally) a gallery."""

    train: ItemSet
    query: ItemSet
    gallery: ItemSet | None
    num_train_classes: int
    augmentation: Literal["glyph", "natural", "none"]

    def resized(self, side: int | None) -> TrialData:
        """File-backed images resized to ``side`` before their crop (``resize_size``); items held
        in memory (glyphs, vectors) are left as they are."""
        from tuneddml.data.files import FileItems

        def part(items: Any) -> Any:
            return items.resized(side) if isinstance(items, FileItems) else items

        return dataclasses.replace(self, train=part(self.train), query=part(self.query), gallery=part(self.gallery))


def remap_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..C-1 in the order of their values (same value, same new label)."""
    return np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64).reshape(-1)


def relabelled(items: ItemSet) -> ItemSet:
    """``items`` with labels 0..C-1 (the same object if they already are)."""
    new = remap_labels(items.labels)
    if np.array_equal(new, items.labels):
        return items
    out = items.subset(np.arange(len(items)))
    out.labels = new
    return out


def class_halves(num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, class-disjoint split of ``0..num_classes-1``: (train classes, test classes), sorted.

    The training half gets the odd class out.
    """
    order = np.random.default_rng(seed).permutation(num_classes)
    cut = (num_classes + 1) // 2
    return np.sort(order[:cut]), np.sort(order[cut:])


def class_folds(classes: np.ndarray, num_folds: int, seed: int) -> list[np.ndarray]:
    """``classes`` partitioned by a seeded permutation into ``num_folds`` groups (sizes differ by <= 1)."""
    order = np.asarray(classes)[np.random.default_rng(seed).permutation(len(classes))]
    return [np.sort(fold) for fold in np.array_split(order, num_folds)]


def make_split(
    dataset: Dataset,
    *,
    split: Literal["val", "test"],
    num_folds: int = 4,
    fold: int = 0,
    seed: int = 0,
) -> TrialData:
    """The trial's data: a validation fold of the training classes (``"val"``) or the test part."""
    if split == "test":
        gallery = dataset.test_gallery
        if gallery is not None:
            # queries and gallery share one label space; remap them together
            both = remap_labels(np.concatenate([dataset.test.labels, gallery.labels]))
            query = dataset.test.subset(np.arange(len(dataset.test)))
            query.labels = both[: len(query)]
            gallery = gallery.subset(np.arange(len(gallery)))
            gallery.labels = both[len(query) :]
        else:
            query = relabelled(dataset.test)
        train = relabelled(dataset.train)
        return TrialData(train, query, gallery, len(np.unique(train.labels)), dataset.augmentation)
    if split != "val":
        raise ConfigError("split", split, ("val", "test"))
    classes = np.unique(dataset.train.labels)
    if not 2 <= num_folds <= len(classes):
        raise ConfigError(
            "num_folds",
            num_folds,
            f"an integer in [2, {len(classes)}] (the training classes of {dataset.name})",
        )
    if not 0 <= fold < num_folds:
        raise ConfigError("fold", fold, f"an integer in [0, {num_folds - 1}]")
    held_out = class_folds(classes, num_folds, seed)[fold]
    is_val = np.isin(dataset.train.labels, held_out)
    train = relabelled(dataset.train.subset(np.flatnonzero(~is_val)))
    query = relabelled(dataset.train.subset(np.flatnonzero(is_val)))
    return TrialData(train, query, None, len(np.unique(train.labels)), dataset.augmentation)
