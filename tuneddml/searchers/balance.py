# Long file: one ask/tell state machine (explore, race, refine) whose phases share its state; split, each part would reach into the others.
"""The balance search: explore, race the loss families, refine each by coordinate descent.

Sors et al. (2021, arXiv 2112.11743) search the balance of a contrastive loss by coordinate
descent. Plain coordinate descent (:mod:`tuneddml.searchers.coordinate_descent`) decides the loss
family with one categorical line at everyone's start values and never revisits it, searches
``lambda`` once before the coupled temperature or margins move, and waits for whole lines. This
searcher keeps coordinate descent at the heart of the balance and fixes those causes:

1. **Explore.** The first ``explore`` share of the budget (at least one point per family) goes to
   every family's start point, then to scrambled-Sobol points (seeded) spread over the space,
   the families taken in turn: so each family is judged by its best point, not its start values.
2. **Race.** A *family* is a value of the family coordinate (default: the first categorical key
   that other keys depend on, e.g. ``loss``). Every family alive keeps its own incumbent (its best
   point) and its own coordinate descent. After the exploration and after each round (every
   alive family has closed one more line), the worse half of the families is dropped (successive
   halving), never one within ``min_gain`` of the leader; a dropped family whose late result beats
   every alive one comes back.
3. **Refine.** A line on coordinate ``c`` of family ``f`` proposes up to ``line_points`` points
   ``u_c = u_c(x) + k h_c``, ``k = +1, -1, +2, -2`` on the unit scale of the domain (every other
   choice for a categorical one) the first time the leading family looks at ``c``, and two
   (``k = +1, -1``) for a revisit or for a family that trails in the race. A result that beats the
   family's incumbent by more than ``min_gain`` (trial noise makes a smaller "gain" a coin toss)
   moves the incumbent at once; a line that closes without a move from the incumbent it started
   at shrinks ``h_c`` (``h <- shrink h``) down to ``min_step``, where a line without gain settles
   ``c`` until the incumbent moves; a move to the farthest point on its side grows ``h_c`` back
   (``h <- h / shrink``, at most ``initial_step``).
4. **Coupled coordinates are revisited.** The balance weight (``loss.lambda``) is coupled with
   every other coordinate: when any coordinate moves, ``lambda`` is unsettled and its step reset to
   at least ``initial_step / 2``; when ``lambda`` moves, the loss's other numeric parameters
   (temperature, margins, ...) are, because their optimum moves with the balance.
5. **Every slot busy.** A free slot gets the next point of an open line; if none is left, a new
   line opens on another unsettled coordinate of the same incumbent, or of another alive family.
   A point is built when it is handed out, from its family's incumbent at that moment, so a move
   reaches the points not yet handed out. (``fill_slots=False`` waits for each line instead, as
   plain coordinate descent does: fewer points from an incumbent about to move, idle slots.)
6. **Stopped trials are fair.** ``tell(key, value, complete=False)`` (a trial ASHA stopped early)
   records the value but never lets a truncated trial become an incumbent or win a line: it
   counts as worse than the fully trained incumbent it is compared with.

**Start points.** A family starts at the first of the space's ``start_points`` that lies in it
(a start point says nothing of the other families, which start at their domains' starts). With
several start points the search runs inside a :class:`~tuneddml.searchers.warm_start.WarmStart`:
every start point is evaluated first, in order, and :meth:`BalanceSearch.observe` makes each
family's best one its incumbent; a family whose start point was evaluated so explores a Sobol
point in its place.

When every coordinate of every alive family is settled or has its line in flight and budget is
left, a free slot gets a further exploration point in an alive family. The
search ends (:data:`FINISHED`) when ``max_trials`` points have been handed out, or, without a
budget, when every coordinate of every alive family is settled. Failed, diverged, NaN or inf results count as the
worst value. :meth:`state_dict` is plain JSON data; :meth:`load_state_dict` continues exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tuneddml.searchers import CORE_RUNTIME, SEARCHERS
from tuneddml.searchers.coordinate_descent import FINISHED, Ask, score_of
from tuneddml.searchers.space import SearchSpace, config_key

BALANCE_KEY = "loss.lambda"


@dataclass(frozen=True)
class BalanceOptions:
    """Options of :class:`BalanceSearch` (see the module docstring)."""

    line_points: int = 4
    explore: float = 0.1  # share of the budget for exploration (at least one point per family)
    initial_step: float = 0.25
    shrink: float = 0.5
    min_step: float = 1 / 32
    min_gain: float = 0.0  # a move must beat the incumbent by more than this (metric units)
    family: str | None = None  # the family coordinate; None: found from the space
    fill_slots: bool = True  # False: wait for a line's results before the next (as coordinate descent)

    def check(self) -> None:
        if self.line_points < 1 or not 0 < self.shrink < 1 or not 0 < self.min_step <= self.initial_step <= 1:
            raise ValueError("need line_points >= 1, 0 < shrink < 1 and 0 < min_step <= initial_step <= 1")
        if not 0 <= self.explore < 1 or self.min_gain < 0:
            raise ValueError("need 0 <= explore < 1 and min_gain >= 0")


def family_coordinate(space: SearchSpace) -> str | None:
    """The first categorical domain that other domains' ``when`` conditions name, else None."""
    depended = {key for d in space.domains for key, _ in d.when}
    return next((d.name for d in space.domains if not d.numeric and d.key in depended), None)


