"""Search spaces: what a search varies, read from one YAML file per space.

A space file (``search_spaces/NAME.yaml``, or any path) looks like::

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

Distributions: ``uniform: [lo, hi]``, ``loguniform: [lo, hi]`` (``lo > 0``), ``int: [lo, hi]``
(``log: true`` for a log scale), ``choice: [...]``. ``start`` is where coordinate descent starts
(default: the centre of the range, geometric for log scales, or the first choice). ``when: {key:
value or [values]}`` makes a parameter conditional on an *earlier* parameter of the file (so
conditions never form a cycle). A key that needs different ranges under different conditions
(``loss.alpha`` of two losses) is written as a list of variants whose ``when`` exclude each other.

Each distribution is one :class:`Domain`; searchers move on the unit interval ``u in [0, 1]``
(``x = lo + u (hi - lo)``, or ``log x = log lo + u (log hi - log lo)`` on a log scale).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("uniform", "loguniform", "int", "choice")
MODES = ("max", "min")
SCHEDULERS = ("asha", "fifo")
DEFAULT_METRIC = "map_at_r"

Validator = Callable[[dict[str, Any]], Any]


def tidy(x: float) -> float:
    """Round away float noise (``0.7250000000000001``) so equal points compare and print equal."""
    return float(f"{x:.10g}")


@dataclass(frozen=True)
class Domain:
    """One distribution of one config key (one variant, when the key has several)."""

    key: str  # the flat TrialConfig key, e.g. "loss.lambda"
    name: str  # unique within the space: the key, or "key@i" for the i-th variant
    kind: str  # one of KINDS
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    start: Any = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def numeric(self) -> bool:
        return self.kind != "choice"

    def active(self, config: Mapping[str, Any]) -> bool:
        """Whether every condition holds for the (partial) config built so far."""
        return all(k in config and _member(config[k], values) for k, values in self.when)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return _member(value, self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def to_unit(self, value: Any) -> float:
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> Any:
        u = min(1.0, max(0.0, u))
        if self.log:
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        if self.kind == "int":
            return int(min(self.high, max(self.low, round(x))))
        return tidy(min(self.high, max(self.low, x)))

    def default_start(self) -> Any:
        return self.choices[0] if self.kind == "choice" else self.from_unit(0.5)

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return self.choices[rng.randrange(len(self.choices))]
        if self.kind == "int":
            if not self.log:
                return rng.randint(int(self.low), int(self.high))
            # equal mass per integer's share of the log range [lo - 1/2, hi + 1/2)
            lo, hi = math.log(self.low - 0.5 if self.low > 0.5 else self.low), math.log(self.high + 0.5)
            return int(min(self.high, max(self.low, round(math.exp(rng.uniform(lo, hi))))))
        return self.from_unit(rng.random())

    def grid(self, n: int) -> list[Any]:
        """``n`` points at the centres of ``n`` equal cells of the (log) range; every choice."""
        if self.kind == "choice":
            return list(self.choices)
        values = [self.from_unit((i + 0.5) / n) for i in range(n)]
        return list(dict.fromkeys(values))

    def extremes(self) -> list[Any]:
        """The values worth validating: every choice, or low, high and start."""
        if self.kind == "choice":
            return list(self.choices)
        kind = int if self.kind == "int" else float
        return list(dict.fromkeys([kind(self.low), kind(self.high), self.start]))

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or Ray's captor of one) for this domain's value, under its name:
        Optuna needs one distribution per parameter name, and variants of a key differ."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _member(value: Any, values: tuple[Any, ...]) -> bool:
    # 1 == True in Python; a bool choice must not match an int value, nor the reverse
    return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in values)


def config_key(config: Mapping[str, Any]) -> str:
    """A canonical text for a config: the cache key of searchers."""
    return json.dumps(dict(config), sort_keys=True, default=str)


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

    @property
    def domains(self) -> tuple[Domain, ...]:
        """Every domain in file order (a condition refers only to earlier keys)."""
        return tuple(d for variants in self.parameters.values() for d in variants)

    def domain(self, name: str) -> Domain:
        return next(d for d in self.domains if d.name == name)

    def start_point(self) -> dict[str, Any]:
        """A full point: every domain's start value, by domain name (active or not)."""
        return {d.name: d.start for d in self.domains}

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
        from tuneddml.searchers.space_file import check_values

        check_values(self, dict(fixed), validate, where=self.fixed)

    def representative_configs(self) -> list[dict[str, Any]]:
        """The configs that :func:`load_space` validates: the start point, then every domain at each
        of its extremes (low, high, start, each choice) with its conditions made true."""
        base = self.start_point()
        configs = {config_key(c): c for c in [self.config_of(base)]}
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
                value = next((v for v in values if parent.contains(v)), None)
                if value is not None and self.activate(point, parent):
                    point[parent.name] = value
                    break
            else:
                return False
        return domain.name in self.active_names(point)


def load_space(name_or_path: str | Path, *, validate: Validator | None = None) -> SearchSpace:
    """Load and validate a space by name (``search_spaces/NAME.yaml``) or path.

    ``validate(flat)`` checks one trial config (flat keys) and raises ConfigError; the default is
    :meth:`tuneddml.config.TrialConfig.from_flat`. Every error names the file and the key.
    """
    from tuneddml.searchers.space_file import check_values, find_space, parse_space

    space = parse_space(find_space(name_or_path))
    check_values(space, space.fixed, validate, where=space.fixed)
    return space


def list_spaces() -> list[str]:
    """Names of the shipped spaces."""
    from tuneddml.searchers.space_file import space_dirs

    return sorted({p.stem for d in space_dirs() for p in d.glob("*.yaml")})
