"""What a dataset is, for a trial.

A dataset loader (registered in :data:`tuneddml.data.DATASETS`) returns a :class:`Dataset`: a
training part and an evaluation part whose classes are disjoint (zero-shot retrieval). Items are
read in batches through :class:`ItemSet.load`, so images can live in memory (glyphs) or on disk
(the benchmarks) behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch


class ItemSet(Protocol):
    """Indexed items with integer class labels.

    ``load(indices)`` returns a float32 tensor: ``[B, C, H, W]`` in ``[0, 1]`` for images
    (``kind == "image"``), ``[B, D]`` for feature vectors (``kind == "vector"``).
    """

    labels: np.ndarray  # int64, shape [N]
    kind: Literal["image", "vector"]

    def __len__(self) -> int: ...

    def load(self, indices: np.ndarray) -> torch.Tensor: ...

    def subset(self, indices: np.ndarray) -> ItemSet: ...

    @property
    def item_shape(self) -> tuple[int, ...]: ...


class ArrayItems:
    """Items held in memory as one array: uint8 images ``[N, C, H, W]`` or float vectors ``[N, D]``."""

    def __init__(self, data: np.ndarray, labels: np.ndarray) -> None:
        if len(data) != len(labels):
            raise ValueError(f"{len(data)} items but {len(labels)} labels")
        self.data = data
        self.labels = np.asarray(labels, dtype=np.int64)
        self.kind: Literal["image", "vector"] = "image" if data.ndim == 4 else "vector"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def load(self, indices: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(self.data[indices]))
        if self.kind == "image":
            return batch.float().div_(255.0)
        return batch.float()

    def subset(self, indices: np.ndarray) -> ArrayItems:
        return ArrayItems(self.data[indices], self.labels[indices])


@dataclass
class Dataset:
    """A loaded dataset: class-disjoint ``train`` and ``test`` parts.

    ``test`` is queried against itself (leave-one-out) unless ``test_gallery`` is given, in which
    case ``test`` holds the queries (In-Shop's protocol). ``augmentation`` names the training
    augmentation that suits the images (see :mod:`tuneddml.data.transforms`).
    """

    name: str
    train: ItemSet
    test: ItemSet
    test_gallery: ItemSet | None = None
    augmentation: Literal["glyph", "natural", "none"] = "none"
    info: dict[str, object] = field(default_factory=dict)
