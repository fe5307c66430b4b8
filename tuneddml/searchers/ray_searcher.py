"""Ray Tune search algorithms over a SearchSpace: a ``Searcher`` around an ask/tell core
(coordinate descent or grid), and Ray's ``OptunaSearch`` on the space's define-by-run function;
:func:`make_ray_searcher` builds the one a searcher name stands for.

``suggest`` returns the core's next config (flat searched keys; the driver's ``param_space``
supplies the fixed ones), ``None`` while the core waits for the results of its current line (Tune
then holds back new trials without a ``ConcurrencyLimiter``), or ``Searcher.FINISHED``.
``on_trial_complete`` tells the trial's final metric; an errored trial, or one without a finite
metric, counts as a failed result; a trial that reports fewer epochs than its config's ``epochs``
(stopped early by ASHA) is told ``complete=False``, so the core never compares its truncated value
with a fully trained incumbent. ``save``/``restore`` keep the core's ``state_dict`` with the
trial-id map, so ``Tuner.restore`` continues the search where it stopped: trials still running at
the interruption are re-run by Tune under the same ids and told to the core when they end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tuneddml.errors import ConfigError
from tuneddml.searchers import SEARCHERS, check_searcher
from tuneddml.searchers.coordinate_descent import FINISHED
from tuneddml.searchers.core import is_core
from tuneddml.searchers.warm_start import WarmStart, warm_points


class AskTellSearcher(Searcher):
    """Ray Tune adapter; ``core`` has ``ask()``, ``tell(key, value)``, ``state_dict()``,
    ``load_state_dict(state)`` and a ``mode`` attribute."""

    def __init__(self, core: Any, *, metric: str | None = None, mode: str | None = None) -> None:
        super().__init__(metric=metric or core.space.metric, mode=mode or core.mode)
        self.core = core
        self.core.mode = self._mode
        self._trials: dict[str, str] = {}  # Ray trial id -> core trial key
        self._asked = False
        self._epochs: dict[str, Any] = {}  # Ray trial id -> the epochs its config asks for
        self.fixed_epochs: Any = None  # the param space's epochs (Tune tells it below)
        self._restore_error: ConfigError | None = None  # a refused state file (see restore)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Tune's metric and mode win over the space's, as long as nothing was suggested yet."""
        if self._asked:
            return False
        if isinstance(config, dict) and "epochs" in config:
            self.fixed_epochs = config["epochs"]
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
            self.core.mode = mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._restore_error is not None:  # Tune logged it and went on afresh: end the search
            raise self._restore_error
        self._asked = True
        got = self.core.ask()
        if got is None:
            return None
        if got == FINISHED:
            return Searcher.FINISHED
        key, config = got
        self._trials[trial_id] = key
        self._epochs[trial_id] = config.get("epochs", self.fixed_epochs)
        return dict(config)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self._trials.pop(trial_id, None)
        if key is None:  # not ours (e.g. added by hand) or already told
            return
        value = None if error or not result else result.get(self._metric)
        self.core.tell(key, value, complete=_complete(result, self._epochs.pop(trial_id, self.fixed_epochs)))

    def get_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "core_type": core_type(self.core),
            "core": self.core.state_dict(),
            "trials": dict(self._trials),
            "epochs": dict(self._epochs),
            "fixed_epochs": self.fixed_epochs,
            "metric": self._metric,
            "mode": self._mode,
            "asked": self._asked,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state["core"])
        self._trials = dict(state["trials"])
        self._metric, self._mode, self._asked = state["metric"], state["mode"], state["asked"]
        self._epochs, self.fixed_epochs = dict(state.get("epochs", {})), state.get("fixed_epochs")

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        try:
            state = read_state(Path(checkpoint_path), core_type(self.core))
            self.set_state(state)
        except ConfigError as exc:
            self._restore_error = exc
            raise
        except (KeyError, TypeError, ValueError) as exc:  # JSON of the right kind, wrong content
            self._restore_error = ConfigError(
                "searcher state",
                Path(checkpoint_path).name,
                f"a state this search can continue from ({exc!r:.80})",
            )
            raise self._restore_error from None
        self._restore_error = None


def core_type(core: Any) -> str:
    """What a saved state is a state of: the core's class name (a WarmStart's: its inner core's)."""
    return getattr(core, "core_type", None) or type(core).__name__


#: the ``format`` field of an :class:`AskTellSearcher`'s state file
STATE_FORMAT = "tuneddml.searcher-state/1"


