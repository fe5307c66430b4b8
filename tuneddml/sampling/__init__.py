"""The "sampler" axis of a search: batch samplers (:data:`SAMPLERS`), in-batch miners
(:data:`MINERS`) and embedding-space augmentation (:data:`EMBEDDING_AUGMENTERS`).

Their contracts (base classes, which the registries check at import) are in
:mod:`tuneddml.sampling.base`. Importing this package registers every component.
"""

from __future__ import annotations

from tuneddml.registry import Registry, import_components
from tuneddml.sampling.base import (
    BatchSampler,
    EmbeddingAugmenter,
    Miner,
    check_augmenter_class,
    check_miner_class,
    check_sampler_class,
)

SAMPLERS: Registry[BatchSampler] = Registry("sampler", contract=check_sampler_class)
MINERS: Registry[Miner] = Registry("miner", contract=check_miner_class)
EMBEDDING_AUGMENTERS: Registry[EmbeddingAugmenter] = Registry("embedding_aug", contract=check_augmenter_class)

import_components(__name__)  # each module registers its components

__all__ = ["EMBEDDING_AUGMENTERS", "MINERS", "SAMPLERS", "BatchSampler", "EmbeddingAugmenter", "Miner"]
