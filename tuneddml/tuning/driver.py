"""The search driver: a validated request (:mod:`.request`) -> searcher -> Ray Tune trials ->
MLflow (:mod:`.mlflow_callback`), results table and report.

:func:`run_search` is what ``python -m tuneddml.search`` calls, after
:func:`~tuneddml.tuning.request.prepare_search` has checked everything the user can get wrong.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
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
    SEARCH_FILE,
    best_row,
    best_value,
    row_config,
    row_metrics,
    trial_row,
    trial_status,
    write_results,
)
from tuneddml.tracking import SearchRun
from tuneddml.tuning.request import SearchRequest

__all__ = ["SearchSummary", "run_search"]


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
        }


def run_search(request: SearchRequest, *, stream: IO[str] | None = None) -> SearchSummary:
    """Run (or resume) the search on Ray Tune and return its summary."""
    import ray
    from ray import tune

    from tuneddml.searchers.ray_searcher import make_ray_searcher
    from tuneddml.searchers.schedulers import SCHEDULERS
    from tuneddml.tuning.mlflow_callback import MlflowCallback
    from tuneddml.tuning.progress import SearchProgress
    from tuneddml.tuning.trainable import train_trial

    out = stream or sys.stdout
    space = request.space
    started = time.monotonic()
    meta_file = request.folder / SEARCH_FILE
    if request.resume:
        meta = json.loads(meta_file.read_text())
        search_run = SearchRun(request.tracking_uri, meta["experiment_id"], meta["parent_run_id"])
    else:
        search_run = SearchRun.start(
            request.tracking_uri,
            space.name,
            request.name,
            tags={
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
        )
        request.folder.mkdir(parents=True, exist_ok=False)
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
        }
        tmp = meta_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(meta_file)

    # snapshot the experiment (trials, searcher state) every second, so that a driver killed
    # mid-search loses as little as possible on --resume
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    init_kwargs: dict[str, Any] = {
        "log_to_driver": False,
        "include_dashboard": False,
        "configure_logging": True,
        "logging_level": "ERROR",
    }
    if request.address is None:  # a local search: every Ray process on 127.0.0.1 only
        from tuneddml.tuning.local_ray import local_init_kwargs

        init_kwargs.update(local_init_kwargs())
    else:
        init_kwargs["address"] = request.address
    ray.init(**init_kwargs)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, metric=space.metric),
            {"cpu": request.cpus_per_trial, "gpu": request.gpus_per_trial},
        )
        param_space = dict(request.fixed)
        tracker = MlflowCallback(search_run)
        progress = SearchProgress(
            num_samples=request.num_samples,
            metric=space.metric,
            mode=space.mode,
            concurrency=request.max_concurrent,
            stream=out,
        )
        if request.resume:
            print(f"resuming search {request.name} from {request.folder}", file=out, flush=True)
            tuner = tune.Tuner.restore(
                f"{request.ray_storage}/{request.name}",
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                param_space=param_space,
            )
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
                request.scheduler, {}, field="--scheduler", epochs=int(request.fixed.get("epochs", 5))
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
                    verbose=0,
                    callbacks=[progress, tracker],
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
        grid = tuner.fit()
        rows = _result_rows(grid, request, tracker.run_ids, search_run.parent_run_id)
    finally:
        ray.shutdown()
    return _summarise(rows, request, search_run, time.monotonic() - started, out)


def _trial_order(trial_id: str, path: str) -> int:
    """Ray names a trial's folder ``<trainable>_<trial id>_<index>_<params>``; the index is the order."""
    match = re.search(rf"_{re.escape(trial_id)}_(\d+)", os.path.basename(path or ""))
    return int(match.group(1)) - 1 if match else 0


def _result_rows(grid: Any, request: SearchRequest, run_ids: dict[str, str], parent: str) -> list[dict]:
    """One results-table row per trial of Tune's result grid (:func:`tuneddml.results.trial_row`)."""
    metric, mode = request.space.metric, request.space.mode
    search = {
        "search": request.name,
        "space": request.space.name,
        "searcher": request.searcher,
        "metric": metric,
        "mode": mode,
        "parent_run_id": parent,
    }
    rows = []
    for result in grid:
        config = {k: v for k, v in (result.config or {}).items() if not k.startswith("_")}
        last = result.metrics or {}
        trial_id = str(last.get("trial_id") or (result.path or "").rsplit("/", 1)[-1])
        history = result.metrics_dataframe
        values = list(history[metric]) if history is not None and metric in history else []
        row = trial_row(
            search=search,
            trial_id=trial_id,
            order=_trial_order(trial_id, result.path or ""),
            status=trial_status(last, int(config.get("epochs", 0)), result.error is not None),
            config=config,
            last=last,
            best=best_value(values, mode),
            seconds=float(last.get("time_total_s", 0.0) or 0.0),
            mlflow_run_id=run_ids.get(trial_id),
        )
        rows.append(row)
    rows.sort(key=lambda r: r["order"])
    return rows


def _summarise(
    rows: list[dict], request: SearchRequest, search_run: SearchRun, seconds: float, out: IO[str]
) -> SearchSummary:
    """Write the results table and the report; finish the parent run; the search's summary."""
    metric, mode = request.space.metric, request.space.mode
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    best = best_row(rows, metric, mode)
    results_file = request.folder / RESULTS_FILE
    write_results(rows, results_file)
    best_config = row_config(best) if best else None
    best_metrics = row_metrics(best, metric) if best else None
    report_files: list[Path] = []
    try:
        from tuneddml.plots import make_report

        report_files = list(make_report([results_file], request.folder / REPORT_FOLDER))
    except Exception as exc:  # a plot must never cost the search its results
        print(f"warning: report not drawn: {exc}", file=out)
    summary_metrics = {f"trials_{k}": v for k, v in counts.items()}
    if best is not None:
        summary_metrics[f"best_{metric}"] = best[f"{BEST}{metric}"]
    search_run.finish(
        metrics=summary_metrics,
        tags={"tuneddml.best_trial": best["trial_id"] if best else "none"},
        best_config=best_config,
        files=[results_file],
        report=(REPORT_FOLDER, report_files) if report_files else None,
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
        seconds,
    )
