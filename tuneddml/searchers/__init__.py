"""Search spaces and searchers.

:data:`SEARCHERS` names every searcher a space or ``--searcher`` may choose;
:func:`make_ray_searcher` builds the Ray Tune search algorithm for one. Ray and Optuna are
imported only when a searcher is built.
"""

from __future__ import annotations

from typing import Any

from tuneddml.errors import ConfigError

#: name -> one-line description
SEARCHERS: dict[str, str] = {
    "balance": "explore, race the loss families by successive halving, refine each by coordinate "
    "descent with coupled coordinates revisited and noise-aware moves",
    "coordinate_descent": "one coordinate at a time, a line of points in parallel, shrinking steps "
    "(Sors et al. 2021)",
    "tpe": "Optuna's tree-structured Parzen estimator (Bayesian)",
    "cmaes": "Optuna's CMA-ES on the numeric keys (needs the cmaes package), random on the others",
    "random": "uniform random sampling on each key's scale (Optuna's RandomSampler)",
    "grid": "every combination of a few points per range and every choice, within the budget",
}


def check_searcher(name: str) -> None:
    """Raise ConfigError unless searcher ``name`` exists and can run here (call before Ray starts)."""
    if name not in SEARCHERS:
        raise ConfigError("--searcher", name, list(SEARCHERS))
    if name == "cmaes":
        import importlib.util

        if importlib.util.find_spec("cmaes") is None:
            others = ", ".join(n for n in SEARCHERS if n != "cmaes")
            raise ConfigError(
                "--searcher", name, f"an installed cmaes package (pip install cmaes), or one of {others}"
            )


def make_ray_searcher(
    name: str,
    space: Any,
    *,
    metric: str,
    mode: str,
    seed: int = 0,
    max_concurrent: int = 1,
    num_samples: int | None = None,
) -> Any:
    """The Ray Tune search algorithm for searcher ``name`` over ``space`` (a SearchSpace).

    Every searcher proposes the flat searched keys only (the driver's ``param_space`` carries the
    fixed ones). Coordinate descent, TPE, CMA-ES and random all evaluate the space's start point
    first (balance: every family's start point), so they compare from the same place; grid spends ``num_samples`` on a grid. The budget
    ``num_samples`` also bounds coordinate descent and the balance search (which sizes its exploration
by it) and sizes the grid. ``max_concurrent`` is
    enforced by Tune's ``max_concurrent_trials``; here it only turns on TPE's "constant liar" for
    parallel trials. Call :func:`check_searcher` before Ray starts to refuse a bad name early.
    """
    check_searcher(name)
    if name == "balance":
        from tuneddml.searchers.ray_searcher import BalanceSearchRay

        return BalanceSearchRay(space, metric=metric, mode=mode, seed=seed, max_trials=num_samples)
    if name == "coordinate_descent":
        from tuneddml.searchers.ray_searcher import CoordinateDescentSearch

        return CoordinateDescentSearch(space, metric=metric, mode=mode, seed=seed, max_trials=num_samples)
    if name == "grid":
        from tuneddml.searchers.grid import GridSearch
        from tuneddml.searchers.ray_searcher import AskTellSearcher

        return AskTellSearcher(
            GridSearch(space, seed=seed, mode=mode, max_trials=num_samples), metric=metric, mode=mode
        )

    import optuna

    from tuneddml.searchers.ray_searcher import SpaceOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if name == "tpe":
        # a short budget: fewer random start-up trials than Optuna's default 10
        startup = 10 if num_samples is None else max(2, min(10, num_samples // 4))
        sampler: Any = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, constant_liar=max_concurrent > 1
        )
    elif name == "cmaes":
        sampler = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    return SpaceOptunaSearch(space, metric=metric, mode=mode, sampler=sampler)
