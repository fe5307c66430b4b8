"""Short, readable names for trials: what a trial was, in the words of the search that ran it.

One place builds them, so the console's progress lines, the MLflow child runs' names and the
report's tables say the same thing: ``t03 supcon lambda=0.50 temperature=0.10``: the trial's
1-based start order, its loss, then each setting the search varies that the trial has (a
conditional setting it lacks is left out), by the last part of its key (``loss.lambda`` ->
``lambda``; the whole key where two settings would share a short name).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

LOSS = "loss"


def trial_index(experiment_tag: str | None) -> int | None:
    """A Ray trial's 1-based start order, from its ``experiment_tag`` (``"3_loss=supcon,..."``)."""
    head = (experiment_tag or "").split("_", 1)[0]
    return int(head) if head.isdigit() else None


def format_value(value: Any) -> str:
    """A setting's value in a few characters: 0.5 -> ``0.50``, 0.0123 -> ``0.0123``, 64 -> ``64``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if 0.1 <= abs(value) < 100:
        return f"{value:.2f}"
    return f"{value:.3g}"


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """Each key's short name: its last dotted part, or the whole key where that part is shared."""
    keys = list(keys)
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def varied_values(config: Mapping[str, Any], searched: Sequence[str]) -> dict[str, Any]:
    """The searched settings the trial has, loss first, by short name."""
    keys = [k for k in searched if k != LOSS and k in config and config[k] is not None]
    names = short_names(keys)
    return {names[k]: config[k] for k in keys}


def trial_label(config: Mapping[str, Any], searched: Sequence[str], index: int | None = None) -> str:
    """``t03 supcon lambda=0.50 temperature=0.10`` (see the module docstring); ``index`` 1-based."""
    parts = [f"t{index:02d}"] if index is not None else []
    if config.get(LOSS) is not None:
        parts.append(str(config[LOSS]))
    parts += [f"{k}={format_value(v)}" for k, v in varied_values(config, searched).items()]
    return " ".join(parts)
