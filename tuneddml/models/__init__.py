"""Embedding models: a backbone from :data:`BACKBONES` followed by a linear embedding head."""

from __future__ import annotations

from tuneddml.models.embedder import BACKBONES, Embedder, build_model, check_backbone
from tuneddml.registry import import_components

import_components(__name__, skip=("embedder",))  # each backbone module registers its backbones

__all__ = ["BACKBONES", "Embedder", "build_model", "check_backbone"]
