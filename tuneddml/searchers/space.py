"""Search spaces: what a search varies, read from one YAML file per space.

A space file (a shipped ``tuneddml/search_spaces/NAME.yaml``, or any path) looks like::

    description: Balance of the positive and entropy terms (Sors et al. 2021)
    metric: map_at_r                # reported by every trial epoch (default map_at_r)
    mode: max                       # max | min (default max)
    searcher: coordinate_descent    # default searcher (see tuneddml.searchers.SEARCHERS)
    num_samples: 16                 # budget in trials
    scheduler: asha                 # asha | fifo
    fixed:                          # flat TrialConfig keys, dotted for component parameters
      dataset: glyphs
    parameters:
      loss: {choice: [contrastive, supcon]}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.5}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: supcon}}
      sampler.samples_per_class: {int: [2, 8], log: true, start: 4}
    start_points:                   # optional: evaluated first, in order, by every searcher
      - {loss: supcon, loss.temperature: 0.07}    # a key left out takes its start
      - {loss: contrastive, loss.lambda: 0.25}

Distributions: ``uniform: [lo, hi]``, ``loguniform: [lo, hi]`` (``lo > 0``), ``int: [lo, hi]``
(``log: true`` for a log scale), ``choice: [...]``. ``start`` is where coordinate descent starts
(default: the centre of the range, geometric for log scales, or the first choice). ``when: {key:
value or [values]}`` makes a parameter conditional on an *earlier* parameter of the file (so
conditions never form a cycle). A key that needs different ranges under different conditions
(``loss.alpha`` of two losses) is written as a list of variants whose ``when`` exclude each other.

``start_points`` (warm starts: e.g. a paper's published optima, or each loss's best config x each
``seed`` for a ``searcher: points`` run that only re-evaluates them) are mappings of *searched* keys,
the flat keys of a trial config; a point may be partial: a key it leaves out takes its domain's
``start`` (the active variant's), and only keys whose ``when`` hold at the point may be given
(:mod:`tuneddml.searchers.start_points` checks each value against its domain, and
:func:`check_values` the points as whole trial configs). The first start point is where every
searcher starts (:meth:`SearchSpace.start_point`); every searcher evaluates all of them first, in
order (Optuna's as ``points_to_evaluate``, so TPE learns from them; the ask/tell cores through
:class:`~tuneddml.searchers.warm_start.WarmStart`), and ``searcher: points`` evaluates exactly them.

Each distribution is one :class:`Domain`; searchers move on the unit interval ``u in [0, 1]``
(``x = lo + u (hi - lo)``, or ``log x = log lo + u (log hi - log lo)`` on a log scale).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.searchers.domain import KINDS, Domain, _member, config_key, tidy
from tuneddml.searchers.space_file import DEFAULT_METRIC, display_path, find_space, list_spaces, read_space

__all__ = [
    "KINDS",
    "Domain",
    "SearchSpace",
    "check_values",
    "config_key",
    "list_spaces",
    "load_space",
    "tidy",
]

Validator = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """A loaded, validated space. ``parameters`` maps each searched key to its variants."""

    name: str
    path: Path | None
    description: str = ""
    metric: str = DEFAULT_METRIC
    mode: str = "max"
    searcher: str = "coordinate_descent"
    num_samples: int = 16
    scheduler: str = "asha"
    fixed: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, tuple[Domain, ...]] = field(default_factory=dict)
    #: the file's ``start_points``, each a full config (the values of its active domains, by key)
    start_points: tuple[dict[str, Any], ...] = ()

    @property
    def domains(self) -> tuple[Domain, ...]:
        """Every domain in file order (a condition refers only to earlier keys)."""
        return tuple(d for variants in self.parameters.values() for d in variants)

    def domain(self, name: str) -> Domain:
        return next(d for d in self.domains if d.name == name)

    def start_point(self) -> dict[str, Any]:
        """A full point, by domain name (active or not): the first of the ``start_points`` where
        the file has some, with every other domain at its start value; else every domain's start."""
        point = {d.name: d.start for d in self.domains}
        if self.start_points:
            point.update(self.names_of(self.start_points[0]))
        return point

    def config_of(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """The trial parameters of a full point: the values of its active domains, by key."""
        config: dict[str, Any] = {}
        for d in self.domains:
            if d.key not in config and d.active(config):
                config[d.key] = point[d.name]
        return config

    def active_names(self, point: Mapping[str, Any]) -> list[str]:
        config: dict[str, Any] = {}
        names = []
        for d in self.domains:
            if d.key not in config and d.active(config):
                config[d.key] = point[d.name]
                names.append(d.name)
        return names

    def sample(self, rng: random.Random | int | None = None) -> dict[str, Any]:
        """A random config (uniform on each active domain's scale), conditions respected."""
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        config: dict[str, Any] = {}
        for d in self.domains:
            if d.key not in config and d.active(config):
                config[d.key] = d.sample(rng)
        return config

    def grid(self, points_per_range: int = 3) -> list[dict[str, Any]]:
        """Every combination of the active domains' grid values; inactive keys are left out, so
        a conditional key multiplies only its own branch."""
        domains = self.domains
        out: list[dict[str, Any]] = []

        def expand(i: int, config: dict[str, Any]) -> None:
            if i == len(domains):
                out.append(dict(config))
                return
            d = domains[i]
            if d.key in config or not d.active(config):
                expand(i + 1, config)
                return
            for value in d.grid(points_per_range):
                config[d.key] = value
                expand(i + 1, config)
                del config[d.key]

        expand(0, {})
        return out

    def define_by_run(self, trial: Any) -> None:
        """Optuna define-by-run function (Ray's ``OptunaSearch(space=space.define_by_run)``):
        suggests the active domains in file order, by domain name (``key@i`` for the variants of a
        key: map the result back with :meth:`keys_of`); returns ``None`` (no constants: ``fixed``
        is merged by the driver)."""
        config: dict[str, Any] = {}
        for d in self.domains:
            if d.key not in config and d.active(config):
                config[d.key] = d.suggest(trial)

    def keys_of(self, named: Mapping[str, Any]) -> dict[str, Any]:
        """Values by domain name -> values by config key."""
        keys = {d.name: d.key for d in self.domains}
        return {keys.get(name, name): value for name, value in named.items()}

    def names_of(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Values by config key -> values by the name of the domain active for each key."""
        built: dict[str, Any] = {}
        named: dict[str, Any] = {}
        for d in self.domains:
            if d.key in config and d.key not in built and d.active(built):
                built[d.key] = named[d.name] = config[d.key]
        return named

    def validate_overrides(self, fixed: Mapping[str, Any], validate: Validator | None = None) -> None:
        """Check the space's points merged over ``fixed`` (the space's ``fixed`` plus command-line
        overrides): a key may not be both fixed and searched."""
        check_values(self, dict(fixed), validate, where=self.fixed)

    def representative_configs(self) -> list[dict[str, Any]]:
        """The configs that :func:`load_space` validates: the start point, the ``start_points``,
        then every domain at each of its extremes (low, high, start, each choice) with its
        conditions made true."""
        base = self.start_point()
        configs = {config_key(c): c for c in [self.config_of(base), *self.start_points]}
        for d in self.domains:
            for value in d.extremes():
                point = dict(base)
                self.activate(point, d)
                point[d.name] = value
                config = self.config_of(point)
                configs.setdefault(config_key(config), config)
        return list(configs.values())

    def activate(self, point: dict[str, Any], domain: Domain) -> bool:
        """Change ``point`` so that ``domain`` is active; False if its conditions cannot hold."""
        for key, values in domain.when:
            for parent in self.parameters.get(key, ()):
                held = [v for v in values if parent.contains(v)]
                kept = [v for v in held if _member(point.get(parent.name), (v,))]  # a value set already stays
                value = next(iter(kept or held), None)
                if value is not None and self.activate(point, parent):
                    point[parent.name] = value
                    break
            else:
                return False
        return domain.name in self.active_names(point)


def load_space(name_or_path: str | Path, *, validate: Validator | None = None) -> SearchSpace:
    """Load and validate a space by name (a shipped ``tuneddml/search_spaces/NAME.yaml``) or path.

    ``validate(flat)`` checks one trial config (flat keys) and raises ConfigError; the default is
    :meth:`tuneddml.config.TrialConfig.from_flat`. Every error names the file and the key.
    """
    path = find_space(name_or_path)
    space = SearchSpace(**read_space(path))
    from tuneddml.searchers import SEARCHERS

    check_space = getattr(SEARCHERS.get(space.searcher).factory, "check_space", None)
    if callable(check_space):  # the file's own searcher must be able to search it
        try:
            check_space(space)
        except ConfigError as exc:
            raise ConfigError(f"{display_path(path)}: searcher", exc.value, exc.expected) from None
    check_values(space, space.fixed, validate, where=space.fixed)
    return space


def check_values(
    space: SearchSpace, fixed: Mapping[str, Any], validate: Validator | None, *, where: Mapping[str, Any]
) -> None:
    """Run ``validate`` on the space's representative configs merged over ``fixed``; re-raise its
    errors with the file and the key. ``where``: the keys that came from the file's ``fixed``
    (others came from the command line)."""
    if validate is None:
        from tuneddml.config import TrialConfig

        validate = TrialConfig.from_flat
    file = display_path(space.path) if space.path else space.name
    for key in fixed:
        if key in space.parameters:
            raise ConfigError(
                key, fixed[key], f"a key that {file} does not search (it is one of its parameters)"
            )
    for d in space.domains:
        point = space.start_point()
        if not space.activate(point, d):
            raise ConfigError(
                f"{file}: parameters.{d.key}.when", dict(d.when), "conditions that can all hold"
            )
    start = space.config_of(space.start_point())
    starts = {config_key(p): i for i, p in reversed(list(enumerate(space.start_points)))}
    for config in space.representative_configs():
        try:
            validate({**fixed, **config})
        except ConfigError as exc:
            key = exc.field
            index = starts.get(config_key(config))
            if index is not None and key in config:
                located = f"{file}: start_points[{index}].{key}"
            elif key in space.parameters:
                located = f"{file}: parameters.{key}"
            elif key in where and where[key] == fixed.get(key):
                located = f"{file}: fixed.{key}"
            elif key in fixed:
                located = key  # set or changed on the command line
            else:
                located = f"{file}: {key}"
            differs = {k: v for k, v in config.items() if start.get(k) != v}
            at = ", ".join(f"{k}={v}" for k, v in (differs or config).items())
            at = at if differs else f"the start point {at}"
            if index is not None:
                at = f"start_points[{index}] " + ", ".join(f"{k}={v}" for k, v in config.items())
            expected = f"{exc.expected}; checked at {at}" if exc.expected else f"checked at {at}"
            raise ConfigError(located, exc.value, expected) from None
