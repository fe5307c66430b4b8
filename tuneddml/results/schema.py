"""The schema of a search's results: the per-epoch record a trial reports, the results table's
columns, and the names of the files a search leaves. Everything that writes or reads them (the
trainer, the Ray trainable, MLflow tracking, the driver, the report and its plots) uses these.

**Per-epoch record** (what a trial reports after each epoch, flat, as Ray and MLflow take it):

- ``epoch`` (1-based);
- every key of the evaluator's metrics (:func:`~tuneddml.evaluation.metric_keys`: ``map_at_r``,
  ``recall_at_1``, ...; a metric registered in :data:`~tuneddml.evaluation.METRICS` is one more);
- a cross-validated trial (``cross_validate=true``: one model per fold) reports the mean over its
  fold models under the metric keys themselves, each fold model's under ``fold<i>/<key>``, and with
  ``split=test`` the validation mean under ``val/<key>`` and the fold models' concatenated
  embeddings (the fold ensemble) under ``concat/<key>``;
- ``loss/<term>``: the epoch's mean of each loss term, ``loss/total`` included;
- ``time/train_s``, ``time/eval_s``: the epoch's seconds;
- ``system/cpu_percent``, ``system/rss_mb`` and, on CUDA, ``system/gpu_mem_mb`` (the epoch's peak)
  and ``system/gpu_peak_mb`` (the trial's peak since its start): what the trial's process used
  (sampled in the trial);
- ``diverged`` (0 or 1), ``node_id`` (the Ray node), ``data_digest`` (a digest of the trial's data
  split: which classes and items it trained and was scored on) and ``error`` (a diverged trial's
  message).

**Results table** (``<storage>/<search>/results.parquet``, one row per trial): the search's
``search``, ``space``, ``searcher``, ``metric``, ``mode`` (max|min); the trial's ``trial_id``,
``order`` (0-based start order), ``status`` (:data:`STATUSES`), ``epochs`` (completed),
``seconds``, ``mlflow_run_id``, ``error`` (a failed or diverged trial's message, else null), ``node_id``, ``parent_run_id``; ``config.<key>`` for every setting
the search gave it (null where a trial lacks the key), ``metric.<key>`` for each evaluator metric
of its last epoch, and ``best.<metric>``: the best value of the search metric over its epochs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

RUNS_FOLDER = "tuneddml_runs"  # the default storage folder, in the working folder
RESULTS_FILE = "results.parquet"
SEARCH_FILE = "search.json"  # the search's own record: name, space, searcher, MLflow run, budget
EPOCHS_FILE = "epochs.jsonl"  # every trial's per-epoch record (with trial_id), as the results came
REPORT_FOLDER = "report"  # the report's figures, beside the table and under the parent run

CONFIG = "config."
METRIC = "metric."
BEST = "best."

EPOCH = "epoch"
TERM = "loss/"
TIME = "time/"
SYSTEM = "system/"
DIGEST = "data_digest"
DIVERGED = "diverged"
NODE = "node_id"
ERROR = "error"
TRAIN_SECONDS = TIME + "train_s"
EVAL_SECONDS = TIME + "eval_s"

VALIDATION = "val/"  # a cross-validated test trial's validation metrics (mean over folds)
ENSEMBLE = "concat/"  # the fold models' concatenated embeddings, scored on the test classes
_FOLD_KEY = re.compile(r"^fold\d+/")

STATUSES = ("finished", "stopped_early", "diverged", "failed")


def metric_names() -> set[str]:
    """The evaluator's metric keys (imported lazily: the evaluation package loads faiss)."""
    from tuneddml.evaluation import metric_keys

    return set(metric_keys())


def fold_key(fold: int, key: str) -> str:
    """The key of fold model ``fold``'s value of metric ``key`` in a cross-validated trial's record."""
    return f"fold{fold}/{key}"


def is_metric_key(key: str, names: set[str]) -> bool:
    """Whether ``key`` is a metric of a record: one of ``names``, or one of them under a
    cross-validated trial's part (``val/``, ``concat/``, ``fold<i>/``)."""
    if key in names:
        return True
    for prefix in (VALIDATION, ENSEMBLE):
        if key.startswith(prefix):
            return key[len(prefix) :] in names
    match = _FOLD_KEY.match(key)
    return bool(match) and key[match.end() :] in names


