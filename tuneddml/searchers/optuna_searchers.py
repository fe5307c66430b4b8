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


@SEARCHERS.register("tpe", runtime=SEARCH_RUNTIME, requires=("optuna",))
def tpe(
    *, space: Any, metric: str, mode: str, seed: int = 0, max_concurrent: int = 1, num_samples: int | None = None
) -> Any:
    """Optuna's tree-structured Parzen estimator (Bayesian)."""
    optuna = _optuna()
    # a short budget: fewer random start-up trials than Optuna's default 10
    startup = 10 if num_samples is None else max(2, min(10, num_samples // 4))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=max_concurrent > 1)
    return _optuna_search(space, metric, mode, sampler)


@SEARCHERS.register("cmaes", runtime=SEARCH_RUNTIME, requires=("optuna", "cmaes"))
def cmaes(
    *, space: Any, metric: str, mode: str, seed: int = 0, max_concurrent: int = 1, num_samples: int | None = None
) -> Any:
    """Optuna's CMA-ES on the numeric keys (needs the cmaes package), random on the others."""
    sampler = _optuna().samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return _optuna_search(space, metric, mode, sampler)


@SEARCHERS.register("random", runtime=SEARCH_RUNTIME, requires=("optuna",))
def random_search(
    *, space: Any, metric: str, mode: str, seed: int = 0, max_concurrent: int = 1, num_samples: int | None = None
) -> Any:
    """Uniform random sampling on each key's scale (Optuna's RandomSampler)."""
    sampler = _optuna().samplers.RandomSampler(seed=seed)
    return _optuna_search(space, metric, mode, sampler)
