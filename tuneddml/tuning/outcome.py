"""What a finished search leaves, from Tune's result grid: the results table's rows (each linked to
its MLflow run) and the best trials' model weights, weights-only (no optimiser, no RNG)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, Any

from tuneddml.results import BEST, ERROR, best_value, trial_row, trial_status
from tuneddml.tracking import SearchRun
from tuneddml.tuning.request import SearchRequest


def trial_order(trial_id: str, path: str) -> int:
    """Ray names a trial's folder ``<trainable>_<trial id>_<index>_<params>``; the index is the order."""
    match = re.search(rf"_{re.escape(trial_id)}_(\d+)", os.path.basename(path or ""))
    return int(match.group(1)) - 1 if match else 0


def result_rows(grid: Any, request: SearchRequest, search_run: SearchRun) -> tuple[list[dict], dict[str, str]]:
    """One results-table row per trial of Tune's result grid (:func:`tuneddml.results.trial_row`),
    and each trial's best checkpoint folder by trial id. Every row names its MLflow run: the ones
    this session's callback saw, the others (trials that had ended before a resume) looked up by
    their trial tag."""
    from tuneddml.errors import error_message
    from tuneddml.tuning.mlflow_callback import checkpoint_location

    metric, mode = request.space.metric, request.space.mode
    search = {
        "search": request.name,
        "space": request.space.name,
        "searcher": request.searcher,
        "metric": metric,
        "mode": mode,
        "parent_run_id": search_run.parent_run_id,
    }
    search_run.sender.wait_sent(timeout=30)  # the trials' runs exist before the rows name them
    run_ids = dict(search_run.run_ids)
    try:
        run_ids = {**search_run.lookup_run_ids(), **run_ids}
    except Exception:  # MLflow unreachable: the rows it has to offer stay unlinked
        pass
    rows = []
    checkpoints: dict[str, str] = {}
    for result in grid:
        config = {k: v for k, v in (result.config or {}).items() if not k.startswith("_")}
        last = result.metrics or {}
        trial_id = str(last.get("trial_id") or (result.path or "").rsplit("/", 1)[-1])
        history = result.metrics_dataframe
        values = list(history[metric]) if history is not None and metric in history else []
        status = trial_status(last, int(config.get("epochs", 0)), result.error is not None)
        error = None
        if result.error is not None:
            error = error_message(result.error)
        elif status == "diverged":
            error = str(last.get(ERROR) or "diverged")
        row = trial_row(
            search=search,
            trial_id=trial_id,
            order=trial_order(trial_id, result.path or ""),
            status=status,
            config=config,
            last=last,
            best=best_value(values, mode),
            seconds=float(last.get("time_total_s", 0.0) or 0.0),
            mlflow_run_id=run_ids.get(trial_id),
            error=error,
        )
        rows.append(row)
        try:
            best = result.get_best_checkpoint(metric, mode) if values else None
        except Exception:  # no checkpoint scored by the metric
            best = None
        location = checkpoint_location(best or result.checkpoint)
        if location:
            checkpoints[trial_id] = location
    rows.sort(key=lambda r: r["order"])
    return rows, checkpoints


BEST_WEIGHTS = 3  # the best trials whose model weights go to MLflow
WEIGHTS_FOLDER = "weights"  # in the search's folder: those weights, weights-only files


def save_weights(rows: list[dict], checkpoints: dict[str, str], request: SearchRequest, out: IO[str]) -> dict[str, Path]:
    """The model weights (no optimiser, no RNG) of the best :data:`BEST_WEIGHTS` trials, as
    weights-only ``torch.save`` files in the search's folder, by trial id (a cross-validated
    trial's: every fold model's, keyed ``fold<i>.<parameter>``), each with its architecture beside
    it (:func:`write_architecture`: ``<trial_id>.json``), which ``backbone=saved`` reads."""
    from tuneddml.results import row_config

    metric, mode = request.space.metric, request.space.mode
    scored = [r for r in rows if r.get(f"{BEST}{metric}") is not None and r["status"] != "failed"]
    scored.sort(key=lambda r: r[f"{BEST}{metric}"], reverse=mode == "max")
    saved: dict[str, Path] = {}
    for row in scored[:BEST_WEIGHTS]:
        folder = checkpoints.get(row["trial_id"])
        if not folder or "://" in folder:
            continue
        try:
            import torch

            from tuneddml.tuning.trainable import CHECKPOINT_FILE

            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
            target = request.folder / WEIGHTS_FOLDER / f"{row['trial_id']}.pt"
            target.parent.mkdir(exist_ok=True)
            if state.get("folds"):  # a cross-validated trial: every fold model, keys fold<i>.<param>
                weights = {f"fold{i}.{k}": v for i, f in enumerate(state["folds"]) for k, v in f["model"].items()}
            else:
                weights = state["model"]
            torch.save({k: v.detach().clone() for k, v in weights.items()}, target)
            write_architecture(target, state.get("config") or row_config(row))
            saved[row["trial_id"]] = target
        except Exception as exc:  # the weights are a bonus: never cost the search its results
            print(f"warning: weights of trial {row['trial_id']} not saved: {exc}", file=out)
    return saved


def write_architecture(weights: Path, config: dict[str, Any]) -> Path:
    """``<trial_id>.json`` beside a weights file: the trial's flat config (``backbone``,
    ``backbone.<param>``, ...), so the weights say which architecture they belong to (the ``saved``
    backbone builds it from this). Written atomically."""
    import json

    target = weights.with_suffix(".json")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(dict(config), indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(target)
    return target


def trial_series(rows: list[dict], metric: str, mode: str) -> dict[str, list[list[float]]]:
    """The parent run's per-trial series, at step = a trial's 1-based start order: each scored
    trial's best ``metric`` (``trial/<metric>``) and the best of the trials up to it
    (``trial/best_<metric>``; a trial with no value repeats the best before it)."""
    from tuneddml.tracking.search_run import SERIES

    values: list[list[float]] = []
    best: list[list[float]] = []
    so_far: float | None = None
    for row in sorted(rows, key=lambda r: r["order"]):
        value = row.get(f"{BEST}{metric}")
        step = int(row["order"]) + 1
        if value is not None and value == value:
            values.append([step, float(value)])
            so_far = value if so_far is None else (max if mode == "max" else min)(so_far, value)
        if so_far is not None:
            best.append([step, float(so_far)])
    return {f"{SERIES}{metric}": values, f"{SERIES}best_{metric}": best}


def best_link(best: dict, searched: Any, metric: str) -> dict[str, Any]:
    """What the parent run's description says of the best trial (see ``SearchRun.finish``)."""
    from tuneddml.results import row_config
    from tuneddml.results.labels import trial_label

    return {
        "trial": best["trial_id"],
        "label": trial_label(row_config(best), list(searched), int(best["order"]) + 1),
        "metric": metric,
        "value": float(best[f"{BEST}{metric}"]),
    }
