"""One contract for every searcher name, through the Ray Tune algorithm the driver builds:
bounds, types and conditions; failed results; seeded reproducibility; save/restore; each also on
a space with start points (the ``points`` searcher only there: it needs them)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from searcher_helpers import space_from_text, tune_like

from tuneddml.searchers import SEARCHERS
from tuneddml.searchers.ray_searcher import make_ray_searcher

pytest.importorskip("ray.tune")

SPACE = """
    mode: max
    parameters:
      loss: {choice: [supcon, contrastive]}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.5}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: supcon}}
      batch_size: {int: [16, 256], log: true, start: 64}
      loss.margin:
        - {uniform: [0.0, 0.5], when: {loss: contrastive}}
        - {uniform: [1.0, 2.0], when: {loss: supcon}}
"""
BUDGET = 24


def searcher_names():
    return [
        pytest.param(
            n,
            marks=pytest.mark.skipif(
                n == "cmaes" and importlib.util.find_spec("cmaes") is None, reason="cmaes is not installed"
            ),
        )
        for n in SEARCHERS
    ]


def objective(config):
    """Diverges (NaN) for high temperatures, fails (None) for big batches."""
    if config.get("loss.temperature", 0.0) > 0.5:
        return math.nan
    if config["batch_size"] > 200:
        return None
    return config["loss.lambda"] - abs(math.log(config["batch_size"] / 64)) + (config["loss"] == "supcon")


def with_start_points(tmp_path, count):
    """The space with ``count`` start points (seeded samples of it) appended."""
    plain = space_from_text(tmp_path, SPACE, name="plain")
    points = "".join(f"      - {json.dumps(plain.sample(i))}\n" for i in range(count))
    return space_from_text(tmp_path, SPACE + "    start_points:\n" + points, name="warm")


@pytest.fixture(params=["plain", "warm"])
def space_for(request, tmp_path):
    """A function of the searcher name: the space it is tested on (the ``warm`` run adds 5 start
    points, which most searchers evaluate before their own; ``points`` gets 30: it needs more
    than the budget: it has no plain run, a space without start points being refused, which
    tests/searchers/test_points.py checks)."""

    def make(name):
        if name == "points":
            return with_start_points(tmp_path, 30)
        return with_start_points(tmp_path, 5) if request.param == "warm" else space_from_text(tmp_path, SPACE)

    return make


def check(config):
    supcon = config["loss"] == "supcon"
    assert config["loss"] in ("supcon", "contrastive")
    assert isinstance(config["loss.lambda"], float) and 0.05 <= config["loss.lambda"] <= 0.95
    assert type(config["batch_size"]) is int and 16 <= config["batch_size"] <= 256
    assert ("loss.temperature" in config) == supcon
    assert 0.01 <= config.get("loss.temperature", 0.1) <= 1.0
    assert (1.0 <= config["loss.margin"] <= 2.0) if supcon else (0.0 <= config["loss.margin"] <= 0.5)
    assert set(config) <= {"loss", "loss.lambda", "loss.temperature", "batch_size", "loss.margin"}


@pytest.mark.parametrize("name", searcher_names())
def test_bounds_types_conditions_and_failed_results(space_for, name):
    space = space_for(name)
    searcher = make_ray_searcher(name, space, metric="score", mode="max", seed=0, num_samples=BUDGET)
    suggested = tune_like(searcher, objective, limit=BUDGET)
    assert len(suggested) == BUDGET
    for config in suggested:
        check(config)


@pytest.mark.parametrize("name", searcher_names())
def test_same_seed_same_suggestions(space_for, name):
    space = space_for(name)

    def run(seed):
        searcher = make_ray_searcher(name, space, metric="score", mode="max", seed=seed, num_samples=BUDGET)
        return tune_like(searcher, objective, limit=BUDGET)

    assert run(1) == run(1)


@pytest.mark.parametrize("name", searcher_names())
def test_save_restore_continues_identically(space_for, name, tmp_path):
    space = space_for(name)
    whole = tune_like(
        make_ray_searcher(name, space, metric="score", mode="max", seed=2, num_samples=BUDGET),
        objective,
        max_concurrent=1,
        limit=BUDGET,
    )
    first = make_ray_searcher(name, space, metric="score", mode="max", seed=2, num_samples=BUDGET)
    head = tune_like(first, objective, max_concurrent=1, limit=9)
    first.on_trial_complete("trial_8", {"score": objective(head[-1])})
    first.save(str(tmp_path / "state.pkl"))
    second = make_ray_searcher(name, space, metric="score", mode="max", seed=2, num_samples=BUDGET)
    second.restore(str(tmp_path / "state.pkl"))
    tail = tune_like(second, objective, max_concurrent=1, limit=BUDGET, start=9)
    assert head + tail == whole


@pytest.mark.parametrize("name", searcher_names())
def test_start_points_come_first_in_order(tmp_path, name):
    space = with_start_points(tmp_path, 30 if name == "points" else 5)
    searcher = make_ray_searcher(name, space, metric="score", mode="max", seed=0, num_samples=BUDGET)
    suggested = tune_like(searcher, objective, limit=BUDGET)
    count = min(BUDGET, len(space.start_points))
    assert suggested[:count] == [dict(p) for p in space.start_points[:count]]
