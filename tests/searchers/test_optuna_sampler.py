"""Coordinate descent inside plain Optuna studies."""

from __future__ import annotations

import math

import pytest
from searcher_helpers import BOWL, bowl, drive, space_from_text

from tuneddml.searchers.coordinate_descent import CoordinateDescent

optuna = pytest.importorskip("optuna")
from tuneddml.searchers.optuna_sampler import CoordinateDescentSampler  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)


def bowl_objective(trial):
    config = {
        "x": trial.suggest_float("x", -5.0, 5.0),
        "lr": trial.suggest_float("lr", 1e-4, 0.1, log=True),
        "k": trial.suggest_int("k", 1, 64, log=True),
    }
    return bowl(config)


def test_improves_on_a_quadratic_and_stops_when_converged(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    study = optuna.create_study(direction="maximize", sampler=CoordinateDescentSampler(space, seed=0))
    study.optimize(bowl_objective, n_trials=500)
    values = [t.value for t in study.trials]
    assert values[0] == bowl({"x": -4.0, "lr": 0.05, "k": 2})  # the space's start point first
    assert study.best_value > -0.01 and study.best_value > values[0] + 1.0
    assert abs(study.best_params["x"] - 1.3) <= 10 / 32
    assert len(study.trials) < 500  # coordinate descent converged and stopped the study
    reference = drive(CoordinateDescent(space, seed=0), bowl)
    assert [t.params for t in study.trials] == [c for _, c, _ in reference]


def test_plain_distributions_and_minimisation():
    distributions = {
        "x": optuna.distributions.FloatDistribution(-5.0, 5.0),
        "lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
        "k": optuna.distributions.IntDistribution(1, 64, log=True),
    }
    sampler = CoordinateDescentSampler(distributions, seed=0, max_trials=80)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(lambda t: -bowl_objective(t), n_trials=80)
    assert study.best_value < 0.02
    first = study.trials[0].params
    assert first["x"] == 0.0 and first["k"] == 8 and first["lr"] == pytest.approx(math.sqrt(1e-5))


def test_failed_and_pruned_trials_do_not_crash_the_search(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    study = optuna.create_study(direction="maximize", sampler=CoordinateDescentSampler(space, seed=0))

    def objective(trial):
        value = bowl_objective(trial)
        if trial.params["x"] > 2.0:
            return math.nan  # Optuna marks the trial failed
        if trial.params["k"] > 40:
            trial.report(-5.0, step=0)
            raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=120)
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.PRUNED in states
    assert study.best_value > -0.05 and study.best_params["x"] <= 2.0


def test_parameters_outside_the_space_are_sampled_at_random(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    study = optuna.create_study(direction="maximize", sampler=CoordinateDescentSampler(space, seed=0))

    def objective(trial):
        extra = trial.suggest_float("extra", 0.0, 1.0)
        assert 0.0 <= extra <= 1.0
        return bowl_objective(trial)

    study.optimize(objective, n_trials=10)
    assert len({t.params["extra"] for t in study.trials}) == 10


def test_seeded_studies_repeat(tmp_path):
    space = space_from_text(tmp_path, BOWL)

    def run():
        study = optuna.create_study(direction="maximize", sampler=CoordinateDescentSampler(space, seed=5))
        study.optimize(bowl_objective, n_trials=40)
        return [t.params for t in study.trials]

    assert run() == run()


def test_a_value_the_objective_cannot_take_counts_as_failed(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    sampler = CoordinateDescentSampler(space, seed=0, max_trials=30)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def narrow(trial):  # x limited to [-5, 0]: proposals above 0 are replaced at random
        config = {
            "x": trial.suggest_float("x", -5.0, 0.0),
            "lr": trial.suggest_float("lr", 1e-4, 0.1, log=True),
            "k": trial.suggest_int("k", 1, 64, log=True),
        }
        return bowl(config)

    study.optimize(narrow, n_trials=30)
    best, _ = sampler.core.best()
    assert best["x"] <= 0.0  # the core never believes a point it did not get evaluated
    assert study.best_params["x"] <= 0.0


def test_a_conditional_space_with_variants_in_a_plain_study(tmp_path):
    space = space_from_text(
        tmp_path,
        """
        parameters:
          loss: {choice: [a, b]}
          w: {uniform: [0, 1], start: 0.5}
          t:
            - {uniform: [0, 1], start: 0.5, when: {loss: a}}
            - {loguniform: [1, 100], start: 10, when: {loss: b}}
        """,
    )

    def objective(trial):
        space.define_by_run(trial)
        config = space.keys_of(trial.params)
        bonus = -abs(math.log10(config["t"]) - 1.5) if config["loss"] == "b" else -1.0
        return config["w"] + bonus

    study = optuna.create_study(direction="maximize", sampler=CoordinateDescentSampler(space, seed=0))
    study.optimize(objective, n_trials=60)
    assert study.best_params["loss"] == "b" and "t@1" in study.best_params
    assert study.best_value > 0.9
