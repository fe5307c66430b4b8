"""The N-pairs batch of Sohn (NeurIPS 2016): N classes x 2 items."""

from __future__ import annotations

import numpy as np

from tuneddml.errors import ConfigError
from tuneddml.sampling import SAMPLERS
from tuneddml.sampling.m_per_class import MPerClass


@SAMPLERS.register("npairs")
class NPairs(MPerClass):
    """Each batch holds ``N = batch_size / 2`` distinct classes with two items each, an anchor and
    its positive: the "efficient batch construction" of the N-pair loss, where the other N-1
    pairs' positives serve as every anchor's negatives, so a batch of 2N items gives N (N-1)
    negatives for N pairs instead of needing (N+1) N items.

    This is the ``m_per_class`` sampler with ``samples_per_class = 2``; only classes with at least
    two items take part (``replacement=true`` lets a one-item class repeat its item).

    Follows: Sohn 2016, the N-pair batch construction (N pairs of N distinct classes). As published.
    """

    def __init__(self, *, replacement: bool = False) -> None:
        super().__init__(samples_per_class=2, replacement=replacement)

    def check(self, labels: np.ndarray, batch_size: int) -> None:
        if batch_size % 2 or batch_size < 4:
            raise ConfigError(
                "batch_size", batch_size, "an even number >= 4 for the npairs sampler (N classes x 2)"
            )
        super().check(labels, batch_size)
