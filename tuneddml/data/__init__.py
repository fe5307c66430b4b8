"""Datasets, built by name from :data:`DATASETS`; importing this package registers them all."""

from __future__ import annotations

from tuneddml.data.base import ArrayItems, Dataset, ItemSet
from tuneddml.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset")

from tuneddml.data import _all  # noqa: E402,F401

__all__ = ["DATASETS", "ArrayItems", "Dataset", "ItemSet"]
