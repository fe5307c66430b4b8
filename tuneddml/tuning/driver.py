"""The search driver: a space file -> searcher -> Ray Tune trials -> MLflow, results table.

:func:`run_search` is what ``python -m tuneddml.search`` calls. Everything the user can get wrong
is checked by :func:`prepare_search` before Ray or MLflow start.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Ray's console tables and banners give way to the project's own progress lines.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray.tune import Callback

from tuneddml import __version__
from tuneddml.errors import ConfigError
from tuneddml.tracking.mlflow_store import MlflowTrialLogger, trial_status

SCHEDULERS = ("asha", "fifo")


@dataclass
class SearchRequest:
    """A validated search: what :func:`run_search` runs."""

    space: Any  # tuneddml.searchers.space.SearchSpace
    searcher: str
    scheduler: str
    num_samples: int
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    address: str | None
    tracking_uri: str
    storage: Path  # local folder of the search's own records (search.json, results, report)
    name: str
    resume: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    ray_storage: str = ""  # where Ray keeps trials and checkpoints: ``storage``, or a cloud URI

    def __post_init__(self) -> None:
        self.ray_storage = self.ray_storage or str(self.storage)

    @property
    def fixed(self) -> dict[str, Any]:
        """Settings every trial gets: the space's ``fixed``, the CPU threads, then the overrides."""
        fixed = dict(self.space.fixed)
        fixed.setdefault("threads", max(1, int(self.cpus_per_trial)))
        fixed.update(self.overrides)
        return fixed

    @property
    def folder(self) -> Path:
        return self.storage / self.name


def _check_address(address: str) -> None:
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--address", address, "auto or HOST:PORT of a running Ray head")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError("--address", address, f"a reachable Ray head ({exc.strerror or exc})") from None


