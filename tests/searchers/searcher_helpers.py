"""Shared helpers of the searcher tests: spaces from YAML text, and a loop that drives an ask/tell core."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneddml.searchers.coordinate_descent import FINISHED
from tuneddml.searchers.space import SearchSpace, load_space


def no_check(flat: dict[str, Any]) -> None:
    """A validator that accepts everything (space structure is still checked)."""


def space_from_text(tmp_path: Path, text: str, name: str = "x", validate: Any = no_check) -> SearchSpace:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return load_space(path, validate=validate)


BOWL = """
    mode: max
    parameters:
      x: {uniform: [-5.0, 5.0], start: -4.0}
      lr: {loguniform: [0.0001, 0.1], start: 0.05}
      k: {int: [1, 64], log: true, start: 2}
"""


def bowl(config: dict[str, Any]) -> float:
    """Maximum 0 at x = 1.3, lr = 3e-3, k = 20 (a quadratic in x, log10 lr and k)."""
    return -(
        (config["x"] - 1.3) ** 2 / 25
        + (math.log10(config["lr"]) - math.log10(3e-3)) ** 2 / 9
        + ((config["k"] - 20) / 63) ** 2
    )


def drive(core: Any, objective: Callable[[dict[str, Any]], Any], max_rounds: int = 10_000) -> list[tuple]:
    """Ask until the core waits, evaluate that batch (as parallel workers would), tell, repeat.

    Returns ``(key, config, value)`` in the order asked."""
    history: list[tuple] = []
    for _ in range(max_rounds):
        batch = []
        while True:
            got = core.ask()
            if got is None or got == FINISHED:
                break
            batch.append(got)
        if not batch:
            assert got == FINISHED, "a core that waits must have results pending"
            return history
        for key, config in batch:
            value = objective(config)
            history.append((key, config, value))
            core.tell(key, value)
    raise AssertionError("did not finish")


def tune_like(searcher, objective, *, max_concurrent: int = 3, limit: int = 500, start: int = 0):
    """Call suggest/on_trial_complete as Tune does: up to ``max_concurrent`` running trials,
    oldest finishing first. Returns the suggested configs in order."""
    running: list[tuple[str, dict]] = []
    suggested = []
    n = start
    while n < limit:
        got = searcher.suggest(f"trial_{n}") if len(running) < max_concurrent else None
        if isinstance(got, dict):
            running.append((f"trial_{n}", got))
            suggested.append(got)
            n += 1
            continue
        if got == FINISHED and not running:
            break
        assert running, "the searcher waits although nothing runs"
        trial_id, config = running.pop(0)
        searcher.on_trial_complete(trial_id, {searcher.metric: objective(config)})
    return suggested
