"""Datasets, built by name from :data:`DATASETS`; importing this package registers them all.

A dataset is a loader function registered with ``runtime=RUNTIME``: the trial supplies ``root``
(its ``data_root``) and ``image_size`` (its ``image_size``, or, when that is None, the loader's own
default: 32 for the glyphs, 224 for the photo benchmarks), so they are not dataset parameters.
"""

from __future__ import annotations

import inspect
from typing import Any

from tuneddml.data.base import ArrayItems, Dataset, ItemSet
from tuneddml.registry import Registry, import_components

#: the runtime arguments every dataset loader takes, with a default for ``image_size``
RUNTIME = ("root", "image_size")


def check_dataset_loader(name: str, factory: Any) -> None:
    """The registry's contract for datasets: keyword arguments ``root`` and ``image_size`` (an int
    default: the size the dataset's images are made at unless the trial says otherwise)."""
    params = inspect.signature(factory).parameters
    if "root" not in params or "image_size" not in params:
        raise ValueError(f"dataset {name}: a loader takes root and image_size (register with runtime=RUNTIME)")
    if not isinstance(params["image_size"].default, int):
        raise ValueError(f"dataset {name}: image_size needs an integer default (the dataset's own size)")


DATASETS: Registry[Dataset] = Registry("dataset", contract=check_dataset_loader)

import_components(__name__)  # each module registers its components

__all__ = ["DATASETS", "RUNTIME", "ArrayItems", "Dataset", "ItemSet"]
