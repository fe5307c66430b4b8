"""The "sampler" axis of a search: batch samplers (:data:`SAMPLERS`), in-batch miners
(:data:`MINERS`) and embedding-space augmentation (:data:`EMBEDDING_AUGMENTERS`).

An embedding augmenter is an ``nn.Module`` called as ``aug(embeddings, labels) -> (embeddings,
labels)`` between the model and the loss during training only (it may add synthetic embeddings
and their labels); it may define ``on_epoch_start(epoch, context)`` like a loss.
"""

from __future__ import annotations

from typing import Any

from tuneddml.registry import Registry

SAMPLERS: Registry[Any] = Registry("sampler")
MINERS: Registry[Any] = Registry("miner")
EMBEDDING_AUGMENTERS: Registry[Any] = Registry("embedding_aug")

from tuneddml.sampling import _all  # noqa: E402,F401

__all__ = ["EMBEDDING_AUGMENTERS", "MINERS", "SAMPLERS"]
