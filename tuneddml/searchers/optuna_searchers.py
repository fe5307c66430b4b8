"""Optuna's samplers as searchers: TPE, CMA-ES and random search, through Ray's ``OptunaSearch``
on the space's define-by-run function (:class:`~tuneddml.searchers.ray_searcher.SpaceOptunaSearch`).

Optuna and Ray are imported only when one is built. Each evaluates the space's start point first,
so it compares with coordinate descent from the same place.
"""

from __future__ import annotations

from typing import Any

from tuneddml.searchers import SEARCH_RUNTIME, SEARCHERS


def _optuna_search(space: Any, metric: str, mode: str, sampler: Any) -> Any:
    from tuneddml.searchers.ray_searcher import SpaceOptunaSearch

    return SpaceOptunaSearch(space, metric=metric, mode=mode, sampler=sampler)


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def optuna_sampler(name: str, *, seed: int = 0, max_concurrent: int = 1, num_samples: int | None = None) -> Any:
    """The Optuna sampler behind the searcher ``name`` (``tpe``, ``cmaes`` or ``random``), also for
    code that drives it without Ray (``bench/bench_searchers.py``)."""
    optuna = _optuna()
    if name == "tpe":
        # a short budget: fewer random start-up trials than Optuna's default 10
        startup = 10 if num_samples is None else max(2, min(10, num_samples // 4))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=max_concurrent > 1)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"no Optuna sampler {name!r}: one of tpe, cmaes, random")


@SEARCHERS.register("tpe", runtime=SEARCH_RUNTIME, requires=("optuna",))
def tpe(
    *, space: Any, metric: str, mode: str, seed: int = 0, max_concurrent: int = 1, num_samples: int | None = None
) -> Any:
    """Optuna's tree-structured Parzen estimator (Bayesian)."""
    sampler = optuna_sampler("tpe", seed=seed, max_concurrent=max_concurrent, num_samples=num_samples)
    return _optuna_search(space, metric, mode, sampler)


@SEARCHERS.register("cmaes", runtime=SEARCH_RUNTIME, requires=("optuna", "cmaes"))
def cmaes(
    *, space: Any, metric: str, mode: str, seed: int = 0, max_concurrent: int = 1, num_samples: int | None = None
) -> Any:
    """Optuna's CMA-ES on the numeric keys (needs the cmaes package), random on the others."""
    return _optuna_search(space, metric, mode, optuna_sampler("cmaes", seed=seed))


@SEARCHERS.register("random", runtime=SEARCH_RUNTIME, requires=("optuna",))
def random_search(
    *, space: Any, metric: str, mode: str, seed: int = 0, max_concurrent: int = 1, num_samples: int | None = None
) -> Any:
    """Uniform random sampling on each key's scale (Optuna's RandomSampler)."""
    return _optuna_search(space, metric, mode, optuna_sampler("random", seed=seed))
