# Long file: one search's control flow (Ray and the parent run started together, fit or resume, undo on an early failure, the summary with its phase clock) and the logging filters it installs; split, each part would reach into the run's shared state.
"""The search driver: a validated request (:mod:`.request`) -> searcher -> Ray Tune trials ->
MLflow (:mod:`.mlflow_callback`), results table and report.

:func:`run_search` is what ``python -m tuneddml.search`` calls, after
:func:`~tuneddml.tuning.request.prepare_search` has checked everything the user can get wrong.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Ray's console tables and banners give way to the project's own progress lines.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tuneddml import __version__
from tuneddml.results import (
    BEST,
    REPORT_FOLDER,
    RESULTS_FILE,
    RUNS_FOLDER,
    SEARCH_FILE,
    best_row,
    row_config,
    row_metrics,
    write_results,
)
from tuneddml.tracking import SearchRun
from tuneddml.tuning.request import SearchRequest
from tuneddml.tuning.resume_check import refuse_silent_restart

__all__ = ["SearchSummary", "run_search", "trial_resources"]


@dataclass
class SearchSummary:
    name: str
    space: str
    searcher: str
    metric: str
    mode: str
    counts: dict[str, int]
    best_config: dict[str, Any] | None
    best_metrics: dict[str, float] | None
    best_trial: str | None
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    folder: Path
    results_file: Path
    seconds: float
    mlflow_unsent: int = 0  # MLflow operations left in the outbox (``python -m tuneddml.tracking.sync``)
    phases: dict[str, float] = field(default_factory=dict)  # where the driver's time went (seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "search": self.name,
            "space": self.space,
            "searcher": self.searcher,
            "metric": self.metric,
            "mode": self.mode,
            "trials": self.counts,
            "best_trial": self.best_trial,
            "best_config": self.best_config,
            "best_metrics": self.best_metrics,
            "parent_run_id": self.parent_run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
            "results": str(self.results_file),
            "seconds": round(self.seconds, 1),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "mlflow_unsent": self.mlflow_unsent,
        }


# what the driver does after each phase of its clock, said as it begins (the time after the trials)
_STEP_AFTER = {
    "trials": "writing the results table",
    "results": "drawing the report",
    "report": "saving the best trials' weights",
    "weights": "sending the search's end to MLflow",
}


class _Clock:
    """Seconds per phase of the driver, in the order they ran (``SearchSummary.phases``).

    Given a ``stream``, it says on it what the driver does after the trials, as each step begins
    (``writing the results table ...``: :data:`_STEP_AFTER`)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.monotonic()
        self.stream = stream
        self._said: set[str] = set()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now
        step = _STEP_AFTER.get(name)
        if self.stream is not None and step and step not in self._said:
            self._said.add(step)
            print(f"{step} ...", file=self.stream, flush=True)


