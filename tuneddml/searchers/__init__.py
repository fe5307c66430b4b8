"""Search spaces and searchers.

:data:`SEARCHERS` names every searcher a space or ``--searcher`` may choose: each registers itself
in its own module (an ask/tell core such as :mod:`.coordinate_descent`, or a factory of a Ray
Tune search algorithm such as :mod:`.optuna_searchers`); :func:`make_ray_searcher` builds the Ray
Tune search algorithm for one, wrapping a core in the ask/tell adapter. Ray and Optuna are
imported only when a searcher is built.
"""

from __future__ import annotations

from typing import Any

from tuneddml.registry import Registry

#: what a searcher's factory may take (each takes the ones it names): the space, the metric and
#: mode, the seed, the trials at once and the budget (``max_trials`` for an ask/tell core)
SEARCH_RUNTIME = ("space", "metric", "mode", "seed", "max_concurrent", "num_samples")
CORE_RUNTIME = ("space", "seed", "mode", "max_trials", "options")

SEARCHERS: Registry[Any] = Registry("searcher")


def check_searcher(name: str) -> None:
    """Raise ConfigError unless searcher ``name`` exists and can run here (call before Ray starts)."""
    SEARCHERS.available(name, "--searcher")


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
    first (balance: every family's start point), so they compare from the same place; grid spends
    ``num_samples`` on a grid. The budget ``num_samples`` also bounds coordinate descent and the
    balance search (which sizes its exploration by it) and sizes the grid. ``max_concurrent`` is
    enforced by Tune's ``max_concurrent_trials``; here it only turns on TPE's "constant liar" for
    parallel trials. Call :func:`check_searcher` before Ray starts to refuse a bad name early.
    """
    from tuneddml.searchers.core import is_core

    check_searcher(name)
    built = SEARCHERS.build(
        name,
        {},
        field="--searcher",
        space=space,
        metric=metric,
        mode=mode,
        seed=seed,
        max_concurrent=max_concurrent,
        num_samples=num_samples,
        max_trials=num_samples,
    )
    if is_core(built):
        from tuneddml.searchers.ray_searcher import AskTellSearcher

        return AskTellSearcher(built, metric=metric, mode=mode)
    return built


# Registration happens on import of each searcher's module.
from tuneddml.searchers import _all  # noqa: E402,F401

__all__ = ["CORE_RUNTIME", "SEARCHERS", "SEARCH_RUNTIME", "check_searcher", "make_ray_searcher"]