def prepare_search(
    *,
    space: str,
    searcher: str | None = None,
    scheduler: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> SearchRequest:
    """Validate every input; raises ConfigError naming the bad one. Starts nothing."""
    from tuneddml.searchers import SEARCHERS, check_searcher
    from tuneddml.searchers.space import load_space
    from tuneddml.tracking.mlflow_store import check_tracking_uri, default_tracking_uri

    loaded = load_space(space)
    searcher = searcher or loaded.searcher
    if searcher not in SEARCHERS:
        raise ConfigError("--searcher", searcher, list(SEARCHERS))
    check_searcher(searcher)
    scheduler = scheduler or loaded.scheduler
    if scheduler not in SCHEDULERS:
        raise ConfigError("--scheduler", scheduler, SCHEDULERS)
    num_samples = loaded.num_samples if num_samples is None else num_samples
    if num_samples < 1:
        raise ConfigError("--num-samples", num_samples, "a positive number of trials")
    if cpus_per_trial <= 0:
        raise ConfigError("--cpus-per-trial", cpus_per_trial, "a positive number of CPUs")
    if gpus_per_trial < 0:
        raise ConfigError(
            "--gpus-per-trial", gpus_per_trial, "zero or a positive (fractional) number of GPUs"
        )
    if max_concurrent is None:
        max_concurrent = max(1, int((os.cpu_count() or 1) // cpus_per_trial)) if address is None else 8
    if max_concurrent < 1:
        raise ConfigError("--max-concurrent", max_concurrent, "a positive number of trials")
    ray_storage = ""
    if storage and "://" in storage:
        # shared storage of a cluster (s3://, gs://, ...): Ray writes trials and checkpoints there;
        # the search's own records stay in ./tuneddml_runs on the machine that drives it
        scheme = storage.split("://", 1)[0]
        if scheme not in ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file"):
            raise ConfigError("--storage", storage, "a folder or a URI of s3, gs, abfs, hdfs or file")
        ray_storage, storage = storage.rstrip("/"), None
    storage_path = Path(storage or "tuneddml_runs").expanduser().resolve()
    if storage_path.exists() and not storage_path.is_dir():
        raise ConfigError("--storage", str(storage_path), "a folder")
    if not storage_path.parent.is_dir():
        raise ConfigError("--storage", str(storage_path), "a path whose parent folder exists")
    if resume:
        name = name or _latest_search(storage_path, loaded.name)
        meta_file = storage_path / name / "search.json"
        if not meta_file.is_file():
            raise ConfigError("--name", name, f"a search under {storage_path} to resume")
        meta = json.loads(meta_file.read_text())
        if overrides and dict(overrides) != meta["overrides"]:
            raise ConfigError(
                "--resume",
                " ".join(f"{k}={v}" for k, v in overrides.items()),
                "no KEY=VALUE settings: a resumed search keeps the settings it started with",
            )
        # a resumed search is the same search: its budget, searcher and settings come from its record
        searcher, scheduler, num_samples = meta["searcher"], meta["scheduler"], meta["num_samples"]
        overrides, cpus_per_trial = meta["overrides"], meta["cpus_per_trial"]
        tracking_uri = tracking_uri or meta["tracking_uri"]
    tracking_uri = tracking_uri or default_tracking_uri(".")
    check_tracking_uri(tracking_uri)
    if address is not None:
        _check_address(address)
    if not resume:
        name = name or f"{loaded.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (storage_path / name).exists():
            raise ConfigError(
                "--name", name, "a new search name (that one exists: add --resume to continue it)"
            )
    request = SearchRequest(
        loaded,
        searcher,
        scheduler,
        num_samples,
        max_concurrent,
        cpus_per_trial,
        gpus_per_trial,
        address,
        tracking_uri,
        storage_path,
        name,
        resume,
        dict(overrides or {}),
        seed,
        ray_storage,
    )
    loaded.validate_overrides(request.fixed)
    return request


def _latest_search(storage: Path, space_name: str) -> str:
    candidates = sorted(storage.glob(f"{space_name}-*/search.json"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError("--resume", space_name, f"an earlier search of this space under {storage}")
    return candidates[-1].parent.name


class _MlflowCallback(Callback):
    """Ray Tune callback that forwards trial events to :class:`MlflowTrialLogger`."""

    def __init__(self, logger: MlflowTrialLogger) -> None:
        self.logger = logger

    @staticmethod
    def _config(trial: Any) -> dict[str, Any]:
        """Every setting of the trial, defaults included (what the trial really ran with)."""
        from tuneddml.config import TrialConfig
        from tuneddml.errors import ConfigError

        flat = {k: v for k, v in trial.config.items() if not k.startswith("_")}
        try:
            return TrialConfig.from_flat(flat).to_flat()
        except ConfigError:  # the trial itself will fail and say why
            return flat

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.logger.run_for(trial.trial_id, self._config(trial), [t.trial_id for t in trials])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.logger.log_epoch(trial.trial_id, self._config(trial), result)

    def _finish(self, trial: Any, errored: bool) -> None:
        config = self._config(trial)
        status = trial_status(trial.last_result, int(config.get("epochs", 0)), errored)
        self.logger.finish(
            trial.trial_id,
            config,
            trial.last_result,
            status,
            _best_checkpoint(trial),
            error=str(trial.error_file) if errored else None,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=True)


def _best_checkpoint(trial: Any) -> str | None:
    """Folder or URI of the trial's best checkpoint (Ray keeps it by the search metric)."""
    try:
        results = trial.run_metadata.checkpoint_manager.best_checkpoint_results
        checkpoint = results[-1].checkpoint if results else trial.checkpoint
    except AttributeError:
        checkpoint = getattr(trial, "checkpoint", None)
    path = getattr(checkpoint, "path", None)
    if not path:
        return None
    filesystem = getattr(checkpoint, "filesystem", None)
    if filesystem is not None and type(filesystem).__name__ != "LocalFileSystem":
        return f"{filesystem.type_name}://{path}"
    return path if os.path.isdir(path) else None


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

    from tuneddml.searchers import make_ray_searcher
    from tuneddml.tracking.mlflow_store import start_search_run
    from tuneddml.tuning.progress import SearchProgress
    from tuneddml.tuning.trainable import train_trial

    out = stream or sys.stdout
    space = request.space
    started = time.monotonic()
    meta_file = request.folder / "search.json"
    if request.resume:
        meta = json.loads(meta_file.read_text())
        experiment_id, parent_run_id = meta["experiment_id"], meta["parent_run_id"]
    else:
        experiment_id, parent_run_id = start_search_run(
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
            "experiment_id": experiment_id,
            "parent_run_id": parent_run_id,
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
    if request.address is None:
        init_kwargs.update(address="local", num_cpus=os.cpu_count(), num_gpus=None)
    else:
        init_kwargs["address"] = request.address
    ray.init(**init_kwargs)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, metric=space.metric),
            {"cpu": request.cpus_per_trial, "gpu": request.gpus_per_trial},
        )
        param_space = dict(request.fixed)
        tracker = MlflowTrialLogger(
            request.tracking_uri, experiment_id, parent_run_id, space.metric, space.mode
        )
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
            scheduler = _make_scheduler(request, space)
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
                    callbacks=[progress, _MlflowCallback(tracker)],
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
        rows = _result_rows(grid, request, tracker, parent_run_id)
    finally:
        ray.shutdown()
    return _summarise(rows, request, experiment_id, parent_run_id, time.monotonic() - started, out)


def _make_scheduler(request: SearchRequest, space: Any) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    epochs = int(request.fixed.get("epochs", 5))
    if request.scheduler == "fifo" or epochs < 3:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch", max_t=epochs, grace_period=max(1, epochs // 4), reduction_factor=2
    )


def _trial_order(trial_id: str, path: str) -> int:
    """Ray names a trial's folder ``<trainable>_<trial id>_<index>_<params>``; the index is the order."""
    match = re.search(rf"_{re.escape(trial_id)}_(\d+)", os.path.basename(path or ""))
    return int(match.group(1)) - 1 if match else 0


def _result_rows(grid: Any, request: SearchRequest, tracker: MlflowTrialLogger, parent: str) -> list[dict]:
    metric = request.space.metric
    rows = []
    for result in grid:
        config = {k: v for k, v in (result.config or {}).items() if not k.startswith("_")}
        last = result.metrics or {}
        trial_id = str(last.get("trial_id") or (result.path or "").rsplit("/", 1)[-1])
        status = trial_status(last, int(config.get("epochs", 0)), result.error is not None)
        history = result.metrics_dataframe
        best = math.nan
        if history is not None and metric in history:
            values = [float(v) for v in history[metric] if v == v]
            if values:
                best = max(values) if request.space.mode == "max" else min(values)
        row: dict[str, Any] = {
            "search": request.name,
            "space": request.space.name,
            "searcher": request.searcher,
            "metric": metric,
            "mode": request.space.mode,
            "trial_id": trial_id,
            "order": _trial_order(trial_id, result.path or ""),
            "status": status,
            "epochs": int(last.get("epoch", 0) or 0),
            "seconds": float(last.get("time_total_s", 0.0) or 0.0),
            "mlflow_run_id": tracker.run_ids.get(trial_id),
            "node_id": last.get("node_id"),
            "parent_run_id": parent,
            f"best.{metric}": None if math.isnan(best) else best,
        }
        row.update({f"config.{k}": v for k, v in config.items()})
        if status not in ("failed",) and last:
            row.update(
                {
                    f"metric.{k}": float(v)
                    for k, v in last.items()
                    if k in _METRIC_KEYS or k.startswith(("recall_at_", "ndcg_at_"))
                }
            )
        rows.append(row)
    rows.sort(key=lambda r: r["order"])
    return rows


_METRIC_KEYS = {"map_at_r", "r_precision", "nmi", "ap"}


def write_results(rows: list[dict], path: Path) -> None:
    """One row per trial (see tuneddml.report for the columns), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {}
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k.count("."), k))
    for key in keys:
        values = [row.get(key) for row in rows]
        present = [v for v in values if v is not None]
        if (
            present
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
            and any(isinstance(v, float) for v in present)
        ):
            values = [None if v is None else float(v) for v in values]
        elif present and len({type(v) for v in present}) > 1:
            values = [None if v is None else str(v) for v in values]
        columns[key] = values
    table = pa.table(columns)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _summarise(
    rows: list[dict],
    request: SearchRequest,
    experiment_id: str,
    parent_run_id: str,
    seconds: float,
    out: IO[str],
) -> SearchSummary:
    from tuneddml.tracking.mlflow_store import finish_search_run

    metric, mode = request.space.metric, request.space.mode
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    scored = [r for r in rows if r.get(f"best.{metric}") is not None]
    best = None
    if scored:
        best = (max if mode == "max" else min)(scored, key=lambda r: r[f"best.{metric}"])
    results_file = request.folder / "results.parquet"
    write_results(rows, results_file)
    best_config = (
        {k.removeprefix("config."): v for k, v in best.items() if k.startswith("config.")} if best else None
    )
    best_metrics = (
        {k.removeprefix("metric."): v for k, v in best.items() if k.startswith("metric.")} if best else None
    )
    if best is not None and best_metrics is not None:
        best_metrics[f"best_{metric}"] = best[f"best.{metric}"]
    report_files: list[Path] = []
    try:
        from tuneddml.report import log_report, make_report

        report_files = list(make_report([results_file], request.folder / "report"))
    except Exception as exc:  # a plot must never cost the search its results
        print(f"warning: report not drawn: {exc}", file=out)
    summary_metrics = {f"trials_{k}": v for k, v in counts.items()}
    if best is not None:
        summary_metrics[f"best_{metric}"] = best[f"best.{metric}"]
    if best_config is not None:
        from mlflow.tracking import MlflowClient

        MlflowClient(request.tracking_uri).log_dict(parent_run_id, best_config, "best_config.json")
    if report_files:
        log_report(report_files, [(request.tracking_uri, parent_run_id)])
    tags = {"tuneddml.best_trial": best["trial_id"] if best else "none"}
    finish_search_run(request.tracking_uri, parent_run_id, summary_metrics, tags, [results_file])
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
        parent_run_id,
        experiment_id,
        request.tracking_uri,
        request.folder,
        results_file,
        seconds,
    )
