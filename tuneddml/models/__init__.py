"""Embedding models: a backbone from :data:`BACKBONES` followed by a linear embedding head."""

from __future__ import annotations

from tuneddml.models.embedder import BACKBONES, Embedder, build_model

# Registration happens on import of each backbone's module.
from tuneddml.models import backbones  # noqa: F401  isort: skip

__all__ = ["BACKBONES", "Embedder", "build_model"]