def read_state(path: Path, core_type: str | None = None) -> dict[str, Any]:
    """An :class:`AskTellSearcher` state file's content, parsed as JSON only (a pickle is never
    loaded); ConfigError naming the file if it is unreadable, not this format, or (``core_type``)
    another searcher's."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("searcher state", path.name, f"a readable file ({exc.strerror or exc})") from None
    if data[:1] == b"\x80":
        raise ConfigError("searcher state", path.name, "JSON (it is a pickle, which is never loaded)")
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(
            "searcher state", path.name, "a complete JSON state (truncated or foreign)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError("searcher state", path.name, f"a {STATE_FORMAT} file (foreign content)")
    if core_type is not None and state.get("core_type") != core_type:
        raise ConfigError(
            "searcher state", path.name, f"a state of {core_type} (it is of {state.get('core_type')})"
        )
    return state


def _complete(result: dict | None, epochs: Any = None) -> bool:
    """Whether a trial's last result is its last epoch (not stopped early by a scheduler);
    ``epochs``: what the trial's config asked for (else read from the result's ``config``)."""
    if not result:
        return True
    if epochs is None:
        epochs = (result.get("config") or {}).get("epochs")
    epoch = result.get("epoch")
    try:
        return epochs is None or epoch is None or int(epoch) >= int(epochs)
    except (TypeError, ValueError):
        return True


class BalanceSearchRay(AskTellSearcher):
    """The balance search (:class:`~tuneddml.searchers.balance.BalanceSearch`) as a Ray Tune
    search algorithm."""

    def __init__(
        self,
        space: Any,
        *,
        metric: str | None = None,
        mode: str | None = None,
        seed: int = 0,
        max_trials: int | None = None,
        options: Any = None,
    ) -> None:
        from tuneddml.searchers.balance import BalanceSearch

        super().__init__(
            BalanceSearch(space, seed=seed, mode=mode, max_trials=max_trials, options=options),
            metric=metric,
            mode=mode,
        )


class CoordinateDescentSearch(AskTellSearcher):
    """Coordinate descent (:class:`~tuneddml.searchers.coordinate_descent.CoordinateDescent`) as a
    Ray Tune search algorithm."""

    def __init__(
        self,
        space: Any,
        *,
        metric: str | None = None,
        mode: str | None = None,
        seed: int = 0,
        max_trials: int | None = None,
        options: Any = None,
    ) -> None:
        from tuneddml.searchers.coordinate_descent import CoordinateDescent

        core = CoordinateDescent(space, seed=seed, mode=mode, max_trials=max_trials, options=options)
        super().__init__(core, metric=metric, mode=mode)


class SpaceOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` over a SearchSpace: the space's define-by-run function (conditions
    included), the start point evaluated first (so every searcher starts where coordinate descent
    does; every one of the space's ``start_points``, in order, where it lists some, and the
    sampler learns from their results), and variant names (``key@i``) mapped back to config keys."""

    def __init__(self, space: Any, *, metric: str, mode: str, sampler: Any) -> None:
        self.search_space = space
        super().__init__(
            space=space.define_by_run,
            metric=metric,
            mode=mode,
            sampler=sampler,
            points_to_evaluate=points_to_evaluate(space),
        )

    def restore(self, checkpoint_path: str) -> None:
        """Optuna's own (pickled) state; an unreadable one ends the search at the first suggest,
        as for :class:`AskTellSearcher` (Tune would swallow the error and start afresh)."""
        try:
            super().restore(checkpoint_path)
        except Exception as exc:
            self._restore_error = ConfigError(
                "searcher state",
                Path(checkpoint_path).name,
                f"a state OptunaSearch can load ({type(exc).__name__})",
            )
            raise self._restore_error from None

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        error = getattr(self, "_restore_error", None)
        if error is not None:
            raise error
        config = super().suggest(trial_id)
        return None if config is None else self.search_space.keys_of(config)


def points_to_evaluate(space: Any) -> list[dict[str, Any]]:
    """The points an Optuna searcher evaluates first, by domain name: the space's start points
    (its start point where it lists none)."""
    starts = space.start_points or (space.config_of(space.start_point()),)
    return [space.names_of(config) for config in starts]


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
    ``num_samples`` on a grid. Where the space lists ``start_points``, every searcher evaluates
    them all first, in order (a core inside a :class:`~tuneddml.searchers.warm_start.WarmStart`,
    whose points count against the budget: the core gets what is left), and ``points`` evaluates
    only them. The budget ``num_samples`` also bounds coordinate descent and the
    balance search (which sizes its exploration by it) and sizes the grid. ``max_concurrent`` is
    enforced by Tune's ``max_concurrent_trials``; here it only turns on TPE's "constant liar" for
    parallel trials. Call :func:`check_searcher` before Ray starts to refuse a bad name early.
    """
    check_searcher(name, space)
    warm = warm_points(SEARCHERS.get(name).factory, space)
    if num_samples is not None:
        warm = warm[:num_samples]
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
        max_trials=None if num_samples is None else num_samples - len(warm),
    )
    if is_core(built):
        return AskTellSearcher(WarmStart(built, warm) if warm else built, metric=metric, mode=mode)
    return built