def run_search(request: SearchRequest, *, stream: IO[str] | None = None, verbose: bool = False) -> SearchSummary:
    """Run (or resume) the search on Ray Tune and return its summary.

    Ray starts first; the parent run and ``search.json`` are made only once it has, and are
    removed again if the search fails before its first trial could start (so the name can be
    used again). ``verbose``: Ray's own output too (its logs, the trials' stdout and stderr, each
    failed trial's traceback); by default only the project's progress lines."""
    import ray
    from ray import tune

    from tuneddml.results.ledger import read_ended
    from tuneddml.searchers.ray_searcher import make_ray_searcher
    from tuneddml.searchers.schedulers import SCHEDULERS
    from tuneddml.tuning.epoch_log import EpochLog
    from tuneddml.tuning.mlflow_callback import MlflowCallback, TrialLedger
    from tuneddml.tuning.outcome import result_rows
    from tuneddml.tuning.progress import DEFAULT_EPOCHS, SearchProgress
    from tuneddml.tuning.trainable import train_trial

    _quiet_mlflow()
    out = stream or sys.stdout
    space = request.space
    started = time.monotonic()
    clock = _Clock(out)
    meta_file = request.folder / SEARCH_FILE

    # snapshot the experiment (trials, searcher state) every second, so that a driver killed
    # mid-search loses as little as possible on --resume
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    init_kwargs: dict[str, Any] = {
        "log_to_driver": verbose,
        "include_dashboard": False,
        "configure_logging": True,
        "logging_level": "INFO" if verbose else "ERROR",
    }
    if request.address is None:  # a local search: every Ray process on 127.0.0.1 only
        from tuneddml.tuning.local_ray import local_init_kwargs

        init_kwargs.update(local_init_kwargs())
    else:
        init_kwargs["address"] = request.address
    clock.lap("imports")
    # the parent run (MLflow's import, a new store's schema) is made while Ray starts, and deleted
    # again if Ray cannot start or the search fails before its first trial
    parent: Future | None = None
    if not request.resume:
        pool = ThreadPoolExecutor(1, thread_name_prefix="tuneddml-parent-run")
        parent = pool.submit(_start_parent_run, request)
        pool.shutdown(wait=False)
    try:
        ray.init(**init_kwargs)
    except BaseException:
        if parent is not None:
            _undo_start(request, _made(parent), False)
        raise
    clock.lap("ray_start")
    if not verbose:
        _quiet_ray_trial_errors()
    search_run: SearchRun | None = None
    made_folder = False
    fitting = False
    try:
        if request.resume:
            meta = json.loads(meta_file.read_text())
            search_run = SearchRun(request.tracking_uri, meta["experiment_id"], meta["parent_run_id"])
            search_run.resumed = True
            search_run.searched = list(space.parameters)  # the runs' names, as the first session made them
        else:
            assert parent is not None
            search_run = parent.result()
            request.folder.mkdir(parents=True, exist_ok=False)
            made_folder = True
            _write_meta(request, search_run, meta_file)
        search_run.use_outbox(request.folder)
        clock.lap("tracking_start")
        ended = read_ended(request.folder) if request.resume else {}
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, metric=space.metric, ended=ended),
            trial_resources(request),
        )
        param_space = dict(request.fixed)
        tracker = MlflowCallback(search_run)
        progress = SearchProgress(
            num_samples=request.num_samples,
            metric=space.metric,
            mode=space.mode,
            concurrency=request.max_concurrent,
            stream=out,
            searched=space.parameters,
            folder=str(request.folder),
            scheduler=request.scheduler,
            epochs=int(request.fixed.get("epochs", DEFAULT_EPOCHS)),
        )
        callbacks = [progress, tracker, TrialLedger(request.folder), EpochLog(request.folder)]
        if request.resume:
            print(f"resuming search {request.name} from {request.folder}", file=out, flush=True)
            tuner = tune.Tuner.restore(
                f"{request.ray_storage}/{request.name}",
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                param_space=param_space,
            )
            # Tune restores the callbacks pickled with the search: use this session's instead
            # (its stream, its clock, its MLflow sender)
            tuner._local_tuner.get_run_config().callbacks = callbacks
        else:
            algo = make_ray_searcher(
                request.searcher,
                space,
                metric=space.metric,
                mode=space.mode,
                seed=request.seed,
                max_concurrent=request.max_concurrent,
                num_samples=request.num_samples,
            )
            core = getattr(algo, "core", None)
            if hasattr(core, "events"):  # the balance search says what it decided
                progress.events = lambda: core.events
            scheduler = SCHEDULERS.build(
                request.scheduler, {}, field="--scheduler", epochs=int(request.fixed.get("epochs", DEFAULT_EPOCHS))
            )
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=algo,
                    scheduler=scheduler,
                    num_samples=request.num_samples,
                    metric=space.metric,
                    mode=space.mode,
                    max_concurrent_trials=request.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=request.name,
                    storage_path=request.ray_storage,
                    verbose=1 if verbose else 0,
                    callbacks=callbacks,
                    failure_config=tune.FailureConfig(max_failures=2),
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=2,
                        checkpoint_score_attribute=space.metric,
                        checkpoint_score_order=space.mode,
                    ),
                ),
            )
            print(
                f"search {request.name}: space={space.name} searcher={request.searcher} "
                f"scheduler={request.scheduler} budget={request.num_samples} trials, "
                f"up to {request.max_concurrent} at once",
                file=out,
                flush=True,
            )
        fitting = True
        clock.lap("search_setup")
        # a damaged state that passed the up-front check: Tune would restart the experiment
        # afresh or wait forever; a one-line ConfigError (exit 2) instead
        guard = refuse_silent_restart(request.name) if request.resume else contextlib.nullcontext()
        with guard:
            grid = tuner.fit()
        clock.lap("trials")
        rows, checkpoints = result_rows(grid, request, search_run)
        clock.lap("results")
    except BaseException:
        try:
            if not fitting and not request.resume:
                _undo_start(request, search_run or (_made(parent) if parent else None), made_folder)
            elif search_run is not None and getattr(search_run, "sender", None) is not None:
                search_run.sender.flush(timeout=5)
        finally:
            ray.shutdown()
        raise
    # Ray stops (about a second) while the table, the report and the weights are written
    stopper = threading.Thread(target=ray.shutdown, name="tuneddml-ray-shutdown")
    stopper.start()
    try:
        return _summarise(rows, checkpoints, request, search_run, started, out, clock)
    finally:
        stopper.join()


