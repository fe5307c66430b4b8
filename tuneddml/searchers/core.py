"""The contract of a searcher core: the pure-Python ask/tell object behind the Ray and Optuna
adapters (:class:`SearcherCore`), and the pieces every core shares.

A core proposes configs of a :class:`~tuneddml.searchers.space.SearchSpace` one at a time:
``ask()`` returns ``(trial_key, config)`` (the flat searched keys), ``None`` while it waits for
results, or :data:`FINISHED`; ``tell(key, value, complete=...)`` gives a trial's result (None,
NaN or inf: failed or diverged; ``complete=False``: stopped early by a scheduler, its truncated
value not comparable with a fully trained one); ``state_dict()`` is plain JSON data that
``load_state_dict`` continues from exactly. ``mode`` (max|min) may be set by the adapter until the
first ask.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol, runtime_checkable

FINISHED: Literal["FINISHED"] = "FINISHED"  # the same string as ray.tune.search.Searcher.FINISHED

Ask = tuple[str, dict[str, Any]] | Literal["FINISHED"] | None


def score_of(value: Any, mode: str) -> float | None:
    """A result as a score to maximise; None for a failed or diverged trial."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return x if mode == "max" else -x


@runtime_checkable
class SearcherCore(Protocol):
    """What the adapters (:mod:`.ray_searcher`, :mod:`.optuna_sampler`) need from a core."""

    space: Any  # the SearchSpace searched
    mode: str

    def ask(self) -> Ask: ...

    def tell(self, trial_key: str, value: float | None, *, complete: bool = True) -> None: ...

    @property
    def finished(self) -> bool: ...

    def best(self) -> tuple[dict[str, Any], float | None]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def is_core(obj: Any) -> bool:
    """Whether ``obj`` has the :class:`SearcherCore` methods, read off its class (so no property,
    such as ``finished``, runs: a core's ``finished`` may plan its next line)."""
    kind = type(obj)
    methods = ("ask", "tell", "best", "state_dict", "load_state_dict")
    return all(callable(getattr(kind, m, None)) for m in methods) and isinstance(
        getattr(kind, "finished", None), property
    )