def epoch_record(
    epoch: int, metrics: Mapping[str, float], terms: Mapping[str, float], train_seconds: float, eval_seconds: float
) -> dict[str, float]:
    """One epoch's record, without the trainable's ``diverged``/``node_id`` (see the module docstring)."""
    out: dict[str, float] = {EPOCH: epoch, **metrics}
    out.update({f"{TERM}{k}": v for k, v in terms.items()})
    out.update({TRAIN_SECONDS: train_seconds, EVAL_SECONDS: eval_seconds})
    return out


def diverged_record(epoch: int, metric: str, error: str) -> dict[str, Any]:
    """The last record of a trial whose loss diverged: its search metric is NaN."""
    return {EPOCH: epoch, metric: math.nan, DIVERGED: 1, ERROR: error}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def record_values(result: Mapping[str, Any], metrics: Iterable[str] | None = None) -> dict[str, float]:
    """The finite numbers of a record, by key: epoch, metrics, loss terms, times, system usage and
    ``diverged`` (whatever else a scheduler added to the result is left out). ``metrics``: the metric keys
    (default: the evaluator's)."""
    names = metric_names() if metrics is None else set(metrics)
    own = (EPOCH, DIVERGED)
    return {
        k: float(v) if isinstance(v, float) else v
        for k, v in result.items()
        if (k in own or is_metric_key(k, names) or k.startswith((TERM, TIME, SYSTEM))) and _is_number(v)
    }


def final_values(result: Mapping[str, Any], metrics: Iterable[str] | None = None) -> dict[str, float]:
    """The record's values without the per-epoch loss terms, times and system usage: what a trial
    ends with."""
    return {k: v for k, v in record_values(result, metrics).items() if "/" not in k}


def trial_status(result: Mapping[str, Any] | None, epochs: int, errored: bool) -> str:
    """finished, stopped_early (by the scheduler), diverged or failed."""
    if errored or not result:
        return "failed"
    if result.get(DIVERGED):
        return "diverged"
    return "finished" if int(result.get(EPOCH, 0)) >= epochs else "stopped_early"


def best_value(values: Iterable[Any], mode: str) -> float | None:
    """The best of a trial's per-epoch values of the search metric (NaN skipped), or None."""
    present = [float(v) for v in values if v == v and v is not None]
    if not present:
        return None
    return max(present) if mode == "max" else min(present)


def trial_row(
    *,
    search: Mapping[str, Any],
    trial_id: str,
    order: int,
    status: str,
    config: Mapping[str, Any],
    last: Mapping[str, Any],
    best: float | None,
    seconds: float,
    mlflow_run_id: str | None,
    error: str | None = None,
) -> dict[str, Any]:
    """One row of the results table. ``search``: its ``search``, ``space``, ``searcher``, ``metric``,
    ``mode`` and ``parent_run_id``; ``last``: the trial's last record (empty if it reported none)."""
    metric = search["metric"]
    row: dict[str, Any] = {
        "search": search["search"],
        "space": search["space"],
        "searcher": search["searcher"],
        "metric": metric,
        "mode": search["mode"],
        "trial_id": trial_id,
        "order": order,
        "status": status,
        "epochs": int(last.get(EPOCH, 0) or 0),
        "seconds": seconds,
        "mlflow_run_id": mlflow_run_id,
        ERROR: error,
        "node_id": last.get(NODE),
        "parent_run_id": search["parent_run_id"],
        f"{BEST}{metric}": best,
    }
    row.update({f"{CONFIG}{k}": v for k, v in config.items()})
    if status != "failed" and last:
        names = metric_names()
        row.update({f"{METRIC}{k}": float(v) for k, v in last.items() if is_metric_key(k, names)})
    return row


def best_row(rows: Iterable[Mapping[str, Any]], metric: str, mode: str) -> Mapping[str, Any] | None:
    """The row with the best ``best.<metric>`` (None if no trial has one)."""
    scored = [r for r in rows if r.get(f"{BEST}{metric}") is not None]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[f"{BEST}{metric}"])


def row_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's ``config.*`` columns, by setting."""
    return {k.removeprefix(CONFIG): v for k, v in row.items() if k.startswith(CONFIG)}


def row_metrics(row: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """A row's ``metric.*`` columns, by metric, and ``best_<metric>``: the best trial's summary."""
    out = {k.removeprefix(METRIC): v for k, v in row.items() if k.startswith(METRIC)}
    out[f"best_{metric}"] = row[f"{BEST}{metric}"]
    return out
