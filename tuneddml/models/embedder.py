"""The embedding model: ``backbone -> linear head``; L2 normalisation is applied by its users.

The trainer normalises before the loss (unless the loss reads certainty from the norm) and the
evaluation always compares normalised embeddings (cosine similarity).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tuneddml.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


class Embedder(nn.Module):
    """``backbone`` (any module returning ``[B, F]`` features with an ``out_features`` attribute)
    followed by a linear head to ``embedding_size``."""

    def __init__(self, backbone: nn.Module, embedding_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.out_features), embedding_size)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(
    backbone: str,
    params: Mapping[str, Any] | None,
    *,
    item_shape: tuple[int, ...],
    embedding_size: int,
    freeze_bn: bool = False,
) -> Embedder:
    """Build ``backbone`` for items of ``item_shape`` (``(C, H, W)`` images or ``(D,)`` vectors);
    ``freeze_bn``: its BatchNorm layers' affine parameters get no gradient."""
    net = BACKBONES.build(backbone, params or {}, field="backbone", item_shape=item_shape)
    if freeze_bn:  # placeholder until the models branch's freeze_bn is merged
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)
    return Embedder(net, embedding_size)
