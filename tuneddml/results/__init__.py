"""The one owner of a search's results: the per-epoch record, the results table, its files.

:mod:`.schema` says what the record and the table hold and how files are named; :mod:`.table`
writes and reads the table. The driver produces results through these; the report and the plots
only present them.
"""

from __future__ import annotations

from typing import Any

from tuneddml.results.schema import (
    BEST,
    CONFIG,
    DIVERGED,
    EPOCH,
    ERROR,
    EVAL_SECONDS,
    METRIC,
    NODE,
    REPORT_FOLDER,
    RESULTS_FILE,
    RUNS_FOLDER,
    SEARCH_FILE,
    STATUSES,
    TERM,
    TIME,
    TRAIN_SECONDS,
    best_row,
    best_value,
    diverged_record,
    epoch_record,
    final_values,
    metric_names,
    record_values,
    row_config,
    row_metrics,
    trial_row,
    trial_status,
)

#: names of :mod:`.table`, loaded on first use: the table needs pandas and pyarrow, which a trial
#: (that only builds records) should not pay for
_TABLE = (
    "Location",
    "Results",
    "Source",
    "config_column",
    "find_results",
    "is_numeric",
    "load_results",
    "log_scaled",
    "most_common",
    "present_config",
    "read_results",
    "score_column",
    "scores",
    "varied_params",
    "write_results",
)


def __getattr__(name: str) -> Any:
    if name in _TABLE:
        from tuneddml.results import table

        return getattr(table, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BEST",
    "CONFIG",
    "DIVERGED",
    "EPOCH",
    "ERROR",
    "EVAL_SECONDS",
    "METRIC",
    "NODE",
    "REPORT_FOLDER",
    "RESULTS_FILE",
    "RUNS_FOLDER",
    "SEARCH_FILE",
    "STATUSES",
    "TERM",
    "TIME",
    "TRAIN_SECONDS",
    "Location",
    "Results",
    "Source",
    "best_row",
    "best_value",
    "config_column",
    "diverged_record",
    "epoch_record",
    "final_values",
    "find_results",
    "is_numeric",
    "load_results",
    "log_scaled",
    "metric_names",
    "most_common",
    "present_config",
    "read_results",
    "record_values",
    "row_config",
    "row_metrics",
    "score_column",
    "scores",
    "trial_row",
    "trial_status",
    "varied_params",
    "write_results",
]
