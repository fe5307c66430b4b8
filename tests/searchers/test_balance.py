"""The balance search's own behaviour (the shared contract is in test_searcher_contract.py):
exploration, the family race, coupled coordinates, the min_gain threshold on moves, stopped trials, slot
utilisation, save/restore."""

from __future__ import annotations

import heapq
import json
import math
import random

import pytest
from searcher_helpers import space_from_text

from tuneddml.searchers.balance import BalanceOptions, BalanceSearch, family_coordinate
from tuneddml.searchers.coordinate_descent import FINISHED

SPACE = """
    mode: max
    parameters:
      loss: {choice: [supcon, contrastive, normsoftmax]}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.5}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: [supcon, normsoftmax]}}
      loss.pos_margin: {uniform: [0.5, 1.0], start: 0.8, when: {loss: contrastive}}
      batch_size: {choice: [32, 64, 128], start: 64}
"""


def landscape(config, noise=0.0, rng=None):
    """Contrastive is the best family, but only once its margin is near 1 (its start is poor)."""
    lam = config["loss.lambda"]
    value = {"supcon": 0.60, "contrastive": 0.75, "normsoftmax": 0.30}[config["loss"]] - (lam - 0.3) ** 2
    if "loss.temperature" in config:
        value -= 0.05 * (math.log10(config["loss.temperature"]) + 1.5) ** 2
    if "loss.pos_margin" in config:
        value -= 2.0 * (config["loss.pos_margin"] - 1.0) ** 2
    value += 0.01 * (config["batch_size"] == 128)
    return value + (rng.gauss(0, noise) if rng else 0.0)


def run(core, objective, slots, cost=None, limit=10_000):
    """Trials in flight on ``slots`` workers of a virtual clock; returns (history, utilisation)."""
    cost = cost or (lambda config: 1.0)
    clock, running, history, busy, seq = 0.0, [], [], 0.0, 0
    for _ in range(limit):
        while len(running) < slots:
            got = core.ask()
            if got is None or got == FINISHED:
                break
            key, config = got
            duration = cost(config)
            busy += duration
            heapq.heappush(running, (clock + duration, seq, key, config))
            seq += 1
        if not running:
            break
        clock, _, key, config = heapq.heappop(running)
        value = objective(config)
        history.append((key, config, value))
        core.tell(key, value)
    return history, busy / (slots * clock) if clock else 0.0


@pytest.fixture
def space(tmp_path):
    return space_from_text(tmp_path, SPACE)


def test_the_family_coordinate_is_the_key_others_depend_on(space):
    assert family_coordinate(space) == "loss"


def test_every_family_starts_at_its_own_start_point_first(space):
    core = BalanceSearch(space, seed=0, max_trials=16)
    first = [core.ask()[1] for _ in range(3)]
    assert [c["loss"] for c in first] == ["supcon", "contrastive", "normsoftmax"]
    assert all(c["loss.lambda"] == 0.5 for c in first)
    assert first[1]["loss.pos_margin"] == 0.8 and first[0]["loss.temperature"] == 0.1


def test_the_race_finds_a_family_whose_start_is_poor(space):
    """Contrastive starts at 0.75 - 0.04 - 0.08 = 0.63 (margin 0.8), barely above supcon's 0.585:
    one categorical line at the start values, as plain coordinate descent does, can settle on
    either; the race refines both and ends on contrastive with its margin near 1."""
    for seed in range(3):
        core = BalanceSearch(space, seed=seed, max_trials=48)
        history, _ = run(core, landscape, slots=2)
        config, value = core.best()
        assert config["loss"] == "contrastive", seed
        assert config["loss.pos_margin"] > 0.9 and value > 0.72
        late = [c["loss"] for _, c, _ in history[-12:]]
        assert "normsoftmax" not in late  # the weakest family was dropped


def test_a_dropped_family_gets_no_more_trials(space):
    core = BalanceSearch(space, seed=0, max_trials=40)
    history, _ = run(core, landscape, slots=1)
    normsoftmax = [i for i, (_, c, _) in enumerate(history) if c["loss"] == "normsoftmax"]
    assert normsoftmax and max(normsoftmax) < 16
    assert not core._families[2]["alive"]


