"""Everything tuneddml writes to MLflow.

Layout: one experiment per search space; one parent run per search (space, searcher, budget,
project version, best result); one child run per trial (``tags.mlflow.parentRunId``) with every
config parameter, per-epoch metrics and loss terms (step = epoch), final metrics, a ``status`` tag
(finished, stopped_early, diverged, failed) and the trial's best checkpoint as an artifact.

Child runs are created from the Ray Tune driver by :class:`MlflowTrialLogger`, keyed by the trial
id: a retried or resumed trial finds its run again and never makes a second one.
"""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneddml.errors import ConfigError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# the sqlite store's schema-migration chatter is not the user's business
import logging

logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

TRIAL_TAG = "tuneddml.trial_id"
STATUS_TAG = "tuneddml.status"
SEARCH_TAG = "tuneddml.search"


def default_tracking_uri(folder: str | Path = ".") -> str:
    """The embedded default: a sqlite store in the working folder."""
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str) -> None:
    """Raise ConfigError unless ``uri`` is usable; cheap, and before Ray or MLflow start."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if path is None or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise ConfigError("--tracking-uri", uri, "sqlite:///PATH/mlflow.db in a writable folder")
        return
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status >= 400:
                    raise OSError(response.status)
        except (OSError, urllib.error.URLError) as exc:
            raise ConfigError("--tracking-uri", uri, f"a reachable MLflow server ({exc})") from None
        return
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        if not (folder.is_dir() or folder.parent.is_dir()):
            raise ConfigError("--tracking-uri", uri, "an existing folder, sqlite:///PATH or http://HOST:PORT")
        return
    raise ConfigError("--tracking-uri", uri, "sqlite:///PATH, http(s)://HOST:PORT or a folder")


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)
    return str(client.create_experiment(name))


def start_search_run(
    uri: str, experiment: str, search_name: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> tuple[str, str]:
    """Create the parent run of a search; returns ``(experiment_id, run_id)``."""
    client = _client(uri)
    experiment_id = _experiment_id(client, experiment)
    run = client.create_run(
        experiment_id,
        run_name=search_name,
        tags={SEARCH_TAG: search_name, **{k: str(v) for k, v in tags.items()}},
    )
    _log_params(client, run.info.run_id, params)
    return experiment_id, run.info.run_id


def finish_search_run(
    uri: str, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str], artifacts: list[Path]
) -> None:
    client = _client(uri)
    _log_metrics(client, run_id, metrics, step=0)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    for path in artifacts:
        if path.exists():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")


def _log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def _log_metrics(client: Any, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])


def trial_status(result: Mapping[str, Any] | None, epochs: int, errored: bool) -> str:
    """finished, stopped_early (by the scheduler), diverged or failed."""
    if errored:
        return "failed"
    if not result:
        return "failed"
    if result.get("diverged"):
        return "diverged"
    return "finished" if int(result.get("epoch", 0)) >= epochs else "stopped_early"


class MlflowTrialLogger:
    """A Ray Tune callback (driver side) that mirrors every trial into a child run.

    Picklable: the MLflow client is made lazily, so ``Tuner.restore`` can bring it back.
    """

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, metric: str, mode: str) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric
        self.mode = mode
        self._client_obj: Any = None
        self.run_ids: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client_obj"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = _client(self.uri)
        return self._client_obj

    def run_for(self, trial_id: str, config: Mapping[str, Any], known_trials: Iterable[str] = ()) -> str:
        """The child run of ``trial_id``: found again if it exists, else created.

        A trial that had started when the driver died, but after Ray's last snapshot of the
        experiment, is unknown to the resumed search, which runs its configuration again under a
        new trial id. Its child run (still "running", same parameters, trial id not among
        ``known_trials``) is adopted by the new trial rather than left beside a second one.
        """
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        parent = f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"{parent} and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1,
        )
        if not found:
            known = set(known_trials) | {trial_id}
            wanted = {str(k): str(v)[:6000] for k, v in config.items()}
            lost = self.client.search_runs(
                [self.experiment_id], filter_string=f"{parent} and tags.`{STATUS_TAG}` = 'running'"
            )
            found = [r for r in lost if r.data.tags.get(TRIAL_TAG) not in known and r.data.params == wanted][
                :1
            ]
            if found:
                self.client.set_tag(
                    found[0].info.run_id, "tuneddml.lost_trial_id", found[0].data.tags[TRIAL_TAG]
                )
                self.client.set_tag(found[0].info.run_id, TRIAL_TAG, trial_id)
        if found:
            run_id = found[0].info.run_id
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"trial-{trial_id}",
                tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial_id, STATUS_TAG: "running"},
            )
            run_id = run.info.run_id
            _log_params(self.client, run_id, config)
        self.run_ids[trial_id] = run_id
        return run_id

    def log_epoch(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        run_id = self.run_for(trial_id, config)
        step = int(result.get("epoch", 0))
        _log_metrics(self.client, run_id, {k: v for k, v in result.items() if _is_trial_metric(k)}, step)

    def finish(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        result: Mapping[str, Any] | None,
        status: str,
        checkpoint_dir: str | None,
        error: str | None = None,
    ) -> None:
        run_id = self.run_for(trial_id, config)
        self.client.set_tag(run_id, STATUS_TAG, status)
        if error:
            self.client.set_tag(run_id, "tuneddml.error", error[:5000])
        if result:
            final = {f"final/{k}": v for k, v in result.items() if _is_trial_metric(k) and "/" not in k}
            _log_metrics(self.client, run_id, final, step=int(result.get("epoch", 0)))
        if checkpoint_dir and Path(checkpoint_dir).is_dir():
            self.client.log_artifacts(run_id, checkpoint_dir, artifact_path="best_checkpoint")
        elif checkpoint_dir:  # on a cluster's shared storage: point at it rather than copy it
            self.client.set_tag(run_id, "tuneddml.best_checkpoint", checkpoint_dir)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")


_NOT_METRICS = {
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    "training_iteration",
    "pid",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "trial_id",
    "date",
    "hostname",
    "node_ip",
    "checkpoint_dir_name",
    "should_checkpoint",
}


def _is_trial_metric(key: str) -> bool:
    return key not in _NOT_METRICS and not key.startswith("config")
