"""The contract of batch samplers: which training items form each batch of an epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class BatchSampler:
    """Yields the index arrays of one epoch's batches.

    ``check`` runs before training and raises :class:`~tuneddml.errors.ConfigError` when the
    batch size, the sampler's parameters and the data's class sizes cannot work together.
    """

    def check(self, labels: np.ndarray, batch_size: int) -> None:
        """Raise ConfigError if the sampler cannot make batches of ``batch_size`` from ``labels``."""

    def num_batches(self, labels: np.ndarray, batch_size: int) -> int:
        return max(1, len(labels) // batch_size)

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        raise NotImplementedError
