"""Coordinate descent over a search space: a pure-Python ask/tell core (no Ray, no Optuna).

The search of Sors, Sampaio de Rezende, Ibrahimi & Andreoli, "On the balance of contrastive
losses" (arXiv 2112.11743): start from a point, search one coordinate at a time, move to the best
point found, shrink a coordinate's step when its line brings no gain, and cycle until the budget is
spent or no coordinate moves.

The algorithm, on the unit interval ``u`` of each numeric domain (log scale where the domain is):

- a *line* on coordinate ``c`` around the incumbent ``x`` proposes up to ``line_points`` new points
  ``u_c = u_c(x) + k h_c`` for ``k = +1, -1, +2, -2, ...`` (clipped to ``[0, 1]``; integers rounded,
  a rounding back onto ``x`` replaced by the next integer in that direction; points already
  evaluated skipped). For a categorical coordinate the line is every other choice. The points of a
  line are handed out one by one before any result comes back, so they run in parallel.
- when every result of the line is in: if its best point beats the incumbent (strictly; ``mode``
  max or min), move there (and, if it was the farthest point on its side, grow ``h_c`` back
  toward ``initial_step``); otherwise shrink ``h_c <- max(shrink h_c, min_step)``. A line at the
  minimum step (or a categorical line) with no gain *settles* the coordinate until the incumbent
  moves again.
- coordinates whose ``when`` conditions fail at the incumbent are skipped; when a categorical move
  (e.g. ``loss``) makes them active, they join the cycle with their own step.
- the first cycle follows the file's order, later cycles a seeded shuffle of it.
- a failed, diverged or NaN/inf result counts as the worst possible value, never an error; so does
  a trial stopped early (``tell(..., complete=False)``, e.g. by ASHA), whose truncated value is not
  comparable with a fully trained incumbent's.

The start point is the space's (its first ``start_points`` entry where it lists some); with several
start points the search runs inside a :class:`~tuneddml.searchers.warm_start.WarmStart`, which
evaluates them all first and lets :meth:`CoordinateDescent.observe` start the lines from the best.

The search ends (:data:`FINISHED`) when ``max_trials`` points have been handed out, or when every
active coordinate is settled at the incumbent. :meth:`state_dict` is plain JSON data.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tuneddml.searchers import CORE_RUNTIME, SEARCHERS
from tuneddml.searchers.core import FINISHED, Ask, score_of
from tuneddml.searchers.space import SearchSpace, config_key

__all__ = ["FINISHED", "Ask", "CoordinateDescent", "CoordinateDescentOptions", "score_of"]


@dataclass(frozen=True)
class CoordinateDescentOptions:
    """The knobs of coordinate descent (see the module docstring), in one place for the core and
    its Ray and Optuna adapters."""

    line_points: int = 4  # points per line, handed out together
    initial_step: float = 0.25  # on the unit scale of each numeric domain
    shrink: float = 0.5  # a line without gain multiplies the step by this
    min_step: float = 1 / 32  # a line at this step without gain settles the coordinate

    def check(self) -> None:
        if self.line_points < 1 or not 0 < self.shrink < 1 or not 0 < self.min_step <= self.initial_step <= 1:
            raise ValueError("need line_points >= 1, 0 < shrink < 1 and 0 < min_step <= initial_step <= 1")


@SEARCHERS.register(
    "coordinate_descent",
    runtime=CORE_RUNTIME,
    summary="one coordinate at a time, a line of points in parallel, shrinking steps (Sors et al. 2021)",
)
class CoordinateDescent:
    """Ask/tell coordinate descent; see the module docstring for the algorithm."""

    starts_at_start_point = True  # its first line holds the space's start point (see .warm_start)

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        mode: Literal["max", "min"] | None = None,
        max_trials: int | None = None,
        options: CoordinateDescentOptions | None = None,
    ) -> None:
        self.options = options or CoordinateDescentOptions()
        self.options.check()
        self.space = space
        self.seed = seed
        self.mode = mode or space.mode
        self.max_trials = max_trials
        self.line_points = self.options.line_points
        self.initial_step = self.options.initial_step
        self.shrink = self.options.shrink
        self.min_step = self.options.min_step
        self._names = [d.name for d in space.domains]
        self._domains = {d.name: d for d in space.domains}
        self._point = space.start_point()  # the incumbent: a value for every domain
        self._steps = {d.name: self.initial_step for d in space.domains if d.numeric}
        self._settled: dict[str, int] = {}  # coordinate -> incumbent version it was settled at
        self._version = 0  # bumped on every move
        self._cycle = 0
        self._order = list(self._names)
        self._pos = 0
        self._line: dict[str, Any] | None = None  # {"coordinate", "entries", "results"}
        self._queue: list[str] = []  # keys of the current line not handed out yet
        self._records: dict[str, float | None] = {}  # config key -> score (None: failed)
        self._issued = 0
        self._finished = False

    # ---- ask / tell -------------------------------------------------------------------------
    def ask(self) -> Ask:
        """``(trial_key, config)``; ``None`` while the current line's results are pending;
        :data:`FINISHED` when the budget is spent or nothing moves any more."""
        if self._budget_left() <= 0:
            self._finished = True
        if not self._queue and self._line is None and not self._finished:
            self._open_line()
        if self._queue and not self._finished:
            key = self._queue.pop(0)
            self._issued += 1
            entry = self._line["entries"][key]  # type: ignore[index]
            return key, dict(entry["config"])
        return FINISHED if self._finished else None

    def tell(self, trial_key: str, value: float | None, *, complete: bool = True) -> None:
        """The result of a trial handed out by :meth:`ask`; None/NaN/inf: failed or diverged.
        ``complete=False`` (stopped early, e.g. by ASHA): its truncated value is not compared with
        fully trained incumbents; it counts as no gain."""
        line = self._line
        handed_out = line is not None and trial_key in line["entries"] and trial_key not in self._queue
        if line is None or not handed_out or trial_key in line["results"]:
            raise KeyError(f"no pending trial {trial_key!r}")
        score = score_of(value, self.mode) if complete else None
        line["results"][trial_key] = score
        self._records[line["entries"][trial_key]["cache"]] = score
        if len(line["results"]) == len(line["entries"]):
            self._close_line()

    @property
    def finished(self) -> bool:
        """Whether the next :meth:`ask` returns :data:`FINISHED` (pending results aside)."""
        if not self._finished and self._line is None and not self._queue:
            self._open_line()  # what the next ask would do first; its outcome does not change
        return self._finished or (self._budget_left() <= 0)

    def observe(self, config: dict[str, Any], value: float | None) -> None:
        """A result found outside the search (a warm start point, :mod:`.warm_start`): recorded, so
        it is not proposed again, and the new incumbent (before any line opens) if it beats the
        incumbent's own result."""
        point = {**self._point, **self.space.names_of(config)}
        score = score_of(value, self.mode)
        current = self._records.get(config_key(self.space.config_of(self._point)))
        self._records[config_key(self.space.config_of(point))] = score
        if score is not None and self._line is None and (current is None or score > current):
            self._point = point
            self._version += 1

    def best(self) -> tuple[dict[str, Any], float | None]:
        """The incumbent config and its value in the metric's own sign (None before any result)."""
        config = self.space.config_of(self._point)
        score = self._records.get(config_key(config))
        return config, None if score is None else (score if self.mode == "max" else -score)

    # ---- lines ------------------------------------------------------------------------------
    def _budget_left(self) -> float:
        return math.inf if self.max_trials is None else self.max_trials - self._issued

    def _open_line(self) -> None:
        if self._budget_left() <= 0:
            self._finished = True
            return
        proposals: list[tuple[dict[str, Any], int]] = []
        incumbent = self.space.config_of(self._point)
        if config_key(incumbent) not in self._records:
            proposals.append((dict(self._point), 0))  # the start point runs with the first line
        coordinate = None
        while coordinate is None:
            name = self._next_coordinate()
            if name is None:
                break
            line = self._propose(name)
            if line:
                coordinate = name
                proposals.extend(line)
            else:
                self._no_gain(name)
        if coordinate is not None:
            self._pos += 1
        if not proposals:
            self._finished = True
            return
        budget = self._budget_left()
        entries = {}
        for point, offset in proposals[: int(min(budget, len(proposals)))]:
            key = f"t{self._issued + len(entries):05d}"
            config = self.space.config_of(point)
            entries[key] = {"point": point, "config": config, "cache": config_key(config), "offset": offset}
        self._line = {"coordinate": coordinate, "version": self._version, "entries": entries, "results": {}}
        self._queue = list(entries)

    def _next_coordinate(self) -> str | None:
        """The next active, unsettled coordinate in cycle order (None: all settled)."""
        for _ in range(2 * len(self._names) + 1):
            if self._pos >= len(self._order):
                self._cycle += 1
                self._order = self._cycle_order(self._cycle)
                self._pos = 0
            name = self._order[self._pos]
            if name in self.space.active_names(self._point) and not self._is_settled(name):
                return name
            self._pos += 1
        return None

    def _cycle_order(self, cycle: int) -> list[str]:
        order = list(self._names)
        if cycle > 0:
            random.Random(f"{self.seed}:{cycle}").shuffle(order)
        return order

    def _is_settled(self, name: str) -> bool:
        at_min = name not in self._steps or self._steps[name] <= self.min_step
        return at_min and self._settled.get(name) == self._version

    def _propose(self, name: str) -> list[tuple[dict[str, Any], int]]:
        domain = self._domains[name]
        current = self._point[name]
        seen = {config_key(self.space.config_of(self._point))}
        out: list[tuple[dict[str, Any], int]] = []

        def add(value: Any, offset: int) -> None:
            point = {**self._point, name: value}
            cache = config_key(self.space.config_of(point))
            if cache not in seen and cache not in self._records:
                seen.add(cache)
                out.append((point, offset))

        if not domain.numeric:
            for i, choice in enumerate(domain.choices):
                if choice != current or isinstance(choice, bool) != isinstance(current, bool):
                    add(choice, i + 1)
            return out
        u0, step = domain.to_unit(current), self._steps[name]
        for k in range(1, self.line_points + 1):
            for offset in (k, -k):
                if len(out) >= self.line_points:
                    return out
                value = domain.from_unit(u0 + offset * step)
                if domain.kind == "int" and value == current:
                    value = int(min(domain.high, max(domain.low, current + (1 if offset > 0 else -1))))
                if value != current:
                    add(value, offset)
        return out

    def _close_line(self) -> None:
        line, self._line = self._line, None
        assert line is not None
        incumbent = self._records.get(config_key(self.space.config_of(self._point)))
        best_key, best = None, -math.inf if incumbent is None else incumbent
        for key in line["entries"]:
            score = line["results"][key]
            if score is not None and score > best:
                best_key, best = key, score
        name = line["coordinate"]
        if best_key is None:
            if name is not None:
                self._no_gain(name)
            return
        entry = line["entries"][best_key]
        self._point = dict(entry["point"])
        self._version += 1
        offset = entry["offset"]
        if name in self._steps and offset != 0:
            same_side = [e["offset"] for e in line["entries"].values() if e["offset"] * offset > 0]
            if abs(offset) == max(abs(o) for o in same_side):
                self._steps[name] = min(self.initial_step, self._steps[name] / self.shrink)

    def _no_gain(self, name: str) -> None:
        step = self._steps.get(name)
        if step is None or step <= self.min_step:
            self._settled[name] = self._version
        else:
            self._steps[name] = max(self.min_step, step * self.shrink)

    # ---- save / restore ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the search, as JSON-serialisable data."""
        return {
            "names": self._names,
            "options": {"seed": self.seed, "mode": self.mode, "max_trials": self.max_trials, **asdict(self.options)},
            "point": self._point,
            "steps": self._steps,
            "settled": self._settled,
            "version": self._version,
            "cycle": self._cycle,
            "order": self._order,
            "pos": self._pos,
            "line": self._line,
            "queue": self._queue,
            "records": self._records,
            "issued": self._issued,
            "finished": self._finished,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["names"] != self._names:
            raise ValueError(f"state of a different space: {state['names']} != {self._names}")
        options = dict(state["options"])
        self.seed, self.mode, self.max_trials = options.pop("seed"), options.pop("mode"), options.pop("max_trials")
        self.options = CoordinateDescentOptions(**options)
        for key, value in options.items():
            setattr(self, key, value)
        self._point, self._steps, self._settled = (
            dict(state["point"]),
            dict(state["steps"]),
            dict(state["settled"]),
        )
        self._version, self._cycle, self._order = state["version"], state["cycle"], list(state["order"])
        self._pos, self._line, self._queue = state["pos"], state["line"], list(state["queue"])
        self._records, self._issued, self._finished = (
            dict(state["records"]),
            state["issued"],
            state["finished"],
        )
