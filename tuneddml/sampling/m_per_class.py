"""P classes x K samples per batch (the "PK" or m-per-class sampler)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tuneddml.errors import ConfigError
from tuneddml.sampling import SAMPLERS
from tuneddml.sampling.base import BatchSampler


@SAMPLERS.register("m_per_class", ranges={"samples_per_class": "[1, 1024]"})
class MPerClass(BatchSampler):
    """Each batch holds ``P = batch_size / samples_per_class`` distinct classes with
    ``K = samples_per_class`` items each, so every anchor has positives in the batch.

    Items are drawn without replacement within a batch; only classes with at least ``K`` items
    take part unless ``replacement`` is true (then a small class repeats items).

    Follows: the P x K batches of Hermans, Beyer & Leibe 2017 (pytorch-metric-learning's
    ``MPerClassSampler``). As published.
    """

    def __init__(self, *, samples_per_class: int = 4, replacement: bool = False) -> None:
        self.k = samples_per_class
        self.replacement = replacement

    def _eligible(self, labels: np.ndarray) -> list[np.ndarray]:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        return [g for g in groups if self.replacement or len(g) >= self.k]

    def check(self, labels: np.ndarray, batch_size: int) -> None:
        if batch_size % self.k:
            raise ConfigError("sampler.samples_per_class", self.k, f"a divisor of batch_size={batch_size}")
        p = batch_size // self.k
        if p < 2:
            raise ConfigError(
                "sampler.samples_per_class",
                self.k,
                f"at most batch_size/2 = {batch_size // 2}: a batch of batch_size={batch_size} needs two "
                "classes or more (one class has no negatives)",
            )
        sizes = np.unique(labels, return_counts=True)[1]  # counts only: cheap on 100k items
        eligible = len(sizes) if self.replacement else int((sizes >= self.k).sum())
        if p > eligible and eligible < 2:  # K itself is the problem: larger than the classes
            largest = int(np.sort(sizes)[-2]) if len(sizes) > 1 else int(sizes.max())
            raise ConfigError(
                "sampler.samples_per_class",
                self.k,
                f"at most {largest}, the second-largest class, so that a batch holds 2 classes; "
                "or sampler.replacement=true",
            )
        if p > eligible:
            raise ConfigError(
                "batch_size",
                batch_size,
                f"at most {eligible * self.k}: {p} classes of K={self.k} per batch, but {eligible} classes have "
                f">= {self.k} items; lower batch_size or K, or sampler.replacement=true",
            )

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        groups = self._eligible(labels)
        p = batch_size // self.k
        for _ in range(self.num_batches(labels, batch_size)):
            classes = rng.choice(len(groups), size=p, replace=False)
            picks = [
                rng.choice(groups[c], size=self.k, replace=self.replacement and len(groups[c]) < self.k)
                for c in classes
            ]
            yield np.concatenate(picks)
