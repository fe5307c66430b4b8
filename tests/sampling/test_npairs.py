"""The N-pairs batch sampler: N classes x 2 items."""

from __future__ import annotations

import numpy as np
import pytest

from tuneddml.errors import ConfigError
from tuneddml.sampling import SAMPLERS


def _labels(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def test_batches_hold_n_classes_of_two_distinct_items():
    labels = _labels([5, 3, 2, 7, 4, 6, 1, 2])
    sampler = SAMPLERS.build("npairs")
    sampler.check(labels, 10)
    batches = list(sampler.batches(labels, 10, np.random.default_rng(0)))
    assert len(batches) == len(labels) // 10
    for batch in batches:
        assert len(batch) == 10 and len(set(batch.tolist())) == 10
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 5 and set(counts) == {2} and 6 not in classes


def test_seeded():
    labels = _labels([4] * 10)
    sampler = SAMPLERS.build("npairs")
    a = np.concatenate(list(sampler.batches(labels, 8, np.random.default_rng(1))))
    b = np.concatenate(list(sampler.batches(labels, 8, np.random.default_rng(1))))
    assert (a == b).all()


@pytest.mark.parametrize("batch_size", [7, 2])
def test_batch_size_must_be_even(batch_size):
    with pytest.raises(ConfigError) as err:
        SAMPLERS.build("npairs").check(_labels([4] * 10), batch_size)
    assert err.value.field == "batch_size"


def test_too_few_classes_with_two_items():
    with pytest.raises(ConfigError) as err:
        SAMPLERS.build("npairs").check(_labels([1, 1, 3, 3]), 6)
    assert err.value.field == "batch_size"
    SAMPLERS.build("npairs", {"replacement": True}).check(_labels([1, 1, 3, 3]), 6)


def test_only_parameter_is_replacement():
    assert [p.name for p in SAMPLERS.get("npairs").params] == ["replacement"]
    with pytest.raises(ConfigError):
        SAMPLERS.build("npairs", {"samples_per_class": 3})
