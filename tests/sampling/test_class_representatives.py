from __future__ import annotations

import numpy as np
import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.sampling import SAMPLERS


def labels_of(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def _draw(sampler, labels, batch_size, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        out.extend(sampler.batches(labels, batch_size, rng))
    return out[:n]


def test_batches_are_p_classes_of_k_items_each_led_by_its_representative():
    labels = labels_of([6] * 12)
    sampler = SAMPLERS.build("class_representatives", {"samples_per_class": 3, "hold": 4})
    sampler.check(labels, 12)
    rng = np.random.default_rng(0)
    for batch in sampler.batches(labels, 12, rng):
        assert len(batch) == 12 and len(set(batch.tolist())) == 12
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and set(counts) == {3}
        reps = sampler.representatives()
        for start in range(0, 12, 3):  # each class's block starts with its representative
            block = batch[start : start + 3]
            assert reps[int(labels[block[0]])] == block[0]


def test_representatives_are_held_for_hold_batches_then_redrawn():
    labels = labels_of([10] * 8)
    sampler = SAMPLERS.build("class_representatives", {"samples_per_class": 2, "hold": 3})
    rng = np.random.default_rng(1)
    seen = []
    for batch in sampler.batches(labels, 8, rng):  # 80 // 8 = 10 batches
        seen.append(dict(sampler.representatives()))
        for start in range(0, 8, 2):
            assert batch[start] == seen[-1][int(labels[batch[start]])]
    windows = [seen[i : i + 3] for i in range(0, 9, 3)]
    for window in windows:
        assert all(w == window[0] for w in window)
    assert windows[0][0] != windows[1][0] != windows[2][0]
    # the held set carries over into the next epoch until its hold is used up
    sampler2 = SAMPLERS.build("class_representatives", {"samples_per_class": 2, "hold": 3})
    rng = np.random.default_rng(1)
    list(sampler2.batches(labels, 8, rng))
    last = sampler2.representatives()
    next(iter(sampler2.batches(labels, 8, rng)))  # batch 11 = 2nd of the 4th window
    assert sampler2.representatives() == last


def test_seeded_and_checkpointable():
    labels = labels_of([5] * 10)
    make = lambda: SAMPLERS.build("class_representatives", {"samples_per_class": 2, "hold": 2})  # noqa: E731
    a = np.concatenate(_draw(make(), labels, 8, 5, seed=3))
    b = np.concatenate(_draw(make(), labels, 8, 5, seed=3))
    c = np.concatenate(_draw(make(), labels, 8, 5, seed=4))
    assert (a == b).all() and not (a == c).all()

    first = make()
    rng = np.random.default_rng(0)
    gen = first.batches(labels, 8, rng)
    next(gen)
    state, rng_state = first.state_dict(), rng.bit_generator.state
    expected = next(gen)
    second = make()
    second.load_state_dict(state)
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = rng_state
    assert (next(second.batches(labels, 8, rng2)) == expected).all()


def _clustered(num_classes=16, per_class=4, clusters=4, dim=8, seed=0):
    """Class c's representative embedding lies near centre c % clusters."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return labels_of([per_class] * num_classes), centres


def test_hard_class_mining_groups_classes_whose_representatives_are_close():
    labels, centres = _clustered()
    sampler = SAMPLERS.build(
        "class_representatives", {"samples_per_class": 2, "hold": 1000, "hard_fraction": 0.75}
    )
    rng = np.random.default_rng(0)
    gen = sampler.batches(labels, 8, rng)
    next(gen)

    def observe_all():
        reps = sampler.representatives()
        idx = np.array(list(reps.values()))
        emb = np.stack([centres[c % 4] + 0.01 * rng.normal(size=8) for c in reps])
        sampler.observe(idx, torch.tensor(emb, dtype=torch.float32))

    observe_all()
    for batch in _draw(sampler, labels, 8, 20, seed=5):
        classes = labels[batch][::2]  # the representative of each class block
        # 1 random seed class + 3 mined ones: all from the seed's cluster
        assert len({c % 4 for c in classes}) == 1

    random = SAMPLERS.build("class_representatives", {"samples_per_class": 2, "hold": 1000})
    mixed = [len({c % 4 for c in labels[b][::2]}) for b in _draw(random, labels, 8, 20)]
    assert np.mean(mixed) > 2  # without mining, a batch's classes spread over the clusters


def test_without_observed_embeddings_hard_mining_falls_back_to_random_classes():
    labels = labels_of([4] * 10)
    sampler = SAMPLERS.build("class_representatives", {"samples_per_class": 2, "hard_fraction": 1.0})
    for batch in _draw(sampler, labels, 8, 6):
        assert len(np.unique(labels[batch])) == 4


@pytest.mark.parametrize(
    ("params", "batch_size", "field"),
    [
        ({"samples_per_class": 3}, 8, "sampler.samples_per_class"),
        ({"samples_per_class": 4}, 40, "batch_size"),
    ],
)
def test_explains_what_does_not_fit(params, batch_size, field):
    sampler = SAMPLERS.build("class_representatives", params)
    with pytest.raises(ConfigError) as err:
        sampler.check(labels_of([4] * 6), batch_size)
    assert err.value.field == field


def test_parameter_ranges():
    with pytest.raises(ConfigError):
        SAMPLERS.build("class_representatives", {"samples_per_class": 1})
    with pytest.raises(ConfigError):
        SAMPLERS.build("class_representatives", {"hold": 0})
    with pytest.raises(ConfigError):
        SAMPLERS.build("class_representatives", {"hard_fraction": 1.5})
