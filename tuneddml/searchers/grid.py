"""Grid search as an ask/tell core (the same interface as coordinate descent), a baseline.

The grid is :meth:`SearchSpace.grid`: each numeric range cut into ``n`` equal cells (on its log
scale where it has one) and represented by the cells' centres, every choice of a categorical key,
and a conditional key expanded only inside its own branch. So that a grid search spends the same
budget as the other searchers, ``n`` is the smallest number of points per range (up to
``max_points_per_range``) whose grid holds at least ``max_trials`` configs; a bigger grid is cut to
a seeded random subset of ``max_trials`` (as Optuna's GridSampler picks grid points at random).
Without a budget the grid has ``max_points_per_range`` points per range. Results are recorded,
not used.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from tuneddml.searchers import CORE_RUNTIME, SEARCHERS
from tuneddml.searchers.core import FINISHED, Ask, score_of
from tuneddml.searchers.space import SearchSpace, config_key


@SEARCHERS.register(
    "grid",
    runtime=CORE_RUNTIME,
    summary="every combination of a few points per range and every choice, within the budget",
)
class GridSearch:
    """Hands out the grid's configs in order, then :data:`FINISHED`."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        mode: Literal["max", "min"] | None = None,
        max_trials: int | None = None,
        max_points_per_range: int = 7,
    ) -> None:
        self.space = space
        self.mode = mode or space.mode
        self.max_trials = max_trials
        for n in range(1, max_points_per_range + 1):
            grid = space.grid(n)
            if max_trials is not None and len(grid) >= max_trials:
                break
        if max_trials is not None and len(grid) > max_trials:
            grid = random.Random(seed).sample(grid, max_trials)
        self.configs = grid
        self._next = 0
        self._pending: dict[str, int] = {}
        self._records: dict[str, float | None] = {}

    def ask(self) -> Ask:
        if self._next >= len(self.configs):
            return FINISHED
        key = f"g{self._next:05d}"
        self._pending[key] = self._next
        self._next += 1
        return key, dict(self.configs[self._pending[key]])

    def tell(self, trial_key: str, value: float | None, *, complete: bool = True) -> None:
        index = self._pending.pop(trial_key)
        self._records[config_key(self.configs[index])] = score_of(value, self.mode) if complete else None

    @property
    def finished(self) -> bool:
        return self._next >= len(self.configs)

    def best(self) -> tuple[dict[str, Any], float | None]:
        done = [(s, c) for c in self.configs if (s := self._records.get(config_key(c))) is not None]
        if not done:
            return {}, None
        score, config = max(done, key=lambda sc: sc[0])
        return dict(config), score if self.mode == "max" else -score

    def state_dict(self) -> dict[str, Any]:
        return {
            "configs": self.configs,
            "next": self._next,
            "pending": self._pending,
            "records": self._records,
            "mode": self.mode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.configs = [dict(c) for c in state["configs"]]
        self._next, self._pending = state["next"], dict(state["pending"])
        self._records, self.mode = dict(state["records"]), state["mode"]
