"""Coordinate descent and the balance search as Optuna samplers, for plain Optuna studies::

    sampler = BalanceSampler(load_space("contrastive_balance"), seed=0, max_trials=40)
    # or CoordinateDescentSampler(load_space("contrastive_balance"), seed=0)
    # or, without a space file: CoordinateDescentSampler({"x": FloatDistribution(-5, 5)})
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=40)   # stops early once coordinate descent has converged

Optuna's trial lifecycle maps onto ask/tell: ``before_trial`` asks the core for a config,
``sample_independent`` answers each ``trial.suggest_*`` from it, ``after_trial`` tells the value (a
pruned trial's last intermediate value, marked incomplete for a core that takes ``complete``; None
for a failed one) and, once the core is finished,
calls ``study.stop()``. A trial that the core cannot serve (its line still has results pending
under ``n_jobs > 1``, or the search is finished) and a parameter outside the space are sampled at
random and not told to the core; a trial whose objective's distribution cannot hold the proposed
value counts as failed. A space file's ``start_points`` are asked first, in order, as for the Ray
adapter (:class:`~tuneddml.searchers.warm_start.WarmStart`, their trials counted in ``max_trials``). A space with variants (``key@i``) is suggested by ``space.define_by_run``
names. The study's direction sets the mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuneddml.searchers.balance import BalanceOptions, BalanceSearch
from tuneddml.searchers.coordinate_descent import CoordinateDescent, CoordinateDescentOptions
from tuneddml.searchers.space import Domain, SearchSpace
from tuneddml.searchers.warm_start import WarmStart, warm_points


def space_from_distributions(
    distributions: Mapping[str, BaseDistribution], *, name: str = "optuna"
) -> SearchSpace:
    """A :class:`SearchSpace` from Optuna distributions (no conditions, no ``step``)."""
    parameters: dict[str, tuple[Domain, ...]] = {}
    for key, dist in distributions.items():
        if getattr(dist, "step", None) not in (None, 1):
            raise ValueError(f"{key}: a step other than 1 is not supported by coordinate descent")
        if isinstance(dist, CategoricalDistribution):
            domain = Domain(key, key, "choice", choices=tuple(dist.choices))
        elif isinstance(dist, IntDistribution):
            domain = Domain(key, key, "int", low=float(dist.low), high=float(dist.high), log=dist.log)
        elif isinstance(dist, FloatDistribution):
            domain = Domain(
                key, key, "loguniform" if dist.log else "uniform", low=dist.low, high=dist.high, log=dist.log
            )
        else:
            raise TypeError(f"{key}: unsupported distribution {dist!r}")
        parameters[key] = (dataclasses.replace(domain, start=domain.default_start()),)
    return SearchSpace(name=name, path=None, parameters=parameters)


class AskTellSampler(BaseSampler):
    """An Optuna sampler around an ask/tell core built by :meth:`make_core` on the first trial
    (when the study's direction is known), inside a WarmStart where the space has start points."""

    core_class: Any = None  # the class make_core builds (what warm_points reads)
    max_trials: int | None = None

    def __init__(self, space: SearchSpace | Mapping[str, BaseDistribution], *, seed: int | None = None) -> None:
        self.space = space if isinstance(space, SearchSpace) else space_from_distributions(space)
        self.seed = seed or 0
        self.core: Any = None
        self._random = RandomSampler(seed=seed)
        self._assigned: dict[int, tuple[str, dict[str, Any]]] = {}  # trial number -> (key, config)
        self._mismatched: set[int] = set()

    def make_core(self, mode: str, max_trials: int | None) -> Any:
        raise NotImplementedError

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if self.core is None:
            if len(study.directions) != 1:
                raise ValueError(f"{type(self).__name__} optimises a single objective")
            mode = "max" if study.direction == StudyDirection.MAXIMIZE else "min"
            warm = warm_points(self.core_class, self.space)
            if self.max_trials is not None:
                warm = warm[: self.max_trials]
            core = self.make_core(mode, None if self.max_trials is None else self.max_trials - len(warm))
            self.core = WarmStart(core, warm) if warm else core
        got = self.core.ask()
        if isinstance(got, tuple):
            key, config = got
            self._assigned[trial.number] = (key, self.space.names_of(config))  # as define_by_run names them

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        _, config = self._assigned.get(trial.number, ("", {}))
        if param_name in config:
            value = config[param_name]
            try:
                if param_distribution._contains(param_distribution.to_internal_repr(value)):
                    return value
            except ValueError:
                pass
            # the objective's distribution cannot hold the proposed value: the trial does not run the
            # proposed config, so the core will count it as failed
            self._mismatched.add(trial.number)
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        assigned = self._assigned.pop(trial.number, None)
        mismatched = trial.number in self._mismatched
        self._mismatched.discard(trial.number)
        if assigned is not None and self.core is not None:
            ok = state in (TrialState.COMPLETE, TrialState.PRUNED) and values and not mismatched
            value = values[0] if ok else None  # type: ignore[index]
            inner = self.core.core if isinstance(self.core, WarmStart) else self.core
            if isinstance(inner, BalanceSearch):
                self.core.tell(assigned[0], value, complete=state != TrialState.PRUNED)
            else:
                self.core.tell(assigned[0], value)
        if self.core is not None and self.core.finished and not self._assigned:
            try:
                study.stop()
            except RuntimeError:  # not inside study.optimize (ask/tell by hand): nothing to stop
                pass

    def reseed_rng(self) -> None:
        self._random.reseed_rng()


class CoordinateDescentSampler(AskTellSampler):
    """An Optuna sampler running :class:`~tuneddml.searchers.coordinate_descent.CoordinateDescent`."""

    core_class = CoordinateDescent

    def __init__(
        self,
        space: SearchSpace | Mapping[str, BaseDistribution],
        *,
        seed: int | None = None,
        max_trials: int | None = None,
        options: CoordinateDescentOptions | None = None,
    ) -> None:
        super().__init__(space, seed=seed)
        self.max_trials = max_trials
        self.options = options

    def make_core(self, mode: str, max_trials: int | None) -> CoordinateDescent:
        return CoordinateDescent(self.space, mode=mode, seed=self.seed, max_trials=max_trials, options=self.options)  # type: ignore[arg-type]


class BalanceSampler(AskTellSampler):
    """An Optuna sampler running :class:`~tuneddml.searchers.balance.BalanceSearch`."""

    core_class = BalanceSearch

    def __init__(
        self,
        space: SearchSpace | Mapping[str, BaseDistribution],
        *,
        seed: int | None = None,
        max_trials: int | None = None,
        options: BalanceOptions | None = None,
    ) -> None:
        super().__init__(space, seed=seed)
        self.max_trials = max_trials
        self.options = options

    def make_core(self, mode: str, max_trials: int | None) -> BalanceSearch:
        return BalanceSearch(self.space, mode=mode, seed=self.seed, max_trials=max_trials, options=self.options)  # type: ignore[arg-type]


__all__ = ["AskTellSampler", "BalanceSampler", "CoordinateDescentSampler", "space_from_distributions"]
