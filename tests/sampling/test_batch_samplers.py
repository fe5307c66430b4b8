from __future__ import annotations

import numpy as np
import pytest

from tuneddml.errors import ConfigError
from tuneddml.sampling import SAMPLERS


def labels_of(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def test_m_per_class_batches_hold_p_classes_of_k_distinct_items():
    labels = labels_of([6] * 10)
    sampler = SAMPLERS.build("m_per_class", {"samples_per_class": 3})
    sampler.check(labels, 12)
    batches = list(sampler.batches(labels, 12, np.random.default_rng(0)))
    assert len(batches) == len(labels) // 12
    for batch in batches:
        assert len(batch) == 12 and len(set(batch.tolist())) == 12
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and set(counts) == {3}


def test_m_per_class_is_seeded():
    labels = labels_of([5] * 8)
    sampler = SAMPLERS.build("m_per_class", {"samples_per_class": 2})
    a = np.concatenate(list(sampler.batches(labels, 8, np.random.default_rng(3))))
    b = np.concatenate(list(sampler.batches(labels, 8, np.random.default_rng(3))))
    c = np.concatenate(list(sampler.batches(labels, 8, np.random.default_rng(4))))
    assert (a == b).all() and not (a == c).all()


def test_m_per_class_skips_small_classes_unless_replacement():
    labels = labels_of([1, 1, 4, 4, 4])
    strict = SAMPLERS.build("m_per_class", {"samples_per_class": 4})
    for batch in strict.batches(labels, 8, np.random.default_rng(0)):
        assert set(labels[batch]) <= {2, 3, 4}
    loose = SAMPLERS.build("m_per_class", {"samples_per_class": 4, "replacement": True})
    loose.check(labels, 20)  # 5 classes x 4, the two singletons repeat their item


@pytest.mark.parametrize(
    ("sizes", "batch_size", "k", "field", "hint"),
    [
        ([8] * 10, 10, 4, "sampler.samples_per_class", "divisor of batch_size=10"),
        ([8] * 3, 16, 4, "batch_size", "but 3 classes have >= 4 items"),
        ([2] * 10, 8, 4, "sampler.samples_per_class", "at most 2, the second-largest class"),
        ([9, 3, 2], 8, 4, "sampler.samples_per_class", "at most 3, the second-largest class"),
        ([8] * 10, 8, 8, "sampler.samples_per_class", "needs two classes"),  # a batch of one class
    ],
)
def test_m_per_class_explains_what_does_not_fit(sizes, batch_size, k, field, hint):
    sampler = SAMPLERS.build("m_per_class", {"samples_per_class": k})
    with pytest.raises(ConfigError) as info:
        sampler.check(labels_of(sizes), batch_size)
    assert info.value.field == field and hint in str(info.value)


def test_random_batches_cover_each_item_at_most_once():
    labels = labels_of([3] * 7)
    sampler = SAMPLERS.build("random", {})
    batches = list(sampler.batches(labels, 5, np.random.default_rng(0)))
    flat = np.concatenate(batches)
    assert len(batches) == 4 and len(set(flat.tolist())) == 20
    with pytest.raises(ConfigError, match="batch_size"):
        sampler.check(labels, 22)
