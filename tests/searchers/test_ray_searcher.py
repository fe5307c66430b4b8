"""Ray Tune search algorithms, driven the way Tune drives them (no cluster), and one real Tuner."""

from __future__ import annotations

import builtins
import importlib.util
import json
import math
import pickle

import pytest
from searcher_helpers import BOWL, bowl, drive, space_from_text, tune_like

from tuneddml.errors import ConfigError
from tuneddml.searchers import SEARCHERS, check_searcher
from tuneddml.searchers.coordinate_descent import CoordinateDescent
from tuneddml.searchers.ray_searcher import STATE_FORMAT, make_ray_searcher

pytest.importorskip("ray.tune")

COND = """
    parameters:
      loss: {choice: [supcon, contrastive]}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.5}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: supcon}}
      loss.alpha:
        - {uniform: [1, 4], when: {loss: contrastive}}
        - {loguniform: [10, 100], start: 50, when: {loss: supcon}}
"""


def test_coordinate_descent_adapter_matches_the_core(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    searcher = make_ray_searcher("coordinate_descent", space, metric="score", mode="max", num_samples=40)
    suggested = tune_like(searcher, bowl, max_concurrent=100)
    reference = drive(CoordinateDescent(space, max_trials=40), bowl)
    assert suggested == [c for _, c, _ in reference]
    assert len(suggested) == 40


def test_adapter_waits_for_its_line_and_limits_nothing_itself(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    searcher = make_ray_searcher("coordinate_descent", space, metric="score", mode="max", num_samples=40)
    first = [searcher.suggest(f"t{i}") for i in range(6)]
    assert all(isinstance(c, dict) for c in first[:5]) and first[5] is None


def test_failed_trials_are_bad_results_not_crashes(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    searcher = make_ray_searcher("coordinate_descent", space, metric="score", mode="max", num_samples=30)
    ids = [f"t{i}" for i in range(5)]
    configs = [searcher.suggest(i) for i in ids]
    searcher.on_trial_complete(ids[0], None, error=True)
    searcher.on_trial_complete(ids[1], {"score": math.nan})
    searcher.on_trial_complete(ids[2], {"other": 1.0})
    searcher.on_trial_complete(ids[3], {"score": "n/a"})
    searcher.on_trial_complete(ids[4], {"score": 0.5})
    searcher.on_trial_complete("not_ours", {"score": 9.0})
    assert searcher.core.best() == (configs[4], 0.5)
    assert isinstance(searcher.suggest("t5"), dict)


def test_search_properties_from_tune_set_metric_and_mode(tmp_path):
    space = space_from_text(tmp_path, BOWL)
    searcher = make_ray_searcher("coordinate_descent", space, metric="score", mode="max", num_samples=60)
    assert searcher.set_search_properties("loss", "min", {})
    suggested = tune_like(searcher, lambda c: -bowl(c))
    _, value = searcher.core.best()
    assert value < 0.05 and searcher.metric == "loss"
    assert not searcher.set_search_properties("other", "max", {})
    assert len(suggested) == 60


@pytest.mark.parametrize("name", ["coordinate_descent", "balance", "grid"])
@pytest.mark.parametrize("cut", [3, 11])
def test_save_and_restore_continue_the_search(tmp_path, cut, name):
    space = space_from_text(tmp_path, COND)

    def objective(c):
        return c["loss.lambda"] - (c.get("loss.temperature", 2.0) - 0.3) ** 2

    def search(interrupt: bool) -> list:
        first = make_ray_searcher(name, space, metric="score", mode="max", num_samples=30)
        running = [(f"trial_{i}", first.suggest(f"trial_{i}")) for i in range(cut)]
        running = [(i, c) for i, c in running if c is not None]
        for trial_id, config in running[: len(running) // 2]:  # some finished before the interruption
            first.on_trial_complete(trial_id, {"score": objective(config)})
        second = first
        if interrupt:
            first.save(str(tmp_path / "searcher.pkl"))
            assert json.loads((tmp_path / "searcher.pkl").read_text())["format"] == STATE_FORMAT  # JSON
            second = pickle.loads(pickle.dumps(make_ray_searcher(name, space, metric="score", mode="max")))
            second.restore(str(tmp_path / "searcher.pkl"))
        for trial_id, config in running[len(running) // 2 :]:  # Tune re-runs the unfinished ones
            second.on_trial_complete(trial_id, {"score": objective(config)})
        return [c for _, c in running] + tune_like(second, objective, start=100)

    whole = search(interrupt=False)
    assert len(whole) == 30
    assert search(interrupt=True) == whole
    if name == "coordinate_descent":  # it waits for its lines: the same search as without a cut
        reference = tune_like(
            make_ray_searcher(name, space, metric="score", mode="max", num_samples=30), objective
        )
        assert whole == reference


class _Payload:
    """Unpickling this writes the marker file: what a planted searcher state would run."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("name", ["coordinate_descent", "balance", "grid"])
@pytest.mark.parametrize("damage", ["pickle", "truncated", "random", "other_searcher", "not_a_state"])
def test_a_bad_searcher_state_is_refused_in_one_line_and_never_run(tmp_path, name, damage):
    space = space_from_text(tmp_path, COND)
    first = make_ray_searcher(name, space, metric="score", mode="max", num_samples=30)
    first.on_trial_complete("trial_0", {"score": 0.5}) if first.suggest("trial_0") else None
    path = tmp_path / "searcher-state.pkl"
    first.save(str(path))
    marker = tmp_path / "ran"
    if damage == "pickle":
        path.write_bytes(pickle.dumps({"core": _Payload(marker)}))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "random":
        path.write_bytes(bytes(range(256)) * 4)
    elif damage == "other_searcher":
        other = "grid" if name != "grid" else "coordinate_descent"
        make_ray_searcher(other, space, metric="score", mode="max", num_samples=30).save(str(path))
    else:
        path.write_text(json.dumps({"format": STATE_FORMAT, "core_type": type(first.core).__name__}))
    second = make_ray_searcher(name, space, metric="score", mode="max", num_samples=30)
    with pytest.raises(ConfigError, match=r"^searcher state: bad value .*searcher-state\.pkl") as info:
        second.restore(str(path))
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    assert not marker.exists()
    # Tune logs a failed restore and goes on with a fresh experiment: the first suggest ends it
    with pytest.raises(ConfigError):
        second.suggest("trial_1")


def test_an_unreadable_optuna_state_ends_the_search_instead_of_restarting_it(tmp_path):
    space = space_from_text(tmp_path, COND)
    first = make_ray_searcher("tpe", space, metric="score", mode="max", seed=0)
    first.suggest("trial_0")
    first.save(str(tmp_path / "s.pkl"))
    (tmp_path / "s.pkl").write_bytes((tmp_path / "s.pkl").read_bytes()[:40])
    second = make_ray_searcher("tpe", space, metric="score", mode="max", seed=0)
    with pytest.raises(
        ConfigError, match=r"^searcher state: bad value 's\.pkl' \(expected a state OptunaSearch"
    ):
        second.restore(str(tmp_path / "s.pkl"))
    with pytest.raises(ConfigError):  # Tune swallows the restore's error: the first suggest ends the search
        second.suggest("trial_1")


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes"])
def test_optuna_searchers_start_at_the_start_point_and_respect_conditions(tmp_path, name):
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        pytest.skip("cmaes is not installed")
    space = space_from_text(tmp_path, COND)
    searcher = make_ray_searcher(name, space, metric="score", mode="max", seed=0, num_samples=12)
    suggested = tune_like(searcher, lambda c: c["loss.lambda"], limit=12)
    assert suggested[0] == {"loss": "supcon", "loss.lambda": 0.5, "loss.temperature": 0.1, "loss.alpha": 50.0}
    for config in suggested:
        assert ("loss.temperature" in config) == (config["loss"] == "supcon")
        assert (
            (10 <= config["loss.alpha"] <= 100)
            if config["loss"] == "supcon"
            else (1 <= config["loss.alpha"] <= 4)
        )
    assert len({tuple(sorted(c.items())) for c in suggested}) > 6
    searcher.save(str(tmp_path / "s.pkl"))
    restored = make_ray_searcher(name, space, metric="score", mode="max", seed=0)
    restored.restore(str(tmp_path / "s.pkl"))
    assert len(restored._ot_study.trials) == 12


def test_grid_searcher_spends_the_budget_on_the_smallest_grid_that_fills_it(tmp_path):
    space = space_from_text(tmp_path, COND)
    assert [len(space.grid(n)) for n in (1, 2, 3)] == [2, 12, 36]
    searcher = make_ray_searcher("grid", space, metric="score", mode="max", num_samples=36)
    suggested = tune_like(searcher, lambda c: c["loss.lambda"])
    assert suggested == space.grid(3)
    assert searcher.core.best()[0]["loss.lambda"] == max(c["loss.lambda"] for c in suggested)
    small = make_ray_searcher("grid", space, metric="score", mode="max", num_samples=5, seed=1)
    subset = tune_like(small, lambda c: 0.0)
    assert len(subset) == 5 and all(c in space.grid(2) for c in subset)
    assert len({str(c) for c in subset}) == 5


def test_cmaes_needs_its_package_and_unknown_searchers_are_refused():
    with pytest.raises(ConfigError) as info:
        check_searcher("bayes")
    assert info.value.field == "--searcher" and "coordinate_descent" in info.value.expected
    for name in SEARCHERS:
        if name != "cmaes" or importlib.util.find_spec("cmaes") is not None:
            check_searcher(name)
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(ConfigError, match="cmaes"):
            check_searcher("cmaes")


@pytest.mark.slow
@pytest.mark.ray
def test_a_real_tuner_runs_coordinate_descent(tmp_path):
    import ray
    from ray import tune

    space = space_from_text(tmp_path, BOWL)

    def trainable(config):  # self-contained: Ray workers cannot import the test helpers
        import math

        x, lr, k = config["x"], config["lr"], config["k"]
        tune.report(
            {"score": -((x - 1.3) ** 2 / 25 + (math.log10(lr / 3e-3)) ** 2 / 9 + ((k - 20) / 63) ** 2)}
        )

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    try:
        searcher = make_ray_searcher("coordinate_descent", space, metric="score", mode="max", num_samples=10)
        tuner = tune.Tuner(
            trainable,
            param_space={"fixed_key": 1},
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=10,
                metric="score",
                mode="max",
                max_concurrent_trials=2,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="cd", verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 10 and not results.errors
    configs = [r.config for r in results]
    assert all(c["fixed_key"] == 1 and isinstance(c["k"], int) for c in configs)
    reference = drive(CoordinateDescent(space, max_trials=10), bowl)
    assert max(r.metrics["score"] for r in results) == pytest.approx(max(v for _, _, v in reference))


def test_a_stopped_result_is_told_incomplete(tmp_path):
    """A trial that ends before its config's epochs (ASHA stopped it) is no fair comparison."""
    space = space_from_text(tmp_path, BOWL)
    searcher = make_ray_searcher("balance", space, metric="score", mode="max", num_samples=12)
    ids = [f"t{i}" for i in range(3)]
    for i in ids:
        assert isinstance(searcher.suggest(i), dict)
    searcher.on_trial_complete("t0", {"score": -0.5, "epoch": 4, "config": {"epochs": 4}})
    searcher.on_trial_complete("t1", {"score": 5.0, "epoch": 1, "config": {"epochs": 4}})  # stopped
    searcher.on_trial_complete("t2", {"score": -0.1})  # no epoch information: complete
    _, best = searcher.core.best()
    assert best == -0.1


@pytest.mark.slow
@pytest.mark.ray
def test_a_real_tuner_with_asha_tells_the_balance_search_which_trials_were_stopped(tmp_path):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    space = space_from_text(tmp_path, BOWL)

    def trainable(config):
        import math

        x, lr, k = config["x"], config["lr"], config["k"]
        final = -((x - 1.3) ** 2 / 25 + (math.log10(lr / 3e-3)) ** 2 / 9 + ((k - 20) / 63) ** 2)
        for epoch in range(1, config["epochs"] + 1):
            # early epochs look better than the last: a truncated value is no fair comparison
            tune.report({"score": final + (config["epochs"] - epoch), "epoch": epoch})

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    try:
        searcher = make_ray_searcher("balance", space, metric="score", mode="max", num_samples=12)
        tuner = tune.Tuner(
            trainable,
            param_space={"epochs": 4},
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2),
                num_samples=12,
                metric="score",
                mode="max",
                max_concurrent_trials=2,
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="asha", verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    stopped = [r for r in results if r.metrics["epoch"] < 4]
    assert stopped, "ASHA stopped no trial: the test proves nothing"
    full = [r.metrics["score"] for r in results if r.metrics["epoch"] == 4]
    assert searcher.core.best()[1] == pytest.approx(max(full))
