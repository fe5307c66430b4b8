"""One distribution of one config key: :class:`Domain` (the building block of a search space).

Searchers move on the unit interval ``u in [0, 1]`` of a numeric domain (``x = lo + u (hi -
lo)``, or ``log x = log lo + u (log hi - log lo)`` on a log scale); a categorical domain is its
list of choices. ``when`` makes a domain conditional on earlier keys of its space.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("uniform", "loguniform", "int", "choice")


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

    def distribution(self) -> Any:
        """This domain as an Optuna distribution (for a study built from finished trials)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

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