def test_lambda_is_revisited_after_a_coupled_coordinate_moves(tmp_path):
    """A single family where the best lambda depends on the temperature: after the temperature
    moves, lambda gets another line (plain coordinate descent settles lambda first and never
    comes back at a budget this small)."""
    space = space_from_text(
        tmp_path,
        """
        mode: max
        parameters:
          loss.lambda: {uniform: [0.0, 1.0], start: 0.5}
          loss.temperature: {loguniform: [0.01, 1.0], start: 1.0}
        """,
    )

    def coupled(config):
        t = math.log10(config["loss.temperature"])  # -2 .. 0
        best_lambda = 0.5 + 0.2 * (t + 1)  # 0.3 at t = 0.01, 0.7 at t = 1
        return -((config["loss.lambda"] - best_lambda) ** 2) - 0.1 * (t + 2) ** 2

    core = BalanceSearch(space, seed=0, max_trials=30, options=BalanceOptions(line_points=2, min_gain=0.0))
    history, _ = run(core, coupled, slots=1)
    coords = []
    for _, config, _ in history[1:]:
        changed = "loss.temperature" if config["loss.temperature"] != 1.0 else "loss.lambda"
        coords.append(changed)
    first_t = coords.index("loss.temperature")
    lambdas_after = {c["loss.lambda"] for _, c, _ in history[first_t + 3 :]}
    assert len(lambdas_after) > 1, "lambda never searched again once the temperature had moved"
    config, _ = core.best()
    assert config["loss.temperature"] < 0.1 and config["loss.lambda"] < 0.5


def test_a_gain_inside_min_gain_is_no_move(tmp_path):
    space = space_from_text(tmp_path, "mode: max\nparameters:\n  x: {uniform: [0, 1], start: 0.5}\n")
    flat = lambda config: 1.0 + 0.001 * config["x"]  # noqa: E731  gains far below min_gain
    core = BalanceSearch(space, seed=0, max_trials=12, options=BalanceOptions(explore=0.0, min_gain=0.01))
    run(core, flat, slots=1)
    assert core.best()[0]["x"] == 0.5
    assert core._families[0]["steps"]["x"] < 0.25  # the step shrank instead
    core = BalanceSearch(space, seed=0, max_trials=12, options=BalanceOptions(explore=0.0, min_gain=0.0))
    run(core, flat, slots=1)
    assert core.best()[0]["x"] > 0.5


def test_a_stopped_trial_never_becomes_the_incumbent(tmp_path):
    space = space_from_text(tmp_path, "mode: max\nparameters:\n  x: {uniform: [0, 1], start: 0.5}\n")
    core = BalanceSearch(space, seed=0, max_trials=6, options=BalanceOptions(explore=0.0))
    key, start = core.ask()
    core.tell(key, 0.5)
    asked = [core.ask() for _ in range(4)]
    for i, (key, _) in enumerate(asked):
        core.tell(key, 0.9 + i, complete=False)  # far better, but truncated (stopped by ASHA)
    config, value = core.best()
    assert config == start and value == 0.5


def test_eight_slots_stay_busy(space):
    rng = random.Random(0)
    core = BalanceSearch(space, seed=0, max_trials=200)
    history, utilisation = run(
        core, lambda c: landscape(c, 0.01, rng), slots=8, cost=lambda c: rng.uniform(0.5, 1.5)
    )
    assert len(history) == 200
    assert utilisation >= 0.9


def test_save_restore_continues_exactly(space):
    def trace(interrupt):
        rng = random.Random(1)
        core = BalanceSearch(space, seed=3, max_trials=30)
        out, pending = [], []
        for step in range(200):
            got = core.ask()
            if got == FINISHED:
                break
            if got is not None:
                pending.append(got)
            if got is None or len(pending) >= 3:
                key, config = pending.pop(0)
                core.tell(key, landscape(config, 0.02, rng))
                out.append((key, config))
            if step == interrupt:
                state = json.loads(json.dumps(core.state_dict()))  # JSON only
                core = BalanceSearch(space, seed=3, max_trials=30)
                core.load_state_dict(state)
        return out

    assert trace(interrupt=-1) == trace(interrupt=17)


def test_state_of_another_space_is_refused(space, tmp_path):
    other = space_from_text(tmp_path, "mode: max\nparameters:\n  x: {uniform: [0, 1]}\n", name="y")
    with pytest.raises(ValueError, match="different space"):
        BalanceSearch(other).load_state_dict(BalanceSearch(space).state_dict())


def test_without_slot_filling_it_waits_for_each_line(space):
    core = BalanceSearch(space, seed=0, max_trials=30, options=BalanceOptions(fill_slots=False))
    for _ in range(3):  # every family's start point
        key, _ = core.ask()
        core.tell(key, 0.5)
    first = [core.ask() for _ in range(5)]
    assert all(isinstance(got, tuple) for got in first[:4]) and first[4] is None  # one line of 4, then wait
    for key, _ in first[:4]:
        core.tell(key, 0.1)
    assert isinstance(core.ask(), tuple)
