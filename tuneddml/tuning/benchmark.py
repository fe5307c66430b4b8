"""The benchmark driver: a validated request (:mod:`.benchmark_request`) -> one search per loss
-> the final re-training of each loss's best configuration -> the leaderboard (Markdown, Parquet,
a figure) and its MLflow runs.

Each phase is an ordinary search (:func:`~tuneddml.tuning.driver.run_search`: Ray Tune trials
spread over every worker of the cluster, MLflow, results table, report) kept under the
benchmark's folder::

    <storage>/<name>/benchmark.json        settings, MLflow run ids, each phase's outcome
    <storage>/<name>/spaces/<loss>.yaml    the space each search ran (final.yaml: the re-training)
    <storage>/<name>/searches/<loss>/      each search's own folder (search.json, results, report)
    <storage>/<name>/leaderboard.md|.parquet, seeds.parquet, leaderboard.png

``benchmark.json`` is rewritten (atomically) after every phase, so a benchmark whose driver died
resumes with ``--resume``: finished phases are not run again, and the interrupted search resumes
as ``search --resume`` does (its ended trials are not trained again).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tuneddml.cli import format_duration
from tuneddml.errors import ConfigError
from tuneddml.tuning.benchmark_request import (
    BENCHMARK_FILE,
    BENCHMARK_FORMAT,
    FINAL,
    SEARCHES_FOLDER,
    SPACES_FOLDER,
    BenchmarkRequest,
    final_space,
    loss_space,
    write_space,
)

#: the leaderboard's metrics (test, per fold model and concatenated, beside validation)
BOARD_METRICS = ("map_at_r", "r_precision", "recall_at_1")
FIGURE_FILE = "leaderboard.png"


@dataclass
class BenchmarkSummary:
    name: str
    folder: Path
    losses: list[str]
    best_loss: str | None
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # losses whose search gave no result
    phases: dict[str, float] = field(default_factory=dict)  # seconds per search
    parent_run_id: str = ""
    markdown: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "folder": str(self.folder),
            "losses": self.losses,
            "best_loss": self.best_loss,
            "failed": self.failed,
            "seconds": round(self.seconds, 1),
            "phases": {k: round(v, 1) for k, v in self.phases.items()},
            "files": {k: str(v) for k, v in self.files.items()},
            "parent_run_id": self.parent_run_id,
        }


def _save(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(path)


def run_benchmark(request: BenchmarkRequest, *, stream: IO[str] | None = None, verbose: bool = False) -> BenchmarkSummary:
    """Run (or resume) the benchmark; returns its summary once the leaderboard is written."""
    from tuneddml.tracking.benchmark_run import BenchmarkRun

    out = stream or sys.stdout
    started = time.monotonic()
    folder = request.folder
    record = folder / BENCHMARK_FILE
    if request.resume:
        state = json.loads(record.read_text())
        run = BenchmarkRun.from_json(request.tracking_uri, state["mlflow"])
        print(f"resuming benchmark {request.name} from {folder}", file=out, flush=True)
    else:
        run = BenchmarkRun.start(
            request.tracking_uri,
            request.name,
            request.name,
            request.losses,
            {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in request.settings().items()},
        )
        folder.mkdir(parents=True)
        for loss in request.losses:
            write_space(folder / SPACES_FOLDER / f"{loss}.yaml", loss_space(request, loss))
        state = {
            "format": BENCHMARK_FORMAT,
            "name": request.name,
            "settings": request.settings(),
            "mlflow": run.to_json(),
            "losses": {},
            "final": None,
        }
        _save(state, record)
        print(
            f"benchmark {request.name}: {len(request.losses)} losses x {request.trials} trials "
            f"({request.searcher}, {request.folds} folds each), then each best x {len(request.seeds)} seeds "
            f"on the test classes",
            file=out,
            flush=True,
        )
    phases: dict[str, float] = {}
    for i, loss in enumerate(request.losses, 1):
        if state["losses"].get(loss, {}).get("status") in ("done", "no_result"):
            print(f"[{i}/{len(request.losses)}] {loss}: done before, not run again", file=out, flush=True)
            continue
        print(f"\n[{i}/{len(request.losses)}] {loss}: searching its parameters{_eta(state, request)}", file=out, flush=True)
        t0 = time.monotonic()
        summary, searched = _search(request, loss, {"mlflow.parentRunId": run.loss_runs[loss]}, out, verbose)
        phases[loss] = time.monotonic() - t0
        best = {k: v for k, v in (summary.best_config or {}).items() if k in searched}
        value = (summary.best_metrics or {}).get(request.metric)
        state["losses"][loss] = {
            "status": "done" if summary.best_config is not None else "no_result",
            "search": loss,
            "best_config": best,
            "best_value": value,
            "best_trial": summary.best_trial,
            "trials": summary.counts,
            "parent_run_id": summary.parent_run_id,
            "seconds": summary.seconds,
        }
        _link(run, loss, summary.parent_run_id, out)
        _save(state, record)
    best = {loss: s["best_config"] for loss, s in state["losses"].items() if s["status"] == "done"}
    failed = [loss for loss in request.losses if loss not in best]
    if not best:
        raise ConfigError("--losses", ",".join(request.losses), "losses whose searches gave a result (none did)")
    if (state.get("final") or {}).get("status") != "done":
        print(
            f"\nfinal: {len(best)} best configurations x {len(request.seeds)} seeds, on the test classes",
            file=out,
            flush=True,
        )
        path = folder / SPACES_FOLDER / f"{FINAL}.yaml"
        if not path.is_file():  # a resumed benchmark re-trains what it first chose
            write_space(path, final_space(request, best))
        t0 = time.monotonic()
        summary, _ = _search(request, FINAL, {"mlflow.parentRunId": run.parent_run_id}, out, verbose)
        phases[FINAL] = time.monotonic() - t0
        state["final"] = {"status": "done", "search": FINAL, "parent_run_id": summary.parent_run_id, "seconds": summary.seconds}
        _save(state, record)
    rows = seed_rows(folder / SEARCHES_FOLDER / FINAL, best)
    return _finish(request, state, rows, run, failed, phases, started, out)


def _eta(state: dict[str, Any], request: BenchmarkRequest) -> str:
    """`` (benchmark: 3/9 searches done in 12m, about 30m left)``: the searches left at the mean
    time of those done (the final one counted as one more)."""
    done = [float(s.get("seconds", 0.0)) for s in state["losses"].values()]
    if not done:
        return ""
    total = len(request.losses) + 1
    left = (total - len(done)) * sum(done) / len(done)
    return f" (benchmark: {len(done)}/{total} searches done in {format_duration(sum(done))}, about {format_duration(left)} left)"


def _search(request: BenchmarkRequest, name: str, tags: dict[str, str], out: IO[str], verbose: bool) -> tuple[Any, set[str]]:
    """Run (or resume) one of the benchmark's searches; its summary and its searched keys."""
    from tuneddml.tuning.driver import run_search
    from tuneddml.tuning.request import prepare_search

    space = request.folder / SPACES_FOLDER / f"{name}.yaml"
    searches = request.folder / SEARCHES_FOLDER
    resume = (searches / name / "search.json").is_file()
    kwargs = request.search_kwargs()
    if resume:
        try:
            search = prepare_search(
                space=str(space), name=name, resume=True, address=request.address, storage=kwargs["storage"],
                address_checked=True,
            )
        except ConfigError as exc:  # killed before Ray wrote anything: start the search again
            aside = searches / f"{name}.unresumable-{time.strftime('%Y%m%d-%H%M%S')}"
            print(f"warning: search {name} cannot resume ({exc}); started again, the old one kept in {aside}", file=out)
            shutil.move(str(searches / name), aside)
            resume = False
    if not resume:
        search = prepare_search(space=str(space), name=name, address_checked=True, **kwargs)
        search.experiment = request.name
        search.tags = dict(tags)
    summary = run_search(search, stream=out, verbose=verbose)
    return summary, set(search.space.parameters)  # the space prepare_search loaded


