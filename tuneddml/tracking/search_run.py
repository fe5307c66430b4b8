"""Everything a search writes to MLflow, through one object: :class:`SearchRun`.

Layout: one experiment per search space; one parent run per search (space, searcher, budget,
project version, best result, best config, results table, report figures); one child run per
trial (``tags.mlflow.parentRunId``) with every config parameter, the per-epoch record's values
(metrics, loss terms, times; step = epoch), its final values (``final/<key>``), a ``status`` tag
(finished, stopped_early, diverged, failed), a failed or diverged trial's message
(``tuneddml.error``), where its best checkpoint lies (``tuneddml.checkpoint``) and, for the
search's best trials only, the model's weights (``model/``, weights-only, no optimiser state).

A search touches MLflow at three moments: :meth:`SearchRun.start` (the parent run), the trials
(:meth:`~SearchRun.trial_run`, :meth:`~SearchRun.log_epoch`, :meth:`~SearchRun.finish_trial`),
and :meth:`~SearchRun.finish`. Child runs are keyed by the trial id: a retried or resumed trial
finds its run again and never makes a second one; an epoch or final value a run already holds is
not logged again. During a search the driver hands these over with :meth:`~SearchRun.submit`:
they go to the search's outbox (:mod:`.outbox`) and are sent by a background thread, so an MLflow
outage never blocks the search; what could not be sent stays there for ``python -m tuneddml.sync``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.results import EPOCH, final_values, record_values
from tuneddml.tracking.mlflow_store import check_tracking_uri, client, experiment_id, log_metrics, log_params
from tuneddml.tracking.outbox import Outbox, Sender

TRIAL_TAG = "tuneddml.trial_id"
STATUS_TAG = "tuneddml.status"
SEARCH_TAG = "tuneddml.search"
ERROR_TAG = "tuneddml.error"  # a failed or diverged trial's own message
CHECKPOINT_TAG = "tuneddml.checkpoint"  # where the trial's best checkpoint lies in the storage
WEIGHTS_FOLDER = "model"  # the artifact folder of a best trial's weights

# what a pickled SearchRun leaves behind (the client, and the outbox's sender and its thread)
_LIVE = ("sender",)


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
        self.resumed = False  # a resumed search adopts the runs of trials lost by the kill
        self._created: set[str] = set()  # child runs made by this session
        self._logged: dict[str, set[int]] = {}  # child run -> the epochs it holds
        self._final: dict[str, bool] = {}  # child run -> whether its final values are logged

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
        state = {k: v for k, v in self.__dict__.items() if k not in _LIVE}
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
        new trial id. Its child run (same parameters, trial id not among ``known_trials``; a
        "running" one first) is adopted by the new trial rather than left beside a second one.
        Only a resumed search (:attr:`resumed`) looks for such runs.
        """
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        parent = f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"{parent} and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1,
        )
        if not found and self.resumed:
            known = set(known_trials) | {trial_id}
            wanted = {str(k): str(v)[:6000] for k, v in config.items()}
            lost = self.client.search_runs([self.experiment_id], filter_string=parent, max_results=5000)
            lost = [r for r in lost if r.data.tags.get(TRIAL_TAG) not in known and r.data.params == wanted]
            found = sorted(lost, key=lambda r: r.data.tags.get(STATUS_TAG) != "running")[:1]
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
            self._created.add(run_id)
            log_params(self.client, run_id, config)
        self.run_ids[trial_id] = run_id
        return run_id

    def _seen(self, run_id: str) -> tuple[set[int], bool]:
        """The epochs (steps) run ``run_id`` already holds, and whether it has its final values:
        empty for a run made in this session, else read back from MLflow once."""
        if run_id not in self._logged:
            if run_id in self._created:
                self._logged[run_id], self._final[run_id] = set(), False
            else:
                history = self.client.get_metric_history(run_id, EPOCH)
                self._logged[run_id] = {int(m.step) for m in history}
                metrics = self.client.get_run(run_id).data.metrics
                self._final[run_id] = any(k.startswith("final/") for k in metrics)
        return self._logged[run_id], self._final[run_id]

    def log_epoch(self, trial_id: str, config: Mapping[str, Any], record: Mapping[str, Any]) -> None:
        """One epoch's record (:mod:`tuneddml.results.schema`), at step = its epoch; an epoch the
        run already holds (a resumed trial's repeat) is not logged again."""
        self._log_epoch(trial_id, int(record.get(EPOCH, 0)), record_values(record), config)

    def _log_epoch(self, trial_id: str, epoch: int, values: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        run_id = self.trial_run(trial_id, config)
        logged, _ = self._seen(run_id)
        if epoch in logged:
            return
        log_metrics(self.client, run_id, values, epoch)
        logged.add(epoch)

    def finish_trial(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        record: Mapping[str, Any] | None,
        status: str,
        checkpoint_dir: str | None,
        error: str | None = None,
    ) -> None:
        """The trial's status, final values (``final/<key>``), error message and where its best
        checkpoint lies (a tag; the weights of the search's best trials are logged by
        :meth:`log_weights`); the run ends."""
        final = {f"final/{k}": v for k, v in final_values(record).items()} if record else {}
        self._finish_trial(
            trial_id, status, final, int((record or {}).get(EPOCH, 0)), error, checkpoint_dir, config
        )

    def _finish_trial(
        self,
        trial_id: str,
        status: str,
        final: Mapping[str, Any],
        epoch: int,
        error: str | None,
        checkpoint: str | None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        run_id = self.trial_run(trial_id, config or {})
        self.client.set_tag(run_id, STATUS_TAG, status)
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:5000])
        if checkpoint:
            self.client.set_tag(run_id, CHECKPOINT_TAG, checkpoint)
        _, has_final = self._seen(run_id)
        if final and not has_final:
            log_metrics(self.client, run_id, final, step=epoch)
            self._final[run_id] = True
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def log_weights(self, trial_id: str, weights_file: str) -> None:
        """A trial's model weights (a weights-only ``torch.save`` file) as its run's ``model/``."""
        run_id = self.trial_run(trial_id, {})
        self.client.log_artifact(run_id, weights_file, artifact_path=WEIGHTS_FOLDER)

    def lookup_run_ids(self) -> dict[str, str]:
        """Every child run of the search, by trial id (read from MLflow; the runs of trials that
        a resumed search did not start again included)."""
        parent = f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=parent, max_results=1000, page_token=token
            )
            for run in page:
                trial = run.data.tags.get(TRIAL_TAG)
                if trial:
                    self.run_ids.setdefault(trial, run.info.run_id)
            token = page.token
            if not token:
                return dict(self.run_ids)

    # ---- the outbox: what the search loop hands over, sent in the background ------------------
    def use_outbox(self, folder: str | Path) -> None:
        """Send what :meth:`submit` is given through the outbox in ``folder`` (its pending
        operations, from an earlier session, first), from a background thread
        (:class:`~tuneddml.tracking.outbox.Sender`): the caller never waits on MLflow."""
        self.sender = Sender(Outbox(folder), self.apply)

    def submit(self, key: str, kind: str, **payload: Any) -> None:
        """Hand one operation over (see :mod:`.outbox`); one already handed over is ignored.
        Without an outbox (:meth:`use_outbox`) the operation is sent at once."""
        if getattr(self, "sender", None) is None:
            self.apply({"op": key, "kind": kind, **payload})
        else:
            self.sender.submit(key, kind, **payload)

    def apply(self, item: Mapping[str, Any]) -> None:
        """Send one outbox operation to MLflow (idempotent: what the runs hold is checked)."""
        kind = item["kind"]
        if kind == "start":
            self.trial_run(item["trial"], item.get("config") or {}, item.get("known") or ())
        elif kind == "epoch":
            self._log_epoch(item["trial"], int(item["epoch"]), item["values"], {})
        elif kind == "end":
            self._finish_trial(
                item["trial"], item["status"], item.get("final") or {}, int(item.get("epoch", 0)),
                item.get("error"), item.get("checkpoint"),
            )
        elif kind == "weights":
            self.log_weights(item["trial"], item["file"])
        elif kind == "finish":
            report = item.get("report")
            self.finish(
                metrics=item.get("metrics") or {},
                tags=item.get("tags") or {},
                best_config=item.get("best_config"),
                files=[Path(f) for f in item.get("files") or ()],
                report=(report[0], [Path(f) for f in report[1]]) if report else None,
            )
        else:
            raise ValueError(f"unknown outbox operation {kind!r}")

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
        held = self.client.get_run(self.parent_run_id).data.metrics  # a replay logs nothing twice
        log_metrics(self.client, self.parent_run_id, {k: v for k, v in metrics.items() if k not in held}, step=0)
        for key, value in tags.items():
            self.client.set_tag(self.parent_run_id, key, str(value))
        self.log_files(files)
        self.client.set_terminated(self.parent_run_id, "FINISHED")

