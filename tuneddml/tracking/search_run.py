"""Everything a search writes to MLflow, through one object: :class:`SearchRun`.

Layout: one experiment per search space; one parent run per search (space, searcher, budget,
project version, best result, best config, results table, report figures); one child run per
trial (``tags.mlflow.parentRunId``) with every config parameter, the per-epoch record's values
(metrics, loss terms, times; step = epoch), its final values (``final/<key>``), a ``status`` tag
(finished, stopped_early, diverged, failed) and the trial's best checkpoint as an artifact.

A search touches MLflow at three moments: :meth:`SearchRun.start` (the parent run), the trials
(:meth:`~SearchRun.trial_run`, :meth:`~SearchRun.log_epoch`, :meth:`~SearchRun.finish_trial`,
called by the driver's Ray callback), and :meth:`~SearchRun.finish`. Child runs are keyed by the
trial id: a retried or resumed trial finds its run again and never makes a second one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.results import final_values, record_values
from tuneddml.tracking.mlflow_store import check_tracking_uri, client, experiment_id, log_metrics, log_params

TRIAL_TAG = "tuneddml.trial_id"
STATUS_TAG = "tuneddml.status"
SEARCH_TAG = "tuneddml.search"


class SearchRun:
    """A search's parent run and its trials' child runs.

    Picklable (the MLflow client is made lazily), so ``Tuner.restore`` can bring back the callback
    that holds it.
    """

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._client_obj: Any = None
        self.run_ids: dict[str, str] = {}  # trial id -> child run id

    @classmethod
    def start(
        cls, uri: str, experiment: str, search_name: str, *, tags: Mapping[str, Any], params: Mapping[str, Any]
    ) -> SearchRun:
        """Create the parent run of a new search in experiment ``experiment``."""
        mlflow = client(uri)
        exp_id = experiment_id(mlflow, experiment)
        run = mlflow.create_run(
            exp_id, run_name=search_name, tags={SEARCH_TAG: search_name, **{k: str(v) for k, v in tags.items()}}
        )
        log_params(mlflow, run.info.run_id, params)
        found = cls(uri, exp_id, run.info.run_id)
        found._client_obj = mlflow
        return found

    @classmethod
    def attach(cls, uri: str, parent_run_id: str, experiment_id: str | None = None) -> SearchRun:
        """The search whose parent run is ``parent_run_id``; ConfigError if the store lacks it."""
        from mlflow.exceptions import MlflowException

        check_tracking_uri(uri)
        mlflow = client(uri)
        try:
            run = mlflow.get_run(parent_run_id)
        except MlflowException as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                "--tracking-uri", uri, f"a tracking store holding run {parent_run_id} ({message})"
            ) from None
        found = cls(uri, experiment_id or run.info.experiment_id, parent_run_id)
        found._client_obj = mlflow
        return found

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client_obj"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = client(self.uri)
        return self._client_obj

    # ---- trials -----------------------------------------------------------------------------
    def trial_run(self, trial_id: str, config: Mapping[str, Any], known_trials: Iterable[str] = ()) -> str:
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
            found = [r for r in lost if r.data.tags.get(TRIAL_TAG) not in known and r.data.params == wanted][:1]
            if found:
                self.client.set_tag(found[0].info.run_id, "tuneddml.lost_trial_id", found[0].data.tags[TRIAL_TAG])
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
            log_params(self.client, run_id, config)
        self.run_ids[trial_id] = run_id
        return run_id

    def log_epoch(self, trial_id: str, config: Mapping[str, Any], record: Mapping[str, Any]) -> None:
        """One epoch's record (:mod:`tuneddml.results.schema`), at step = its epoch."""
        run_id = self.trial_run(trial_id, config)
        log_metrics(self.client, run_id, record_values(record), int(record.get("epoch", 0)))

    def finish_trial(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        record: Mapping[str, Any] | None,
        status: str,
        checkpoint_dir: str | None,
        error: str | None = None,
    ) -> None:
        """The trial's status, final values (``final/<key>``) and best checkpoint; the run ends."""
        run_id = self.trial_run(trial_id, config)
        self.client.set_tag(run_id, STATUS_TAG, status)
        if error:
            self.client.set_tag(run_id, "tuneddml.error", error[:5000])
        if record:
            final = {f"final/{k}": v for k, v in final_values(record).items()}
            log_metrics(self.client, run_id, final, step=int(record.get("epoch", 0)))
        if checkpoint_dir and Path(checkpoint_dir).is_dir():
            self.client.log_artifacts(run_id, checkpoint_dir, artifact_path="best_checkpoint")
        elif checkpoint_dir:  # on a cluster's shared storage: point at it rather than copy it
            self.client.set_tag(run_id, "tuneddml.best_checkpoint", checkpoint_dir)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    # ---- the parent run ---------------------------------------------------------------------
    def log_files(self, paths: Sequence[Path], artifact_path: str | None = None) -> None:
        """Files as artifacts of the parent run (under ``artifact_path``)."""
        for path in paths:
            if path.exists():
                self.client.log_artifact(self.parent_run_id, str(path), artifact_path=artifact_path)

    def finish(
        self,
        *,
        metrics: Mapping[str, float],
        tags: Mapping[str, Any],
        best_config: Mapping[str, Any] | None,
        files: Sequence[Path],
        report: tuple[str, Sequence[Path]] | None = None,
    ) -> None:
        """The search's outcome: its metrics and tags, ``best_config.json``, ``files`` (the results
        table) and ``report`` (``(folder, figures)``); the parent run ends."""
        if best_config is not None:
            self.client.log_dict(self.parent_run_id, dict(best_config), "best_config.json")
        if report is not None:
            self.log_files(report[1], report[0])
        log_metrics(self.client, self.parent_run_id, metrics, step=0)
        for key, value in tags.items():
            self.client.set_tag(self.parent_run_id, key, str(value))
        self.log_files(files)
        self.client.set_terminated(self.parent_run_id, "FINISHED")
