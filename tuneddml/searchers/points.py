"""The ``points`` searcher: evaluates exactly the space's ``start_points``, in order, then stops.

No search: a way to re-run known configs (a paper's published optima, each loss's best config x
each ``seed``) through the same trials, records and report as a search. The budget
(``num_samples``) cuts the list when it is smaller; a space without start points is refused
(:meth:`PointsSearch.check_space`, called before Ray starts). :meth:`best` is the best result told.
"""

from __future__ import annotations

from typing import Any, Literal

from tuneddml.errors import ConfigError
from tuneddml.searchers import CORE_RUNTIME, SEARCHERS
from tuneddml.searchers.core import FINISHED, Ask, score_of


@SEARCHERS.register(
    "points",
    runtime=CORE_RUNTIME,
    summary="evaluates the space's start_points in order (up to the budget), then stops: no search",
)
class PointsSearch:
    """Hands out the space's start points in order, then :data:`FINISHED` (``seed`` is taken, as
    every core takes it, and unused: the order is the file's)."""

    evaluates_start_points = True  # no WarmStart around it (see tuneddml.searchers.warm_start)

    def __init__(
        self,
        space: Any,
        *,
        seed: int = 0,
        mode: Literal["max", "min"] | None = None,
        max_trials: int | None = None,
    ) -> None:
        self.check_space(space)
        self.space = space
        self.mode = mode or space.mode
        points = [dict(p) for p in space.start_points]
        self.configs = points if max_trials is None else points[:max_trials]
        self._next = 0
        self._pending: dict[str, int] = {}
        self._scores: dict[str, float | None] = {}  # key -> score (None: failed or stopped early)

    @staticmethod
    def check_space(space: Any) -> None:
        """ConfigError naming ``--searcher`` unless the space lists start points."""
        if not getattr(space, "start_points", ()):
            raise ConfigError(
                "--searcher", "points", f"a space with start_points to evaluate ({space.name} has none), or another searcher"
            )

    def ask(self) -> Ask:
        if self._next >= len(self.configs):
            return FINISHED
        key = f"p{self._next:05d}"
        self._pending[key] = self._next
        self._next += 1
        return key, dict(self.configs[self._pending[key]])

    def tell(self, trial_key: str, value: float | None, *, complete: bool = True) -> None:
        if trial_key not in self._pending:
            raise KeyError(f"no pending trial {trial_key!r}")
        self._pending.pop(trial_key)
        self._scores[trial_key] = score_of(value, self.mode) if complete else None

    @property
    def finished(self) -> bool:
        return self._next >= len(self.configs)

    def best(self) -> tuple[dict[str, Any], float | None]:
        """The best config told and its value in the metric's own sign (``({}, None)`` before)."""
        done = [(s, k) for k, s in self._scores.items() if s is not None]
        if not done:
            return {}, None
        score, key = max(done, key=lambda sk: (sk[0], -int(sk[1][1:])))  # a tie: the earlier point
        return dict(self.configs[int(key[1:])]), score if self.mode == "max" else -score

    def state_dict(self) -> dict[str, Any]:
        return {
            "configs": self.configs,
            "next": self._next,
            "pending": self._pending,
            "scores": self._scores,
            "mode": self.mode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.configs = [dict(c) for c in state["configs"]]
        self._next, self._pending = state["next"], dict(state["pending"])
        self._scores, self.mode = dict(state["scores"]), state["mode"]
