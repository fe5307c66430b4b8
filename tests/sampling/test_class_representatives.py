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


# -- the projection's proximal term ----------------------------------------------------------


def _squared_distance_by_hand(model, anchor):
    """sum over parameters of |theta - theta_k|^2, element by element in plain Python."""
    total = 0.0
    for name, p in model.named_parameters():
        for a, b in zip(p.detach().flatten().tolist(), anchor[name].flatten().tolist(), strict=True):
            total += (a - b) ** 2
    return total


def test_proximal_term_matches_a_hand_computation():
    labels = labels_of([4] * 6)
    sampler = SAMPLERS.build(
        "class_representatives", {"samples_per_class": 2, "hold": 2, "proximal_weight": 0.3}
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    emb = torch.zeros(4, 2)
    gen = sampler.batches(labels, 4, np.random.default_rng(0))
    batches = [next(gen) for _ in range(2)]  # the first hold: no previous projection, the term is 0
    for b in batches:
        out = sampler.regulariser(model, b, emb)
        assert set(out) == {"proximal"} and out["proximal"].item() == 0.0
        with torch.no_grad():
            model.weight.add_(0.5)  # an "SGD step"
    third = next(gen)  # a new set of representatives: the weights now are theta_k
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert sampler.regulariser(model, third, emb)["proximal"].item() == 0.0
    with torch.no_grad():
        model.weight.mul_(1.5)
        model.bias.sub_(0.25)
    fourth = next(gen)  # same hold: measured from theta_k
    out = sampler.regulariser(model, fourth, emb)["proximal"]
    assert out.item() == pytest.approx(0.5 * 0.3 * _squared_distance_by_hand(model, anchor), rel=1e-12)
    out.backward()  # its gradient: lambda (theta - theta_k)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 0.3 * (p.detach() - anchor[name]), rtol=1e-12, atol=0)
    # the next hold measures from the weights at its start
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert sampler.regulariser(model, next(gen), emb)["proximal"].item() == 0.0
    # weight 0: no term at all
    off = SAMPLERS.build("class_representatives", {"samples_per_class": 2, "hold": 2, "proximal_weight": 0.0})
    for b in off.batches(labels, 4, np.random.default_rng(0)):
        assert off.regulariser(model, b, emb) == {}


def test_proximal_anchor_survives_state_dict():
    labels = labels_of([4] * 6)
    make = lambda: SAMPLERS.build("class_representatives", {"samples_per_class": 2, "hold": 1})  # noqa: E731
    model = torch.nn.Linear(3, 2)
    first = make()
    gen = first.batches(labels, 4, np.random.default_rng(0))
    first.regulariser(model, next(gen), None)
    first.regulariser(model, next(gen), None)  # second hold: theta_k taken
    with torch.no_grad():
        model.weight.add_(1.0)
    want = first.regulariser(model, None, None)["proximal"].item()
    assert want == pytest.approx(0.5 * 2e-4 * 6, rel=1e-6)  # 6 weights moved by 1, default lambda
    second = make()
    second.load_state_dict(first.state_dict())
    assert second.regulariser(model, None, None)["proximal"].item() == want


TRIAL = {
    "dataset": "glyphs-tiny",
    "split": "test",
    "threads": 1,
    "epochs": 2,
    "steps_per_epoch": 4,
    "batch_size": 16,
    "embedding_size": 8,
    "loss": "supcon",
    "sampler": "class_representatives",
    "sampler.samples_per_class": 2,
    "sampler.hold": 2,
}


def _recording_trainer(settings, monkeypatch):
    """A Trainer whose loss totals and sampler terms are recorded step by step."""
    from tuneddml.config import TrialConfig
    from tuneddml.training import Trainer

    trainer = Trainer(TrialConfig.from_flat({**TRIAL, **settings}))
    seen = {"loss": [], "sampler": []}
    forward, regulariser = trainer.loss.forward, trainer.sampler.regulariser

    def loss_forward(emb, y):
        out = forward(emb, y)
        seen["loss"].append(out["total"].item())
        return out

    def sampler_terms(*args):
        out = regulariser(*args)
        seen["sampler"].append({k: v.item() for k, v in out.items()})
        return out

    monkeypatch.setattr(trainer.loss, "forward", loss_forward)
    monkeypatch.setattr(trainer.sampler, "regulariser", sampler_terms)
    return trainer, seen


@pytest.mark.slow  # three short glyphs-tiny trainers (10-12 s on the shared, loaded 2-core box)
def test_trainer_adds_the_term_to_total_reports_it_and_resumes(monkeypatch, tmp_path):
    from tuneddml.training import run_trial

    trainer, seen = _recording_trainer({"sampler.proximal_weight": 50.0}, monkeypatch)
    terms = trainer.train_epoch()
    prox = [s["proximal"] for s in seen["sampler"]]
    assert prox[0] == prox[1] == 0.0 and prox[3] > 0.0  # first hold 0; grows within the second
    assert terms["proximal"] == pytest.approx(np.mean(prox), rel=1e-9)
    assert terms["total"] == pytest.approx(np.mean(np.add(seen["loss"], prox)), rel=1e-6)
    trainer.save(tmp_path / "state.pt")
    after_one = [p.detach().clone() for p in trainer.model.parameters()]
    straight = trainer.train_epoch()
    assert straight["proximal"] > 0
    resumed = run_trial(trainer.config, resume=tmp_path / "state.pt")  # theta_k comes back with it
    assert resumed.history[-1].terms == straight

    off, seen_off = _recording_trainer({"sampler.proximal_weight": 0.0}, monkeypatch)
    terms_off = off.train_epoch()
    assert set(terms_off) == {"pos", "ent", "total"}  # today's terms only
    assert terms_off["total"] == pytest.approx(np.mean(seen_off["loss"]), rel=1e-9)
    # the same batches and losses until the term's gradient first acts (step 4), then other weights
    assert seen_off["loss"] == pytest.approx(seen["loss"][:4], rel=1e-6)
    assert not all(torch.equal(a, p) for a, p in zip(after_one, off.model.parameters(), strict=True))