def trial_resources(request: SearchRequest) -> dict[str, float]:
    """What Ray reserves for each trial: ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` GPUs
    (a fraction such as 0.5 puts two trials on one GPU at once; Ray then gives both the same GPU
    id and makes it their only visible CUDA device)."""
    return {"cpu": request.cpus_per_trial, "gpu": request.gpus_per_trial}


def _quiet_mlflow() -> None:
    """MLflow calls of the driver: few, short retries (the outbox keeps what fails), and no
    "View run ..." lines on stdout (``--json`` owns it)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # the retries' warnings


class _NoTrialTracebacks(logging.Filter):
    """Ray logs each failed trial with its whole traceback, and the list of failed trials at the
    end; the progress lines say it in one line each (Ray's error files keep the tracebacks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("Trial task failed for trial", "Trials did not complete"))


def _quiet_ray_trial_errors() -> None:
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTrialTracebacks) for f in logger.filters):
            logger.addFilter(_NoTrialTracebacks())


def _made(parent: Future) -> SearchRun | None:
    """The parent run ``parent`` made, once it is done; None if making it failed."""
    try:
        return parent.result()
    except Exception:
        return None


def _start_parent_run(request: SearchRequest) -> SearchRun:
    space = request.space
    return SearchRun.start(
        request.tracking_uri,
        request.experiment or space.name,
        request.name,
        tags={
            **request.tags,
            "tuneddml.space": space.name,
            "tuneddml.searcher": request.searcher,
            "tuneddml.version": __version__,
            "tuneddml.budget": request.num_samples,
            "tuneddml.scheduler": request.scheduler,
        },
        params={
            "space": space.name,
            "space_file": str(space.path),
            "searcher": request.searcher,
            "num_samples": request.num_samples,
            "scheduler": request.scheduler,
            "metric": space.metric,
            "mode": space.mode,
            "max_concurrent": request.max_concurrent,
            "seed": request.seed,
            **{f"fixed.{k}": v for k, v in request.fixed.items()},
        },
        space_file=space.path,
        searched=space.parameters,
    )


def _write_meta(request: SearchRequest, search_run: SearchRun, meta_file: Path) -> None:
    space = request.space
    meta = {
        "name": request.name,
        "space": space.name,
        "space_file": str(space.path),
        "searcher": request.searcher,
        "tracking_uri": request.tracking_uri,
        "experiment_id": search_run.experiment_id,
        "parent_run_id": search_run.parent_run_id,
        "metric": space.metric,
        "mode": space.mode,
        "num_samples": request.num_samples,
        "scheduler": request.scheduler,
        "overrides": request.overrides,
        "cpus_per_trial": request.cpus_per_trial,
        "gpus_per_trial": request.gpus_per_trial,
        "max_concurrent": request.max_concurrent,
        "seed": request.seed,
    }
    tmp = meta_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(meta_file)


