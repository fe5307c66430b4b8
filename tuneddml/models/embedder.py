"""The embedding model: ``backbone -> linear head``; L2 normalisation is applied by its users.

The trainer normalises before the loss (unless the loss reads certainty from the norm) and the
evaluation always compares normalised embeddings (cosine similarity).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tuneddml.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


class Embedder(nn.Module):
    """``backbone`` (any module returning ``[B, F]`` features with an ``out_features`` attribute)
    followed by a linear head to ``embedding_size``.

    ``freeze_bn``: every batch-norm layer keeps its running statistics and its
    affine weights, as fine-tuning a pretrained backbone on small batches of few classes usually
    wants: the layers stay in eval mode when the model is put in train mode, and their weights do
    not take gradients (so no optimiser changes them).

    ``freeze``: the whole backbone is frozen: it stays in eval mode, its parameters take no
    gradient (the optimiser leaves them out) and it runs under ``torch.no_grad``; only the head
    (and the loss's own parameters) train. Its features are then a function of the input alone,
    which is what cached-feature trials (``features=cached``) store."""

    def __init__(
        self, backbone: nn.Module, embedding_size: int, freeze_bn: bool = False, freeze: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.out_features), embedding_size)  # type: ignore[arg-type]
        self.freeze_bn = bool(freeze_bn)
        self.freeze = bool(freeze)  # set before train() is called below
        if self.freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.train(self.training)
        if self.freeze_bn:
            for layer in self._batch_norms():
                for p in layer.parameters(recurse=False):
                    p.requires_grad_(False)
            self.train(self.training)

    def _batch_norms(self) -> list[_BatchNorm]:
        """BatchNorm1d/2d/3d, SyncBatchNorm, lazy ones and subclasses (timm's BatchNormAct2d)."""
        return [m for m in self.modules() if isinstance(m, _BatchNorm)]

    def train(self, mode: bool = True) -> Embedder:
        super().train(mode)
        if self.freeze_bn and mode:
            for layer in self._batch_norms():
                layer.eval()
        if self.freeze and mode:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze:
            with torch.no_grad():
                features = self.backbone(x)
            return self.head(features)
        return self.head(self.backbone(x))


def build_model(
    backbone: str,
    params: Mapping[str, Any] | None,
    *,
    item_shape: tuple[int, ...],
    embedding_size: int,
    freeze_bn: bool = False,
    freeze: bool = False,
) -> Embedder:
    """Build ``backbone`` for items of ``item_shape`` (``(C, H, W)`` images or ``(D,)`` vectors);
    ``freeze_bn``, ``freeze``: see :class:`Embedder`."""
    net = BACKBONES.build(backbone, params or {}, field="backbone", item_shape=item_shape)
    return Embedder(net, embedding_size, freeze_bn=freeze_bn, freeze=freeze)


def check_backbone(backbone: str, params: Mapping[str, Any] | None) -> None:
    """Before anything runs: a ConfigError for pretrained weights the trials will not find (offline
    and not in the hub cache, a missing local file). Validates ``params``; builds nothing and
    downloads nothing, so it is cheap where the backbone has no ``check`` (small_cnn, mlp)."""
    entry = BACKBONES.available(backbone, "backbone")
    checked = BACKBONES.validate(backbone, params or {}, "backbone")
    check = getattr(entry.factory, "check", None)
    if check is not None:
        check(**checked)
