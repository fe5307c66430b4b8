"""The search's ledger of ended trials (:data:`FINISHED_FILE`, JSON lines in the search's folder):
each trial that ended (finished, stopped early or diverged) with its last record, written by the
driver the moment the trial ends.

Ray's snapshot of the experiment lags the trials by a second or two: a trial that ended just
before the driver was killed is restored as unfinished. On ``--resume`` the trainable is given
this ledger and, for such a trial, reports its recorded result at once instead of training again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FINISHED_FILE = "finished.jsonl"

# what Ray adds to every result; a trial's own record is the rest
RAY_KEYS = frozenset(
    "config trial_id timestamp time_this_iter_s time_total_s pid hostname node_ip time_since_restore "
    "iterations_since_restore training_iteration date done checkpoint_dir_name should_checkpoint "
    "experiment_tag".split()
)


def own_record(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result without Ray's keys: numbers (NaN kept) and strings only."""
    return {
        k: v
        for k, v in result.items()
        if k not in RAY_KEYS and isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }


def config_key(config: Mapping[str, Any]) -> str:
    """A trial's settings as one text (the ``_``-prefixed keys Ray adds left out)."""
    return "config:" + json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True, default=str)


def record_ended(
    folder: str | Path, trial_id: str, result: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> None:
    """Append ``trial_id``'s last record (and its settings) to the ledger, on disk before returning."""
    path = Path(folder) / FINISHED_FILE
    item = {"trial_id": trial_id, "result": own_record(result), "config": config_key(config or {})}
    line = json.dumps(item, allow_nan=True, default=str)
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_ended(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Trial id -> its last record, from the ledger (a line cut by a crash is skipped); and
    :func:`config_key` -> the same record, for a trial that ended after Ray's last snapshot and
    that the resumed searcher proposes again under a new id (a trial is seeded: same settings,
    same result)."""
    path = Path(folder) / FINISHED_FILE
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict) and isinstance(item.get("result"), dict):
            record = {k: (math.nan if v is None else v) for k, v in item["result"].items()}
            out[str(item.get("trial_id"))] = record
            if isinstance(item.get("config"), str) and item["config"] != config_key({}):
                out.setdefault(item["config"], record)
    return out
