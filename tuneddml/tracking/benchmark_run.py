"""A benchmark in MLflow (:class:`BenchmarkRun`): one parent run per benchmark and one child run
per loss, in one experiment; each loss's search nests its own parent run (and so its trials)
under the loss's child (``tags.mlflow.parentRunId``), so the MLflow UI shows the tree
benchmark -> loss -> search -> trials.

The parent gets the benchmark's settings, the leaderboard files and figure, and the measured noise;
each loss's child its best configuration (``best.<key>`` parameters), its leaderboard row (test
mean and 95% interval of each metric, separated and concatenated, the validation value, the p-value
against the best loss) and a link to its search's parent run.

The runs are made at the benchmark's start and found again by their ids on ``--resume``; a store
that cannot be reached at the end costs only the MLflow copy (the files on disk are complete).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneddml.tracking.mlflow_store import client, experiment_id, log_metrics, log_params

BENCHMARK_TAG = "tuneddml.benchmark"
LOSS_TAG = "tuneddml.loss"
SEARCH_RUN_TAG = "tuneddml.search_run_id"  # on a loss's child: its search's parent run
PARENT_TAG = "mlflow.parentRunId"


class BenchmarkRun:
    """The benchmark's parent run and its losses' child runs (ids kept in ``benchmark.json``)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, loss_runs: Mapping[str, str]) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.loss_runs = dict(loss_runs)

    @classmethod
    def start(
        cls, uri: str, experiment: str, name: str, losses: Sequence[str], params: Mapping[str, Any]
    ) -> BenchmarkRun:
        mlflow = client(uri)
        exp_id = experiment_id(mlflow, experiment)
        parent = mlflow.create_run(exp_id, run_name=name, tags={BENCHMARK_TAG: name})
        log_params(mlflow, parent.info.run_id, params)
        children = {}
        for loss in losses:
            run = mlflow.create_run(
                exp_id,
                run_name=f"{name} {loss}",
                tags={BENCHMARK_TAG: name, LOSS_TAG: loss, PARENT_TAG: parent.info.run_id},
            )
            children[loss] = run.info.run_id
        return cls(uri, exp_id, parent.info.run_id, children)

    def to_json(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id, "loss_runs": self.loss_runs}

    @classmethod
    def from_json(cls, uri: str, data: Mapping[str, Any]) -> BenchmarkRun:
        return cls(uri, data["experiment_id"], data["parent_run_id"], data["loss_runs"])

    def link_search(self, loss: str, search_run_id: str) -> None:
        """Name the loss's search on its child run."""
        client(self.uri).set_tag(self.loss_runs[loss], SEARCH_RUN_TAG, search_run_id)

    def finish(
        self,
        table: Sequence[Mapping[str, Any]],
        *,
        files: Sequence[Path],
        metrics: Mapping[str, float],
        failed: Sequence[str] = (),
    ) -> None:
        """Log the leaderboard: each loss's row on its child (numbers as metrics, the best
        configuration as ``best.*`` parameters), ``metrics`` and ``files`` on the parent; end the
        runs (a loss without a result: its child FAILED)."""
        import json

        mlflow = client(self.uri)
        for row in table:
            run_id = self.loss_runs.get(str(row["loss"]))
            if run_id is None:
                continue
            numbers = {
                _metric_name(k): float(v)
                for k, v in row.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
            }
            log_metrics(mlflow, run_id, numbers, step=0)
            config = row.get("config")
            if isinstance(config, str):
                config = json.loads(config)
            if isinstance(config, Mapping):
                log_params(mlflow, run_id, {f"best.{k}": v for k, v in config.items()})
            mlflow.set_terminated(run_id, "FINISHED")
        for loss in failed:
            if loss in self.loss_runs:
                mlflow.set_terminated(self.loss_runs[loss], "FAILED")
        log_metrics(mlflow, self.parent_run_id, metrics, step=0)
        for path in files:
            mlflow.log_artifact(self.parent_run_id, str(path))
        mlflow.set_terminated(self.parent_run_id, "FINISHED")


def _metric_name(key: str) -> str:
    """A leaderboard column as an MLflow metric name (MLflow takes letters, digits, _-./ and space)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)