def _link(run: Any, loss: str, search_run_id: str, out: IO[str]) -> None:
    try:
        run.link_search(loss, search_run_id)
    except Exception as exc:  # MLflow unreachable: the benchmark's files say it too
        print(f"warning: MLflow: loss run of {loss} not linked to its search ({exc})", file=out)


def seed_rows(search_folder: Path, best: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The final search's trials as the leaderboard's rows: one per (loss, seed), with the test
    metric of the fold models (``test.<m>``), of their concatenation (``concat.<m>``) and the
    validation mean (``val.<m>``); a failed trial's numbers are NaN."""
    import pyarrow.parquet as pq

    from tuneddml.results.schema import ENSEMBLE, METRIC, RESULTS_FILE, VALIDATION

    rows = []
    for trial in pq.read_table(search_folder / RESULTS_FILE).to_pylist():
        loss = trial.get("config.loss")
        out: dict[str, Any] = {
            "loss": loss,
            "seed": int(trial.get("config.seed", 0)),
            "config": best.get(loss, {}),
            "status": trial.get("status"),
            "trial_id": trial.get("trial_id"),
            "mlflow_run_id": trial.get("mlflow_run_id"),
        }
        for m in BOARD_METRICS:
            for part, prefix in (("test", ""), ("concat", ENSEMBLE), ("val", VALIDATION)):
                value = trial.get(f"{METRIC}{prefix}{m}")
                usable = value is not None and trial.get("status") in ("finished", "stopped_early")
                out[f"{part}.{m}"] = float(value) if usable else math.nan
        rows.append(out)
    return rows


def _finish(
    request: BenchmarkRequest,
    state: dict[str, Any],
    rows: list[dict[str, Any]],
    run: Any,
    failed: list[str],
    phases: dict[str, float],
    started: float,
    out: IO[str],
) -> BenchmarkSummary:
    from tuneddml.plots import save_leaderboard_figure
    from tuneddml.results.leaderboard import build_leaderboard, write_leaderboard

    searched = {
        loss: {"val": s.get("best_value"), "trials": sum((s.get("trials") or {}).values()), "search": s["search"]}
        for loss, s in state["losses"].items()
    }
    board = build_leaderboard(rows, metrics=BOARD_METRICS, rank_by=request.metric, search=searched)
    seconds = sum(float(s.get("seconds", 0.0)) for s in state["losses"].values())
    seconds += float((state.get("final") or {}).get("seconds", 0.0))
    meta = {
        "dataset": request.fixed.get("dataset", "glyphs"),
        "losses": ", ".join(request.losses),
        "budget": f"{request.trials} trials per loss ({request.searcher}, scheduler {request.scheduler}), "
        f"each the mean of {request.folds} class-disjoint fold models",
        "final": f"each loss's best configuration re-trained with seeds {request.seeds}, scored once on the test classes",
        "settings": ", ".join(f"{k}={v}" for k, v in request.fixed.items()) or "the defaults",
        "searches' wall time": format_duration(seconds),
    }
    title = f"Leaderboard: benchmark {request.name}"
    files = write_leaderboard(board, request.folder, rows=rows, meta=meta, title=title)
    try:
        files["figure"] = save_leaderboard_figure(board, request.folder / FIGURE_FILE)
    except Exception as exc:  # a figure must never cost the leaderboard
        print(f"warning: leaderboard figure not drawn: {exc}", file=out)
    noise = {**board.noise.per_loss, "mean": board.noise.mean}
    metrics = {f"noise_sd.{k}": float(v) for k, v in noise.items() if v is not None and math.isfinite(float(v))}
    try:
        run.finish(board.table, files=list(files.values()), metrics=metrics, failed=failed)
    except Exception as exc:
        print(f"warning: MLflow: the leaderboard was not logged ({exc}); its files are in {request.folder}", file=out)
    state["leaderboard"] = {k: str(v) for k, v in files.items()}
    state["best_loss"] = board.best
    _save(state, request.folder / BENCHMARK_FILE)
    markdown = files["markdown"].read_text()  # the page just written
    print(f"\n{markdown}", file=out)
    print(f"leaderboard: {files.get('markdown', request.folder)}", file=out, flush=True)
    return BenchmarkSummary(
        request.name,
        request.folder,
        list(request.losses),
        board.best,
        time.monotonic() - started,
        files,
        failed,
        phases,
        run.parent_run_id,
        markdown,
    )
