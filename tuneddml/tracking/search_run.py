"""Everything a search writes to MLflow, through one object: :class:`SearchRun`.

Layout: one experiment per search space, tagged as a model-training one
(:data:`~tuneddml.tracking.mlflow_store.EXPERIMENT_KIND`); one parent run per search (space,
searcher, budget, project version, the space file itself, best result, best config, results
table, report figures, a per-trial series of the search metric and its best so far at step = the
trial's start order, and a description linking the best trial's run); one child run per trial
(``tags.mlflow.parentRunId``), named by what varied (:func:`tuneddml.results.labels.trial_label`),
with every config parameter, its data split as an MLflow dataset input, the per-epoch record's
values (metrics, loss terms, times, system usage; step = epoch), a ``status`` tag (running,
finished, stopped_early, diverged, failed), the epochs it completed (``tuneddml.epochs``), a
failed or diverged trial's one-line message (``tuneddml.error``) and a failed trial's whole
traceback (``error.txt``), where its best checkpoint lies (``tuneddml.checkpoint``) and, for the
search's best trials only, the model's weights (``model/``, weights-only, no optimiser state).

A search touches MLflow at three moments: :meth:`SearchRun.start` (the parent run), the trials
(:meth:`~SearchRun.trial_run`, :meth:`~SearchRun.log_epoch`, :meth:`~SearchRun.finish_trial`),
and :meth:`~SearchRun.finish`. Child runs are keyed by the trial id: a retried or resumed trial
finds its run again and never makes a second one; an epoch a run already holds is not logged
again. During a search the driver hands these over with :meth:`~SearchRun.submit`: they go to the
search's outbox (:mod:`.outbox`) and are sent by a background thread, so an MLflow outage never
blocks the search; what could not be sent stays there for ``python -m tuneddml.tracking.sync``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.results import DIVERGED, EPOCH, record_values
from tuneddml.tracking.mlflow_store import (
    ML_VIEW,
    check_tracking_uri,
    client,
    experiment_id,
    log_metrics,
    log_params,
    log_points,
)
from tuneddml.tracking.outbox import Outbox, Sender

TRIAL_TAG = "tuneddml.trial_id"
STATUS_TAG = "tuneddml.status"
SEARCH_TAG = "tuneddml.search"
ERROR_TAG = "tuneddml.error"  # a failed or diverged trial's own message
CHECKPOINT_TAG = "tuneddml.checkpoint"  # where the trial's best checkpoint lies in the storage
EPOCHS_TAG = "tuneddml.epochs"  # the epochs a trial completed
BEST_RUN_TAG = "tuneddml.best_run_id"  # on the parent: the best trial's child run
NOTE_TAG = "mlflow.note.content"  # a run's description, as the MLflow UI shows and edits it
ERROR_FILE = "error.txt"  # a failed trial's whole traceback, as an artifact of its run
SPACE_FOLDER = "space"  # the parent's artifact folder of the space file
SERIES = "trial/"  # the parent's per-trial series: ``trial/<metric>``, ``trial/best_<metric>``
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
        self._logged: dict[tuple[str, str], set[int]] = {}  # (child run, metric) -> the epochs it holds
        self.searched: list[str] = []  # the space's searched settings, in order (the runs' names)

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        search_name: str,
        *,
        tags: Mapping[str, Any],
        params: Mapping[str, Any],
        space_file: str | Path | None = None,
        searched: Sequence[str] = (),
    ) -> SearchRun:
        """Create the parent run of a new search in experiment ``experiment``, with the space file
        itself (``space_file``) as an artifact; ``searched``: the settings the space varies."""
        mlflow = client(uri)
        exp_id = experiment_id(mlflow, experiment)
        run = mlflow.create_run(
            exp_id, run_name=search_name, tags={SEARCH_TAG: search_name, **{k: str(v) for k, v in tags.items()}}
        )
        log_params(mlflow, run.info.run_id, params)
        if space_file is not None and Path(space_file).is_file():
            mlflow.log_artifact(run.info.run_id, str(space_file), artifact_path=SPACE_FOLDER)
        found = cls(uri, exp_id, run.info.run_id)
        found._client_obj = mlflow
        found.searched = list(searched)
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
    def trial_run(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        known_trials: Iterable[str] = (),
        name: str | None = None,
        dataset: Mapping[str, str] | None = None,
    ) -> str:
        """The child run of ``trial_id``: found again if it exists, else created, named ``name``
        (default ``trial-<id>``), with ``config`` as its parameters and ``dataset`` (``name``,
        ``digest``, ``context``: see :meth:`log_dataset`) as its input.

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
                run_name=name or f"trial-{trial_id}",
                tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial_id, STATUS_TAG: "running"},
            )
            run_id = run.info.run_id
            self._created.add(run_id)
            log_params(self.client, run_id, config)
        self.run_ids[trial_id] = run_id
        if dataset:
            self.log_dataset(run_id, dataset)
        return run_id

    def log_dataset(self, run_id: str, dataset: Mapping[str, str]) -> None:
        """The trial's data split as an MLflow dataset input: ``name`` (dataset and fold),
        ``digest`` (of the split, :func:`tuneddml.tuning.trainable.split_digest`) and ``context``
        (``val fold 0/4``); logged once (a run that already has an input keeps it)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if self.client.get_run(run_id).inputs.dataset_inputs:
            return
        entry = Dataset(
            name=str(dataset["name"]),
            digest=str(dataset["digest"]),
            source_type="tuneddml",
            source=json.dumps({"dataset": dataset["name"]}),
        )
        tags = [InputTag("mlflow.data.context", str(dataset.get("context") or "train"))]
        self.client.log_inputs(run_id, datasets=[DatasetInput(entry, tags)])

    def _seen(self, run_id: str, key: str) -> set[int]:
        """The epochs (steps) at which run ``run_id`` already holds metric ``key``: empty for a run
        made in this session, else read back from MLflow once."""
        if (run_id, key) not in self._logged:
            if run_id in self._created:
                self._logged[run_id, key] = set()
            else:
                self._logged[run_id, key] = {int(m.step) for m in self.client.get_metric_history(run_id, key)}
        return self._logged[run_id, key]

    def log_epoch(self, trial_id: str, config: Mapping[str, Any], record: Mapping[str, Any]) -> None:
        """One epoch's record (:mod:`tuneddml.results.schema`), at step = its epoch; an epoch the
        run already holds (a resumed trial's repeat) is not logged again."""
        self._log_epoch(trial_id, int(record.get(EPOCH, 0)), record_values(record), config)

    def _log_epoch(self, trial_id: str, epoch: int, values: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        """The values at step ``epoch``; ``epoch`` and ``diverged`` are bookkeeping, not metrics
        (the ``tuneddml.epochs`` and ``tuneddml.status`` tags say them). An epoch's values are
        logged in one batch, so whether its first key is there says whether all are."""
        run_id = self.trial_run(trial_id, config)
        values = {k: v for k, v in values.items() if k not in (EPOCH, DIVERGED)}
        if not values:
            return
        logged = self._seen(run_id, min(values))
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
        traceback: str | None = None,
    ) -> None:
        """The trial's status, the epochs it completed, its one-line error message and whole
        traceback (``error.txt``), and where its best checkpoint lies (a tag; the weights of the
        search's best trials are logged by :meth:`log_weights`); the run ends. Its values are the
        per-epoch ones: the last of each is what the runs table shows."""
        self._finish_trial(
            trial_id, status, int((record or {}).get(EPOCH, 0)), error, checkpoint_dir, config, traceback
        )

    def _finish_trial(
        self,
        trial_id: str,
        status: str,
        epoch: int,
        error: str | None,
        checkpoint: str | None,
        config: Mapping[str, Any] | None = None,
        traceback: str | None = None,
    ) -> None:
        run_id = self.trial_run(trial_id, config or {})
        self.client.set_tag(run_id, STATUS_TAG, status)
        self.client.set_tag(run_id, EPOCHS_TAG, str(epoch))
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:5000])
        if traceback:  # overwritten, not added, on a replay
            self.client.log_text(run_id, traceback, ERROR_FILE)
        if checkpoint:
            self.client.set_tag(run_id, CHECKPOINT_TAG, checkpoint)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def log_weights(self, trial_id: str, weights_file: str) -> None:
        """A trial's weights-only ``torch.save`` file, and the ``.json`` beside it, as its ``model/``."""
        run_id = self.trial_run(trial_id, {})
        for file in (Path(weights_file), Path(weights_file).with_suffix(".json")):
            if file == Path(weights_file) or file.is_file():
                self.client.log_artifact(run_id, str(file), artifact_path=WEIGHTS_FOLDER)

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
            self.trial_run(item["trial"], item.get("config") or {}, item.get("known") or (), item.get("name"))
        elif kind == "dataset":
            self.log_dataset(self.trial_run(item["trial"], {}), item["dataset"])
        elif kind == "epoch":
            self._log_epoch(item["trial"], int(item["epoch"]), item["values"], {})
        elif kind == "end":
            self._finish_trial(
                item["trial"], item["status"], int(item.get("epoch", 0)), item.get("error"),
                item.get("checkpoint"), traceback=item.get("traceback"),
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
                series=item.get("series") or {},
                best=item.get("best"),
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
        series: Mapping[str, Sequence[Sequence[float]]] | None = None,
        best: Mapping[str, Any] | None = None,
    ) -> None:
        """The search's outcome: its metrics and tags, ``best_config.json``, ``files`` (the results
        table), ``report`` (``(folder, figures)``), ``series`` (metric -> ``[step, value]`` pairs,
        the per-trial series) and ``best`` (``trial``, ``label``, ``metric``, ``value``: the best
        trial, linked from the run's description and :data:`BEST_RUN_TAG`); the parent run ends.
        A replay logs no value twice."""
        if best_config is not None:
            self.client.log_dict(self.parent_run_id, dict(best_config), "best_config.json")
        if report is not None:
            self.log_files(report[1], report[0])
        held = self.client.get_run(self.parent_run_id).data.metrics
        log_metrics(self.client, self.parent_run_id, {k: v for k, v in metrics.items() if k not in held}, step=0)
        for key, points in (series or {}).items():
            steps = {int(m.step) for m in self.client.get_metric_history(self.parent_run_id, key)} if key in held else set()
            new = [(key, value, step) for step, value in points if int(step) not in steps]
            log_points(self.client, self.parent_run_id, new)
        for key, value in tags.items():
            self.client.set_tag(self.parent_run_id, key, str(value))
        if best is not None:
            self._link_best(best, metrics)
        self.log_files(files)
        self.client.set_terminated(self.parent_run_id, "FINISHED")

    def _link_best(self, best: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The best trial's child run: its id as :data:`BEST_RUN_TAG`, and a description (what
        the run page shows first) with a link to that run's page."""
        run_id = self.run_ids.get(best["trial"]) or self.lookup_run_ids().get(best["trial"])
        if run_id is None:
            return
        self.client.set_tag(self.parent_run_id, BEST_RUN_TAG, run_id)
        counts = ", ".join(
            f"{int(v)} {k.removeprefix('trials_').replace('_', ' ')}" for k, v in metrics.items() if k.startswith("trials_")
        )
        page = f"#/experiments/{self.experiment_id}/runs/{run_id}?{ML_VIEW}"
        note = (
            f"**Best trial:** [{best['label']}]({page}), {best['metric']} = {float(best['value']):.4f} "
            f"(run `{run_id}`).\n\n"
            f"Trials: {counts}. The charts of this run plot `{SERIES}{best['metric']}` (each trial's best "
            f"{best['metric']}, step = the trial's start order) and `{SERIES}best_{best['metric']}` (the best so "
            "far). To compare trials, select child runs in the runs table and press *Compare*."
        )
        self.client.set_tag(self.parent_run_id, NOTE_TAG, note)
