"""Search spaces and searchers.

:data:`SEARCHERS` names every searcher a space or ``--searcher`` may choose: each registers itself
in its own module (an ask/tell core such as :mod:`.coordinate_descent`, or a factory of a Ray
Tune search algorithm such as :mod:`.optuna_searchers`);
:func:`tuneddml.searchers.ray_searcher.make_ray_searcher` builds the Ray Tune search algorithm for
one, wrapping a core in the ask/tell adapter. Nothing here imports Ray or Optuna, nor (but at run
time, by :func:`~tuneddml.registry.import_components`) any module of this package, so no searcher
module's import of this registry can form a cycle.
"""

from __future__ import annotations

from typing import Any

from tuneddml.registry import Registry, import_components

#: what a searcher's factory may take (each takes the ones it names): the space, the metric and
#: mode, the seed, the trials at once and the budget (``max_trials`` for an ask/tell core)
SEARCH_RUNTIME = ("space", "metric", "mode", "seed", "max_concurrent", "num_samples")
CORE_RUNTIME = ("space", "seed", "mode", "max_trials", "options")

SEARCHERS: Registry[Any] = Registry("searcher")


def check_searcher(name: str, space: Any = None) -> None:
    """Raise ConfigError unless searcher ``name`` exists and can run here (call before Ray starts);
    given the ``space``, also unless the searcher can search it (a searcher's ``check_space``, e.g.
    ``points`` needs the space's ``start_points``)."""
    entry = SEARCHERS.available(name, "--searcher")
    check_space = getattr(entry.factory, "check_space", None)
    if space is not None and callable(check_space):
        check_space(space)


# each searcher module registers itself; the adapters import Ray or Optuna at the top, which a
# search request must not pay for before it is validated
import_components(__name__, skip=("ray_searcher", "optuna_sampler"))

__all__ = ["CORE_RUNTIME", "SEARCHERS", "SEARCH_RUNTIME", "check_searcher"]