@SEARCHERS.register(
    "balance",
    runtime=CORE_RUNTIME,
    summary="explore, race the loss families by successive halving, refine each by coordinate "
    "descent with coupled coordinates revisited; keeps every slot busy",
)
class BalanceSearch:
    """Ask/tell balance search; see the module docstring for the algorithm."""

    starts_at_start_point = True  # its first point is the space's start point (see .warm_start)

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        mode: Literal["max", "min"] | None = None,
        max_trials: int | None = None,
        options: BalanceOptions | None = None,
    ) -> None:
        self.space = space
        self.seed = seed
        self.mode = mode or space.mode
        self.max_trials = max_trials
        self.options = options or BalanceOptions()
        self.options.check()
        self._domains = {d.name: d for d in space.domains}
        self._names = [d.name for d in space.domains]
        fam = self.options.family or family_coordinate(space)
        if fam is not None and fam not in self._domains:
            raise ValueError(f"family coordinate {fam!r} is not a domain of the space")
        self._family_key = fam
        start = space.start_point()
        defaults = {d.name: d.start for d in space.domains}
        # a family starts at the first of the space's start points in it, else at the domains' starts
        starts = [{**defaults, **space.names_of(config)} for config in space.start_points]
        choices = list(self._domains[fam].choices) if fam else [None]
        if fam is not None:  # the start value's family first
            choices.sort(key=lambda c: c != start[fam])
        self._families: list[dict[str, Any]] = []
        for i, choice in enumerate(choices):
            own = next((p for p in starts if fam is not None and p[fam] == choice), None)
            point = dict(start) if fam is None else dict(own or {**defaults, fam: choice})
            self._families.append(
                {
                    "name": str(choice),
                    "point": point,
                    "score": None,
                    "steps": {d.name: self.options.initial_step for d in space.domains if d.numeric},
                    "settled": {},
                    "version": 0,
                    "cycle": 0,
                    "pos": 0,
                    "order": self._coordinates(point),
                    "lines": 0,
                    "looked": [],  # coordinates that had their first (full) line
                    "alive": True,
                    "explored": 0,
                    "pending": 0,
                    "index": i,
                }
            )
        budget = math.inf if max_trials is None else max_trials
        n_explore = max(len(self._families), round(self.options.explore * budget) if max_trials else 2 * len(self._families))
        self._explore_left = int(min(n_explore, budget))
        self._sobol_index = 0
        self._round = 0  # rounds of successive halving done
        self._lines: dict[str, dict[str, Any]] = {}  # line id -> line
        self._queue: list[tuple[str, int]] = []  # (line id, point index) not handed out yet
        self._trials: dict[str, dict[str, Any]] = {}  # key -> {line, point, cache} of a trial handed out
        self._records: dict[str, float | None] = {}  # config key -> score (None: failed/stopped)
        self._issued = 0
        self._next_line = 0
        #: what the search decided, in words (a family dropped, a move, a step shrunk), for progress
        self.events: list[str] = []

    def _event(self, text: str) -> None:
        self.events.append(f"[trial {self._issued}] {text}")

    # ---- ask / tell -------------------------------------------------------------------------
    def ask(self) -> Ask:
        """``(trial_key, config)``; None while every open line waits for results; FINISHED."""
        if self._budget_left() <= 0:
            return FINISHED
        if not self._queue:
            self._plan()
        if not self._queue:
            return None if self._trials else FINISHED
        line_id, index = self._queue.pop(0)
        line = self._lines[line_id]
        family = self._families[line["family"]]
        point = self._build(line, index, family)
        key = f"t{self._issued:05d}"
        self._issued += 1
        config = self.space.config_of(point)
        self._trials[key] = {"line": line_id, "point": point, "cache": config_key(config)}
        line["issued"].append(key)
        family["pending"] += 1
        return key, config

    def tell(self, trial_key: str, value: float | None, *, complete: bool = True) -> None:
        """The result of a trial handed out by :meth:`ask`. ``complete=False``: stopped early
        (e.g. by ASHA): recorded, but never an incumbent nor a line's winner."""
        if trial_key not in self._trials:
            raise KeyError(f"no pending trial {trial_key!r}")
        trial = self._trials.pop(trial_key)
        line = self._lines[trial["line"]]
        family = self._families[line["family"]]
        family["pending"] -= 1
        score = score_of(value, self.mode) if complete else None
        self._records[trial["cache"]] = score
        line["results"][trial_key] = score
        line["evaluated"][trial_key] = trial["point"]
        if line["kind"] == "explore":
            family["explored"] += 1
            if score is not None and (family["score"] is None or score > family["score"]):
                family["point"], family["score"] = dict(trial["point"]), score
                family["version"] += 1
            del self._lines[trial["line"]]
            self._revive(family)
            self._halve()
        else:
            incumbent = -math.inf if family["score"] is None else family["score"] + self.options.min_gain
            if score is not None and score > incumbent:
                # move at once, so that the points handed out from now on start from here
                self._move(family, line["coordinate"], dict(trial["point"]), score)
                line["moved"].append(trial_key)
                self._revive(family)
            if len(line["results"]) == len(line["points"]):
                self._close(trial["line"], line, family)

    def observe(self, config: dict[str, Any], value: float | None) -> None:
        """A result found outside the search (a warm start point, :mod:`.warm_start`; before the
        first ask): recorded, and its family's incumbent if it beats it. A family whose start point
        was observed explores a Sobol point in its place."""
        named = self.space.names_of(config)
        fam = self._family_key
        family = next((f for f in self._families if fam is None or f["point"][fam] == named.get(fam)), None)
        point = {**(family or self._families[0])["point"], **named}
        score = score_of(value, self.mode)
        self._records[config_key(self.space.config_of(point))] = score
        if family is None:
            return
        family["explored"] += 1
        if score is not None and (family["score"] is None or score > family["score"]):
            family["point"], family["score"] = point, score
            family["version"] += 1

    @property
    def finished(self) -> bool:
        if self._budget_left() <= 0:
            return True
        if not self._queue:
            self._plan()
        return not self._queue and not self._trials

    def best(self) -> tuple[dict[str, Any], float | None]:
        """The best incumbent over the families, in the metric's own sign."""
        scored = [f for f in self._families if f["score"] is not None]
        if not scored:
            return self.space.config_of(self._families[0]["point"]), None
        top = max(scored, key=lambda f: f["score"])
        sign = 1 if self.mode == "max" else -1
        return self.space.config_of(top["point"]), sign * top["score"]

    # ---- planning -----------------------------------------------------------------------------
    def _budget_left(self) -> float:
        return math.inf if self.max_trials is None else self.max_trials - self._issued

    def _plan(self) -> None:
        """Queue the next work: an exploration point, else a new line."""
        if self._explore_left > 0:
            self._explore_left -= 1
            self._open_explore()
            return
        budget = self._budget_left()
        if not self.options.fill_slots and any(line["kind"] == "line" for line in self._lines.values()):
            return  # wait for the open line
        # the race: the alive family with the fewest lines (closed or open) goes first, ties to the best
        opened = {f["index"]: f["lines"] for f in self._families}
        for line in self._lines.values():
            opened[line["family"]] += line["kind"] == "line"
        for family in sorted(self._ranked(), key=lambda f: opened[f["index"]]):
            if family["explored"] == 0 and family["pending"]:
                continue  # its first result decides its incumbent
            name = self._next_coordinate(family)
            if name is not None:
                self._open_line(family, name, int(min(budget, self._line_size(family, name))))
                return
        if self.max_trials is not None:
            # nothing left to refine (every coordinate settled or in flight) but budget remains:
            # restart the leading family's lines at half the initial step, or, if that gives no
            # new point either, explore the alive families further rather than leave a slot idle
            leader = self._ranked()[0]
            busy = any(line["family"] == leader["index"] for line in self._lines.values())
            if leader["settled"] and not busy and leader.get("restarted") != leader["version"]:
                leader["restarted"] = leader["version"]
                self._event(f"{leader['name']}: every coordinate settled, lines restart at step {self.options.initial_step / 2:g}")
                leader["settled"] = {}
                for name in leader["steps"]:
                    leader["steps"][name] = max(leader["steps"][name], self.options.initial_step / 2)
                self._plan()
                return
            self._open_explore(alive_only=True)

    def _open_explore(self, alive_only: bool = False) -> None:
        done = self._sobol_index
        pool = [f for f in self._families if f["alive"]] if alive_only else self._families
        family = pool[done % len(pool)]
        if done < len(self._families) and config_key(self.space.config_of(family["point"])) not in self._records:
            point = dict(family["point"])  # the family's start point (unless observed already)
        else:
            point = self._sobol_point(family)
        self._sobol_index += 1
        self._add_line(family, "explore", None, [point])

    def _sobol_point(self, family: dict[str, Any]) -> dict[str, Any]:
        from scipy.stats import qmc

        dims = len(self._names)
        sampler = qmc.Sobol(d=dims, scramble=True, seed=self.seed)
        if self._sobol_index:
            sampler.fast_forward(self._sobol_index)
        u = sampler.random(1)[0]
        point = dict(family["point"])
        for i, name in enumerate(self._names):
            if name == self._family_key:
                continue
            d = self._domains[name]
            if d.numeric:
                point[name] = d.from_unit(float(u[i]))
            else:
                point[name] = d.choices[min(len(d.choices) - 1, int(u[i] * len(d.choices)))]
        return point

    def _ranked(self) -> list[dict[str, Any]]:
        """Alive families, best first (those without a result last, in file order)."""
        alive = [f for f in self._families if f["alive"]]
        return sorted(alive, key=lambda f: (f["score"] is None, -(f["score"] or 0.0), f["index"]))

    def _coordinates(self, point: dict[str, Any]) -> list[str]:
        return [n for n in self.space.active_names(point) if n != self._family_key]

    def _next_coordinate(self, family: dict[str, Any]) -> str | None:
        """The family's next unsettled coordinate with no open line (cycle order)."""
        active = set(self._coordinates(family["point"]))
        open_coords = {
            line["coordinate"] for line in self._lines.values() if line["family"] == family["index"] and line["coordinate"]
        }
        for _ in range(2 * len(self._names) + 2):
            if family["pos"] >= len(family["order"]):
                family["cycle"] += 1
                family["order"] = self._coordinates(family["point"])
                random.Random(f"{self.seed}:{family['index']}:{family['cycle']}").shuffle(family["order"])
                if BALANCE_KEY in family["order"]:  # the balance leads every cycle
                    family["order"].remove(BALANCE_KEY)
                    family["order"].insert(0, BALANCE_KEY)
                family["pos"] = 0
            name = family["order"][family["pos"]]
            family["pos"] += 1
            if name in active and name not in open_coords and not self._is_settled(family, name):
                if self._values(family, name):
                    return name
                self._no_gain(family, name)
        return None

    def _values(self, family: dict[str, Any], name: str) -> list[tuple[Any, int]]:
        """The line's new values of coordinate ``name`` around the family's incumbent, each with
        its offset in steps (0 for a categorical choice)."""
        domain, point = self._domains[name], family["point"]
        current = point[name]
        out: list[tuple[Any, int]] = []

        def fresh(value: Any) -> bool:
            key = config_key(self.space.config_of({**point, name: value}))
            return value != current and all(value != v for v, _ in out) and key not in self._records

        if not domain.numeric:
            return [(c, 0) for c in domain.choices if fresh(c)]
        u0, step = domain.to_unit(current), family["steps"][name]
        for k in range(1, self.options.line_points + 1):
            for offset in (k, -k):
                value = domain.from_unit(u0 + offset * step)
                if domain.kind == "int" and value == current:
                    value = int(min(domain.high, max(domain.low, current + (1 if offset > 0 else -1))))
                if fresh(value):
                    out.append((value, offset))
        return out

    def _line_size(self, family: dict[str, Any], name: str) -> int:
        """``line_points`` for a coordinate's first line in the leading family; 2 (one step either
        side) for a revisit, and for a family that trails in the race (a probe, not a survey)."""
        if name in family["looked"] or family is not self._ranked()[0]:
            return min(2, self.options.line_points)
        return self.options.line_points

    def _open_line(self, family: dict[str, Any], name: str, size: int) -> None:
        if family is self._ranked()[0] and name not in family["looked"]:
            family["looked"].append(name)
        values = self._values(family, name)[: max(1, size)]
        self._add_line(family, "line", name, [{name: v} for v, _ in values])
        self._lines[f"l{self._next_line - 1:05d}"]["offsets"] = [o for _, o in values]

    def _add_line(self, family: dict[str, Any], kind: str, name: str | None, points: list[dict[str, Any]]) -> None:
        line_id = f"l{self._next_line:05d}"
        self._next_line += 1
        self._lines[line_id] = {
            "kind": kind,
            "family": family["index"],
            "coordinate": name,
            "version": family["version"],
            "points": points,
            "issued": [],
            "results": {},
            "evaluated": {},
            "moved": [],  # keys of its points that moved the incumbent, in order
        }
        self._queue.extend((line_id, i) for i in range(len(points)))

    def _build(self, line: dict[str, Any], index: int, family: dict[str, Any]) -> dict[str, Any]:
        if line["kind"] == "explore":
            return dict(line["points"][index])
        return {**family["point"], **line["points"][index]}  # from the incumbent as it is now

    # ---- results ------------------------------------------------------------------------------
    def _close(self, line_id: str, line: dict[str, Any], family: dict[str, Any], halve: bool = True) -> None:
        """All of a line's results are in (moves happened as they came): adapt its step."""
        del self._lines[line_id]
        family["lines"] += 1
        name = line["coordinate"]
        if not line["moved"]:
            if line["version"] == family["version"]:  # no gain from the incumbent it started at
                self._no_gain(family, name)
        else:
            offsets = line.get("offsets") or []
            offset = offsets[line["issued"].index(line["moved"][-1])] if offsets else 0
            same_side = [abs(o) for o in offsets if o * offset > 0]
            if offset and abs(offset) == max(same_side) and name in family["steps"]:
                # the best point was the farthest on its side: the optimum may lie beyond
                family["steps"][name] = min(self.options.initial_step, family["steps"][name] / self.options.shrink)
        if halve:
            self._halve()

    def _move(self, family: dict[str, Any], name: str, point: dict[str, Any], score: float) -> None:
        self._event(
            f"{family['name']}: {name} {family['point'].get(name)} -> {point.get(name)} "
            f"({self._shown(family['score'])} -> {self._shown(score)})"
        )
        family["point"], family["score"] = point, score
        family["version"] += 1
        family["settled"].pop(name, None)
        coupled = [BALANCE_KEY] if name != BALANCE_KEY else [
            n for n in self._coordinates(point) if n.startswith("loss.") and self._domains[n].numeric and n != name
        ]
        for other in coupled:
            if other in family["steps"]:
                family["steps"][other] = max(family["steps"][other], self.options.initial_step / 2)
                family["settled"].pop(other, None)

    def _no_gain(self, family: dict[str, Any], name: str) -> None:
        step = family["steps"].get(name)
        if step is None or step <= self.options.min_step:
            family["settled"][name] = family["version"]
            self._event(f"{family['name']}: {name} settled")
        else:
            family["steps"][name] = max(self.options.min_step, step * self.options.shrink)
            self._event(f"{family['name']}: {name} no gain, step {step:g} -> {family['steps'][name]:g}")

    def _is_settled(self, family: dict[str, Any], name: str) -> bool:
        return family["settled"].get(name) == family["version"]

    def _halve(self) -> None:
        """Successive halving of the families after the exploration and after each round."""
        alive = [f for f in self._families if f["alive"]]
        if len(alive) <= 1 or any(f["explored"] == 0 for f in alive) or self._explore_left > 0:
            return
        if any(line["kind"] == "explore" for line in self._lines.values()):
            return
        if min(f["lines"] for f in alive) < self._round:
            return
        ranked = self._ranked()
        leader = ranked[0]["score"]
        keep = math.ceil(len(ranked) / 2)
        for f in ranked[keep:]:
            if f["score"] is None or leader is None or f["score"] < leader - self.options.min_gain:
                f["alive"] = False
                self._event(f"family {f['name']} dropped ({self._shown(f['score'])}; leader {self._shown(leader)})")
                self._drop_queued(f)
        self._round += 1

    def _drop_queued(self, family: dict[str, Any]) -> None:
        """A dropped family's points not handed out yet are withdrawn; its lines keep what ran."""
        mine = {lid for lid, line in self._lines.items() if line["family"] == family["index"]}
        self._queue = [q for q in self._queue if q[0] not in mine]
        for line_id in mine:
            line = self._lines[line_id]
            line["points"] = line["points"][: len(line["issued"])]
            if not line["issued"]:
                del self._lines[line_id]
            elif len(line["results"]) == len(line["points"]):
                self._close(line_id, line, family, halve=False)

    def _revive(self, family: dict[str, Any]) -> None:
        alive = [f["score"] for f in self._families if f["alive"] and f["score"] is not None]
        if not family["alive"] and family["score"] is not None and alive and family["score"] > max(alive):
            family["alive"] = True
            self._event(f"family {family['name']} back ({self._shown(family['score'])})")

    def _shown(self, score: float | None) -> str:
        if score is None:
            return "no fully trained trial"
        return f"{score if self.mode == 'max' else -score:.4f}"

    # ---- save / restore ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the search, as JSON-serialisable data."""
        return {
            "names": self._names,
            "options": asdict(self.options),
            "seed": self.seed,
            "mode": self.mode,
            "max_trials": self.max_trials,
            "families": self._families,
            "explore_left": self._explore_left,
            "sobol_index": self._sobol_index,
            "round": self._round,
            "lines": self._lines,
            "queue": [list(q) for q in self._queue],
            "trials": self._trials,
            "records": self._records,
            "issued": self._issued,
            "next_line": self._next_line,
            "events": self.events,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["names"] != self._names:
            raise ValueError(f"state of a different space: {state['names']} != {self._names}")
        self.options = BalanceOptions(**state["options"])
        self.seed, self.mode, self.max_trials = state["seed"], state["mode"], state["max_trials"]
        self._families = [dict(f) for f in state["families"]]
        self._explore_left, self._sobol_index = state["explore_left"], state["sobol_index"]
        self._round, self._lines = state["round"], {k: dict(v) for k, v in state["lines"].items()}
        self._queue = [(q[0], int(q[1])) for q in state["queue"]]
        self._trials = {k: dict(v) for k, v in state["trials"].items()}
        self._records, self._issued, self._next_line = dict(state["records"]), state["issued"], state["next_line"]
        self.events = list(state.get("events", []))
