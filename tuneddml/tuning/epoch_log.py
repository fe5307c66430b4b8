"""The search's per-epoch log (:data:`~tuneddml.results.schema.EPOCHS_FILE`, JSON lines in the
search's folder): every epoch record a trial reports, with its ``trial_id``, appended by the driver
as the results arrive.

The results table keeps one row per trial (its last epoch); the report's learning curves need every
epoch, and the log is where they are without MLflow. A resumed search appends to the same file, so
an epoch a trial repeats after a restore appears twice: :func:`tuneddml.results.table.read_epochs`
keeps the last record of each (trial, epoch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tuneddml.results.schema import EPOCH, EPOCHS_FILE, metric_names, record_values


class EpochLog(Callback):
    """Appends each trial result's record (:func:`~tuneddml.results.schema.record_values`: epoch,
    metrics, loss terms, times, ``diverged``) with its ``trial_id`` to the search's epoch log."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / EPOCHS_FILE
        self.metrics = metric_names()  # once: the evaluation package is slow to import

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = record_values(result, self.metrics)
        if EPOCH not in record:  # not one of the trainable's epoch records
            return
        line = json.dumps({"trial_id": trial.trial_id, **record})
        with open(self.path, "a") as handle:  # appended and flushed: a killed driver loses no epoch
            handle.write(line + "\n")
            handle.flush()
