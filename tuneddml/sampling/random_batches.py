"""Plain shuffled batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tuneddml.errors import ConfigError
from tuneddml.sampling import SAMPLERS
from tuneddml.sampling.base import BatchSampler


@SAMPLERS.register("random")
class RandomBatches(BatchSampler):
    """Each epoch, a random permutation of the training items cut into full batches.

    Follows: no paper: uniform random batches without replacement, the usual baseline.
    """

    def __init__(self) -> None:
        pass

    def check(self, labels: np.ndarray, batch_size: int) -> None:
        if batch_size > len(labels):
            raise ConfigError("batch_size", batch_size, f"at most the {len(labels)} training items")

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        order = rng.permutation(len(labels))
        for b in range(self.num_batches(labels, batch_size)):
            yield order[b * batch_size : (b + 1) * batch_size]
