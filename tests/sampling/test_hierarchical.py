from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.sampling import SAMPLERS


def labels_of(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def _group_of(sampler, labels):
    """class label -> super-group number, from the sampler's current partition."""
    classes = np.unique(labels)
    return {int(classes[pos]): gi for gi, group in enumerate(sampler.groups) for pos in group}


def test_batches_hold_whole_super_groups_of_classes_of_k_items():
    labels = labels_of([5] * 24)
    sampler = SAMPLERS.build(
        "hierarchical",
        {"samples_per_class": 2, "classes_per_group": 3, "group_size": 6, "grouping": "random"},
    )
    sampler.check(labels, 12)
    batches = list(sampler.batches(labels, 12, np.random.default_rng(0)))
    assert len(batches) == len(labels) // 12
    assert sorted(len(g) for g in sampler.groups) == [6, 6, 6, 6]
    group_of = _group_of(sampler, labels)
    for batch in batches:
        assert len(set(batch.tolist())) == 12
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 6 and set(counts) == {2}
        per_group = np.bincount([group_of[int(c)] for c in classes], minlength=4)
        assert sorted(per_group[per_group > 0].tolist()) == [3, 3]  # 2 super-groups x 3 classes


def test_random_partition_is_seeded_and_redrawn_each_pass():
    labels = labels_of([4] * 16)
    make = lambda: SAMPLERS.build("hierarchical", {"samples_per_class": 2, "grouping": "random"})  # noqa: E731
    a, b = make(), make()
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert (
        np.concatenate(list(a.batches(labels, 16, rng_a)))
        == np.concatenate(list(b.batches(labels, 16, rng_b)))
    ).all()
    first = [g.tolist() for g in a.groups]
    list(a.batches(labels, 16, rng_a))
    assert [g.tolist() for g in a.groups] != first


def _observe_pass(sampler, labels, rng, centres):
    """One pass of batches, feeding back embeddings near the centre of each class's cluster."""
    for batch in sampler.batches(labels, 16, rng):
        emb = centres[labels[batch] % len(centres)] + 0.05 * rng.normal(size=(len(batch), centres.shape[1]))
        sampler.observe(batch, torch.tensor(emb, dtype=torch.float32))


def test_embedding_grouping_puts_classes_with_close_means_together():
    labels = labels_of([4] * 32)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    sampler = SAMPLERS.build(
        "hierarchical", {"samples_per_class": 2, "classes_per_group": 4, "group_size": 8}
    )
    _observe_pass(sampler, labels, rng, centres)  # first pass: random groups; observe
    for _ in range(3):  # enough passes that every class was observed at least once
        _observe_pass(sampler, labels, rng, centres)
    next(iter(sampler.batches(labels, 16, rng)))  # regroup from the last pass's class means
    for group in sampler.groups:
        assert len({int(c) % 4 for c in np.unique(labels)[group]}) == 1
    # and the batches then hold neighbouring classes only
    group_of = _group_of(sampler, labels)
    batch = next(iter(sampler.batches(labels, 16, np.random.default_rng(3))))
    assert len({group_of[int(c)] for c in np.unique(labels[batch])}) == 2


def test_embedding_grouping_warns_when_nothing_is_observed():
    labels = labels_of([4] * 16)
    sampler = SAMPLERS.build("hierarchical", {"samples_per_class": 2})
    rng = np.random.default_rng(0)
    list(sampler.batches(labels, 16, rng))
    with pytest.warns(UserWarning, match="observe"):
        list(sampler.batches(labels, 16, rng))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(sampler.batches(labels, 16, rng))  # once only


def test_unseen_classes_still_get_a_group():
    labels = labels_of([4] * 16)
    sampler = SAMPLERS.build(
        "hierarchical", {"samples_per_class": 2, "classes_per_group": 2, "group_size": 4}
    )
    list(sampler.batches(labels, 8, np.random.default_rng(0)))
    idx = np.flatnonzero(labels < 6)  # only classes 0..5 observed
    sampler.observe(idx, torch.randn(len(idx), 8))
    list(sampler.batches(labels, 8, np.random.default_rng(1)))
    members = np.sort(np.concatenate(sampler.groups))
    assert (members == np.arange(16)).all() and all(len(g) == 4 for g in sampler.groups)


@pytest.mark.parametrize(
    ("params", "batch_size", "hint"),
    [
        (
            {"samples_per_class": 2, "classes_per_group": 4},
            12,
            "multiple of samples_per_class * classes_per_group = 8",
        ),
        ({"samples_per_class": 2, "classes_per_group": 2, "group_size": 8}, 16, "only 1 groups"),
    ],
)
def test_explains_what_does_not_fit(params, batch_size, hint):
    sampler = SAMPLERS.build("hierarchical", params)
    with pytest.raises(ConfigError) as err:
        sampler.check(labels_of([4] * 12), batch_size)
    assert err.value.field == "batch_size" and hint in str(err.value)


def test_group_size_below_classes_per_group_is_rejected():
    with pytest.raises(ConfigError) as err:
        SAMPLERS.build("hierarchical", {"classes_per_group": 4, "group_size": 2})
    assert err.value.field == "sampler.group_size"


def test_state_round_trip():
    labels = labels_of([4] * 16)
    a = SAMPLERS.build("hierarchical", {"samples_per_class": 2})
    rng = np.random.default_rng(0)
    _observe_pass(a, labels, rng, np.eye(4, 8))
    b = SAMPLERS.build("hierarchical", {"samples_per_class": 2})
    b.load_state_dict(a.state_dict())
    state = rng.bit_generator.state
    out_a = next(iter(a.batches(labels, 16, rng)))
    rng.bit_generator.state = state
    out_b = next(iter(b.batches(labels, 16, rng)))
    assert (out_a == out_b).all()
