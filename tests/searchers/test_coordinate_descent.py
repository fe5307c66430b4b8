from __future__ import annotations

import json
import math

import pytest
from searcher_helpers import BOWL, bowl, drive, space_from_text

from tuneddml.searchers.coordinate_descent import FINISHED, CoordinateDescent, CoordinateDescentOptions
from tuneddml.searchers.space import config_key

CONDITIONAL = """
    parameters:
      loss: {choice: [a, b, c]}
      loss.lambda: {uniform: [0.0, 1.0], start: 0.5}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: b}}
      loss.margin: {uniform: [0.0, 1.0], start: 0.5, when: {loss: [a, c]}}
"""


def conditional_objective(config: dict) -> float:
    """Loss b is best (already at the start values), at temperature 0.5 and lambda 0.8; a and c
    are almost flat and worse."""
    if config["loss"] != "b":
        return 0.1 - 0.01 * config["loss.margin"]
    return 1.0 - 0.2 * math.log(config["loss.temperature"] / 0.5) ** 2 - (config["loss.lambda"] - 0.8) ** 2


def test_converges_on_a_bowl_with_log_and_int_coordinates(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    core = CoordinateDescent(space, seed=0, max_trials=200)
    history = drive(core, bowl)
    best, value = core.best()
    assert value == max(v for _, _, v in history)
    assert value > -0.01
    assert abs(best["x"] - 1.3) <= 10 / 32  # within the minimum step of the range
    assert abs(math.log10(best["lr"]) - math.log10(3e-3)) <= 3 / 32
    assert abs(best["k"] - 20) <= 2
    assert bowl(history[0][1]) < -0.5  # it started far away


def test_minimises_in_mode_min(tmp_path):
    space = space_from_text(tmp_path, BOWL.replace("mode: max", "mode: min"))
    core = CoordinateDescent(space, seed=0, max_trials=200)
    drive(core, lambda c: -bowl(c))
    best, value = core.best()
    assert value < 0.01 and abs(best["x"] - 1.3) <= 10 / 32


def test_categorical_that_matters_and_conditions(tmp_path):
    space = space_from_text(tmp_path, CONDITIONAL)
    core = CoordinateDescent(space, seed=1, max_trials=120)
    history = drive(core, conditional_objective)
    for _, config, _ in history:
        assert ("loss.temperature" in config) == (config["loss"] == "b")
        assert ("loss.margin" in config) == (config["loss"] in ("a", "c"))
    best, value = core.best()
    assert best["loss"] == "b"
    assert abs(math.log(best["loss.temperature"] / 0.5)) < 0.3
    assert abs(best["loss.lambda"] - 0.8) <= 1 / 16
    assert value > 0.99


def test_respects_bounds_and_types(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    core = CoordinateDescent(
        space, seed=0, max_trials=150, options=CoordinateDescentOptions(initial_step=1.0, min_step=0.01)
    )
    history = drive(core, lambda c: c["x"] + c["k"] - c["lr"])  # optimum at a corner: pushes on the bounds
    assert len(history) > 20
    for _, config, _ in history:
        assert isinstance(config["x"], float) and -5.0 <= config["x"] <= 5.0
        assert isinstance(config["lr"], float) and 1e-4 <= config["lr"] <= 0.1
        assert type(config["k"]) is int and 1 <= config["k"] <= 64
    best, _ = core.best()
    assert best == {"x": 5.0, "lr": 1e-4, "k": 64}


def test_never_evaluates_a_config_twice(tmp_path):
    space = space_from_text(tmp_path, CONDITIONAL)
    history = drive(CoordinateDescent(space, seed=0, max_trials=None), conditional_objective)
    keys = [config_key(c) for _, c, _ in history]
    assert len(keys) == len(set(keys))


def test_stops_when_nothing_moves(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    core = CoordinateDescent(space, seed=0, max_trials=None)
    history = drive(core, bowl)
    assert core.finished and core.ask() == FINISHED
    assert 20 < len(history) < 400


def test_budget_is_exact_and_lines_run_in_parallel(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    core = CoordinateDescent(space, seed=0, max_trials=7, options=CoordinateDescentOptions(line_points=4))
    first = [core.ask() for _ in range(5)]
    assert all(isinstance(g, tuple) for g in first)  # the start point and a line of 4, before any result
    assert first[0][1] == {"x": -4.0, "lr": 0.05, "k": 2}
    assert [c["x"] for _, c in first[1:]] == [-1.5, -5.0, 1.0, 3.5]  # +h, -h clipped, +2h, (-2h: dup), +3h
    assert core.ask() is None  # waits for the line
    for key, config in first:
        core.tell(key, bowl(config))
    rest = drive(core, bowl)
    assert len(rest) == 2 and core.ask() == FINISHED


def test_survives_failed_and_diverged_results(tmp_path):
    space = space_from_text(tmp_path, BOWL)

    def flaky(config: dict) -> float | None:
        if config["x"] > 2.0:
            return math.nan
        if config["k"] > 40:
            return None
        if config["lr"] > 0.03:
            return math.inf
        return bowl(config)

    core = CoordinateDescent(space, seed=0, max_trials=150)
    drive(core, flaky)
    best, value = core.best()
    assert value is not None and math.isfinite(value) and value > -0.05
    assert best["x"] <= 2.0 and best["k"] <= 40


def test_all_results_failing_ends_quietly(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    core = CoordinateDescent(space, seed=0, max_trials=None)
    history = drive(core, lambda c: None)
    assert core.finished and len(history) > 3
    assert core.best()[1] is None


def test_reproducible_with_a_seed(tmp_path):
    space = space_from_text(tmp_path, CONDITIONAL)

    def run(seed: int) -> list:
        return [
            (k, c)
            for k, c, _ in drive(CoordinateDescent(space, seed=seed, max_trials=60), conditional_objective)
        ]

    assert run(3) == run(3)
    assert run(3) != run(4)  # later cycles visit coordinates in a seeded order


@pytest.mark.parametrize("stop_after", [1, 4, 13, 30])
def test_state_dict_round_trip_continues_identically(tmp_path, stop_after):
    space = space_from_text(tmp_path, CONDITIONAL)
    uninterrupted = CoordinateDescent(space, seed=2, max_trials=50)
    reference = drive(uninterrupted, conditional_objective)

    core = CoordinateDescent(space, seed=2, max_trials=50)
    asked: list[tuple] = []
    pending: list[tuple] = []
    while len(asked) < stop_after:  # hand out some trials, leave the last line partly untold
        got = core.ask()
        if got is None:
            key, config = pending.pop(0)
            core.tell(key, conditional_objective(config))
            continue
        asked.append(got)
        pending.append(got)
    state = json.loads(json.dumps(core.state_dict()))  # JSON-serialisable
    restored = CoordinateDescent(space, seed=99, max_trials=1)  # options come from the state
    restored.load_state_dict(state)
    for key, config in pending:
        restored.tell(key, conditional_objective(config))
    rest = drive(restored, conditional_objective)
    assert [(k, c) for k, c in asked] + [(k, c) for k, c, _ in rest] == [(k, c) for k, c, _ in reference]
    assert restored.best() == uninterrupted.best()


def test_state_of_another_space_is_refused(tmp_path):
    a = CoordinateDescent(space_from_text(tmp_path, BOWL, "a"))
    b = CoordinateDescent(space_from_text(tmp_path, CONDITIONAL, "b"))
    with pytest.raises(ValueError, match="different space"):
        b.load_state_dict(a.state_dict())


def test_telling_an_unknown_trial_is_an_error(tmp_path):
    core = CoordinateDescent(space_from_text(tmp_path, BOWL))
    key, _ = core.ask()
    core.tell(key, 1.0)
    with pytest.raises(KeyError):
        core.tell(key, 1.0)
    with pytest.raises(KeyError):
        core.tell("nope", 1.0)


def test_bad_options_are_refused(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    with pytest.raises(ValueError):
        CoordinateDescent(space, options=CoordinateDescentOptions(shrink=1.5))
    with pytest.raises(ValueError):
        CoordinateDescent(space, options=CoordinateDescentOptions(min_step=0.5, initial_step=0.25))