def _undo_start(request: SearchRequest, search_run: SearchRun | None, made_folder: bool) -> None:
    """A search that failed before any trial: its parent run and folder go (the name is free)."""
    if search_run is not None:
        if getattr(search_run, "sender", None) is not None:
            search_run.sender.flush(timeout=0)
        try:
            search_run.client.delete_run(search_run.parent_run_id)
        except Exception as exc:  # the store is unreachable: say what is left behind
            print(f"warning: parent run {search_run.parent_run_id} not deleted: {exc}", file=sys.stderr)
    if made_folder:
        shutil.rmtree(request.folder, ignore_errors=True)


def _summarise(
    rows: list[dict],
    checkpoints: dict[str, str],
    request: SearchRequest,
    search_run: SearchRun,
    started: float,
    out: IO[str],
    clock: _Clock | None = None,
) -> SearchSummary:
    """Write the results table and the report; hand the best trials' weights and the parent run's
    end to MLflow; say what could not be logged; the search's summary."""
    metric, mode = request.space.metric, request.space.mode
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    best = best_row(rows, metric, mode)
    results_file = request.folder / RESULTS_FILE
    write_results(rows, results_file)
    clock = clock or _Clock()
    clock.lap("results")
    best_config = row_config(best) if best else None
    best_metrics = row_metrics(best, metric) if best else None
    from tuneddml.tuning.outcome import save_weights

    report_files: list[Path] = []
    try:
        from tuneddml.plots import make_report

        report_files = list(make_report([results_file], request.folder / REPORT_FOLDER))
    except Exception as exc:  # a plot must never cost the search its results
        print(f"warning: report not drawn: {exc}", file=out)
    clock.lap("report")
    for trial_id, path in save_weights(rows, checkpoints, request, out).items():
        search_run.submit(f"weights/{trial_id}", "weights", trial=trial_id, file=str(path))
    clock.lap("weights")
    summary_metrics = {f"trials_{k}": v for k, v in counts.items()}
    if best is not None:
        summary_metrics[f"best_{metric}"] = best[f"{BEST}{metric}"]
    from tuneddml.tuning.outcome import best_link, trial_series

    search_run.submit(
        f"finish/{sum(counts.values())}",
        "finish",
        metrics=summary_metrics,
        tags={"tuneddml.best_trial": best["trial_id"] if best else "none"},
        best_config=best_config,
        files=[str(results_file)],
        report=[REPORT_FOLDER, [str(p) for p in report_files]] if report_files else None,
        series=trial_series(rows, metric, mode),
        best=best_link(best, request.space.parameters, metric) if best else None,
    )
    unsent = search_run.sender.flush(timeout=float(os.environ.get("TUNEDDML_MLFLOW_FLUSH_S", "30")))
    clock.lap("mlflow_flush")
    for line in search_run.sender.refused:
        print(f"warning: MLflow refused {line}", file=out)
    if unsent:
        storage = f" --storage {request.storage}" if request.storage.resolve() != Path(RUNS_FOLDER).resolve() else ""
        print(
            f"warning: MLflow at {request.tracking_uri} could not be reached ({search_run.sender.offline or 'too slow'}); "
            f"not logged: {search_run.sender.unsent()} ({unsent} operations, kept in {search_run.sender.outbox.path})",
            file=out,
        )
        print(
            f"log them once it is back: python -m tuneddml.tracking.sync --name {request.name}{storage}",
            file=out,
            flush=True,
        )
    return SearchSummary(
        request.name,
        request.space.name,
        request.searcher,
        metric,
        mode,
        counts,
        best_config,
        best_metrics,
        best["trial_id"] if best else None,
        search_run.parent_run_id,
        search_run.experiment_id,
        request.tracking_uri,
        request.folder,
        results_file,
        time.monotonic() - started,
        unsent,
        clock.phases,
    )
