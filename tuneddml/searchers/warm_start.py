"""Warm starts for the ask/tell cores: the space's ``start_points`` handed out first, in order.

:class:`WarmStart` wraps any core (it keeps the :class:`~tuneddml.searchers.core.SearcherCore`
protocol): ``ask`` returns the given points first, under the keys ``warm-1``, ``warm-2``, ..., then
delegates to the core. A core with an ``observe(config, value)`` method learns from them: each
warm result is passed to it, and the core is asked nothing before every warm result is in (so
coordinate descent starts from the best start point, and does not run one again; the balance
search takes each family's best start point as that family's incumbent). A core without
``observe`` (grid) is asked as soon as the warm points are handed out; their results are recorded
only. :meth:`WarmStart.best` is the best of the warm results and the core's; ``state_dict`` is plain
JSON data that ``load_state_dict`` continues from exactly.

:func:`warm_points` says which points a searcher's core must be given: none for a core that
evaluates the start points itself (``evaluates_start_points``: the ``points`` searcher), none for
a core that starts at :meth:`~tuneddml.searchers.space.SearchSpace.start_point` (the first start
point: ``starts_at_start_point``, coordinate descent and balance) when the space has one start
point only, and every start point otherwise.
"""

from __future__ import annotations

import math
from typing import Any

from tuneddml.searchers.core import Ask, score_of

PREFIX = "warm-"


def warm_points(factory: Any, space: Any) -> list[dict[str, Any]]:
    """The start points a :class:`WarmStart` must hand out before the core built by ``factory``."""
    points = [dict(p) for p in getattr(space, "start_points", ())]
    if getattr(factory, "evaluates_start_points", False):
        return []
    if getattr(factory, "starts_at_start_point", False) and len(points) <= 1:
        return []
    return points


class WarmStart:
    """A core that hands out ``points`` (trial configs, by key) first, then ``core``'s configs."""

    def __init__(self, core: Any, points: list[dict[str, Any]]) -> None:
        self.core = core
        self.space = core.space
        self.points = [dict(p) for p in points]
        self._next = 0  # points handed out
        self._pending: dict[str, int] = {}  # key -> index of a point handed out, not told yet
        self._scores: dict[str, float | None] = {}  # key -> score (None: failed or stopped early)

    @property
    def mode(self) -> str:
        return self.core.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.core.mode = mode

    @property
    def core_type(self) -> str:
        """The wrapped core's class name: what a saved state is a state of."""
        return type(self.core).__name__

    @property
    def learns(self) -> bool:
        return callable(getattr(self.core, "observe", None))

    def _waiting(self) -> bool:
        """Every point handed out, some result not in, and the core learns from them."""
        return self._next >= len(self.points) and bool(self._pending) and self.learns

    def ask(self) -> Ask:
        if self._next < len(self.points):
            self._next += 1
            key = f"{PREFIX}{self._next}"
            self._pending[key] = self._next - 1
            return key, dict(self.points[self._next - 1])
        if self._waiting():
            return None
        return self.core.ask()

    def tell(self, trial_key: str, value: float | None, *, complete: bool = True) -> None:
        if not trial_key.startswith(PREFIX):
            self.core.tell(trial_key, value, complete=complete)
            return
        if trial_key not in self._pending:
            raise KeyError(f"no pending trial {trial_key!r}")
        index = self._pending.pop(trial_key)
        score = score_of(value, self.mode) if complete else None
        self._scores[trial_key] = score
        if self.learns:
            sign = 1 if self.mode == "max" else -1
            self.core.observe(dict(self.points[index]), None if score is None else sign * score)

    @property
    def finished(self) -> bool:
        if self._next < len(self.points) or self._waiting():
            return False  # the core is not asked (nor planned) before it has learnt from the points
        return self.core.finished

    def best(self) -> tuple[dict[str, Any], float | None]:
        """The best result so far, warm points and the core's, in the metric's own sign."""
        config, value = self.core.best()
        sign = 1 if self.mode == "max" else -1
        best = -math.inf if value is None else sign * value
        for key, score in self._scores.items():
            if score is not None and score > best:
                config, best = dict(self.points[int(key.removeprefix(PREFIX)) - 1]), score
        if best == -math.inf:
            return config, None
        return config, sign * best

    def state_dict(self) -> dict[str, Any]:
        return {
            "warm": {"points": self.points, "next": self._next, "pending": self._pending, "scores": self._scores},
            "core": self.core.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        warm = state["warm"]
        self.points = [dict(p) for p in warm["points"]]
        self._next, self._pending, self._scores = warm["next"], dict(warm["pending"]), dict(warm["scores"])
        self.core.load_state_dict(state["core"])
