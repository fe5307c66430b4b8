"""The rows of a multi-fidelity search's rungs: the configurations promoted from one rung to the
next (:func:`promoted`: the best ``k``, one per configuration, through
:func:`~tuneddml.results.fidelity.promote`), as the next rung's start points (:func:`point_of`), and
each promoted trial matched to its cheap ancestor (:func:`ancestor_links`, on the searched keys by
:func:`~tuneddml.results.fidelity.config_key`). No Ray, no MLflow: results tables in, rows out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def read_rows(search_folder: Path) -> list[dict[str, Any]]:
    """A search's results table as rows (empty when it wrote none)."""
    import pyarrow.parquet as pq

    from tuneddml.results import RESULTS_FILE

    path = search_folder / RESULTS_FILE
    return pq.read_table(path).to_pylist() if path.is_file() else []


def _usable(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def point_of(row: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """A results row's searched settings, as a start point (an inactive conditional key left out)."""
    from tuneddml.results import CONFIG

    return {k: row[f"{CONFIG}{k}"] for k in keys if _usable(row.get(f"{CONFIG}{k}"))}


def promoted(rows: list[dict[str, Any]], keys: list[str], metric: str, mode: str, k: int | None) -> list[dict[str, Any]]:
    """The best ``k`` configurations' rows (all with ``k=None``), best first, one row per
    configuration (its best trial's)."""
    from tuneddml.results.fidelity import config_key, promote

    out: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for row in promote(rows, metric, mode, len(rows)):
        key = config_key(row, keys)
        if key not in seen:
            seen.add(key)
            out.append(row)
        if k is not None and len(out) == k:
            break
    return out


def ancestor_links(
    previous: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    keys: list[str],
    metric: str,
    mode: str,
    rung: int,
    fidelity: str,
) -> list[dict[str, Any]]:
    """Each trial of rung ``rung`` matched to the run of the same configuration (on the searched
    ``keys``) a rung before: its best such trial's. A trial whose configuration the rung before
    lacks is left out; a run id the table lacks (MLflow was down) is None, found later by the
    trial's id (:meth:`~tuneddml.tracking.multifidelity_run.MultiFidelityRun.link`)."""
    from tuneddml.results.fidelity import config_key

    ancestors = {config_key(row, keys): row for row in promoted(previous, keys, metric, mode, None)}
    links = []
    for row in rows:
        ancestor = ancestors.get(config_key(row, keys))
        if not ancestor:
            continue
        links.append(
            {
                "run_id": row.get("mlflow_run_id") or None,
                "trial": row.get("trial_id"),
                "ancestor_run_id": ancestor.get("mlflow_run_id") or None,
                "ancestor_trial": ancestor.get("trial_id"),
                "rung": rung,
                "fidelity": fidelity,
            }
        )
    return links


def count_configs(rows: list[dict[str, Any]], keys: list[str]) -> int:
    """How many configurations ``rows`` hold."""
    from tuneddml.results.fidelity import config_key

    return len({config_key(r, keys) for r in rows})


def best_of(rows: list[dict[str, Any]], keys: list[str], metric: str, mode: str) -> dict[str, Any]:
    from tuneddml.results import BEST

    top = promoted(rows, keys, metric, mode, 1)
    if not top:
        return {"config": None, "value": None, "trial": None}
    return {"config": point_of(top[0], keys), "value": top[0].get(f"{BEST}{metric}"), "trial": top[0].get("trial_id")}
