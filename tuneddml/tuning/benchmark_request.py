# Long file: a benchmark's request: its flags, every search of it checked up front, the spaces it writes and its resume (resumed_settings, shared with the multi-fidelity search).
"""A benchmark request, validated before Ray or MLflow start (:func:`prepare_benchmark`), and the
space files it runs: one search per loss over the loss's own declared ranges, then the final
re-training of each loss's best configuration (:func:`final_space`).

The protocol is the Reality Check's (Musgrave et al., ECCV 2020): the searches see only the
training classes, each trial's value is the mean validation metric of ``folds`` class-disjoint
fold models (``cross_validate=true``); every loss gets the same searcher and the same number of
trials; each loss's best configuration is then re-trained with ``seeds`` fresh training seeds and
scored once on the test classes, per fold model and as the concatenated fold ensemble.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.results import RUNS_FOLDER

BENCHMARK_FILE = "benchmark.json"  # the benchmark's record: settings, MLflow runs, each phase's state
BENCHMARK_FORMAT = "tuneddml.benchmark/1"
SPACES_FOLDER = "spaces"  # the space files the benchmark's searches run
SEARCHES_FOLDER = "searches"  # the searches themselves (one per loss, and "final")
FINAL = "final"

#: shipped lists of losses: the Reality Check's families among the seed papers' losses, and every
#: loss of the project (``seed_methods``: every registered loss but an adapter's)
LOSS_SETS = {
    "reality_check": (
        "contrastive",
        "triplet",
        "multi_similarity",
        "margin",
        "npair",
        "supcon",
        "proxy_nca",
        "proxy_anchor",
        "normsoftmax",
        "softtriple",
    ),
}
#: a loss that needs its own batch sampler (unless the benchmark fixes one for every loss)
LOSS_SAMPLERS = {"npair": "npairs"}


@dataclass
class BenchmarkRequest:
    name: str
    losses: list[str]
    searcher: str
    scheduler: str
    trials: int  # per loss
    folds: int
    seeds: list[int]  # the final re-training's training seeds
    metric: str
    fixed: dict[str, Any]  # every trial's settings (KEY=VALUE), before the benchmark's own
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    address: str | None
    tracking_uri: str
    storage: Path
    resume: bool = False
    seed: int = 0  # the searchers'
    start_points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # warm starts per loss
    preset: str | None = None  # a published protocol's settings (tuneddml/presets), under KEY=VALUE

    @property
    def folder(self) -> Path:
        return self.storage / self.name

    def settings(self) -> dict[str, Any]:
        """What ``benchmark.json`` records: everything a resumed benchmark keeps."""
        return {
            "losses": self.losses,
            "searcher": self.searcher,
            "scheduler": self.scheduler,
            "trials": self.trials,
            "folds": self.folds,
            "seeds": self.seeds,
            "metric": self.metric,
            "fixed": self.fixed,
            "cpus_per_trial": self.cpus_per_trial,
            "gpus_per_trial": self.gpus_per_trial,
            "max_concurrent": self.max_concurrent,
            "tracking_uri": self.tracking_uri,
            "seed": self.seed,
            "start_points": self.start_points,
            "preset": self.preset,
        }

    def search_kwargs(self) -> dict[str, Any]:
        """The ``prepare_search`` arguments every search of the benchmark shares."""
        return {
            "cpus_per_trial": self.cpus_per_trial,
            "gpus_per_trial": self.gpus_per_trial,
            "max_concurrent": self.max_concurrent,
            "address": self.address,
            "tracking_uri": self.tracking_uri,
            "storage": str(self.folder / SEARCHES_FOLDER),
            "seed": self.seed,
        }


def resolve_losses(value: str | list[str]) -> list[str]:
    """``--losses``: a shipped set (:data:`LOSS_SETS`, or ``seed_methods``) or a comma list."""
    from tuneddml.losses import LOSSES

    own = [n for n in LOSSES.names() if ":" not in n]
    sets = {**LOSS_SETS, "seed_methods": tuple(own)}
    names = list(sets[value]) if isinstance(value, str) and value in sets else None
    if names is None:
        names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    valid = f"a set ({', '.join(sets)}) or a comma list of losses: {', '.join(own)}"
    if not names:
        raise ConfigError("--losses", value, valid)
    for n in names:
        if n not in LOSSES.names():
            raise ConfigError("--losses", n, valid)
        if not LOSSES.get(n, "--losses").search:
            raise ConfigError("--losses", n, "a loss that declares ranges to search (register(search=...))")
    if len(set(names)) != len(names):
        raise ConfigError("--losses", value, "each loss once")
    return names


def loss_fixed(request: BenchmarkRequest, loss: str, split: str) -> dict[str, Any]:
    """The fixed settings of ``loss``'s trials: the benchmark's, cross-validated over its folds."""
    fixed = {**request.fixed, "split": split, "cross_validate": True, "num_folds": request.folds}
    if loss in LOSS_SAMPLERS and "sampler" not in request.fixed:
        fixed["sampler"] = LOSS_SAMPLERS[loss]
    return fixed


def loss_space(request: BenchmarkRequest, loss: str) -> dict[str, Any]:
    """The space of ``loss``'s search: its own declared ranges, the benchmark's budget."""
    space: dict[str, Any] = {
        "description": f"benchmark {request.name}: {loss} over the ranges it declares, "
        f"{request.trials} trials, each the mean of {request.folds} fold models",
        "metric": request.metric,
        "mode": "max",
        "searcher": request.searcher,
        "num_samples": request.trials,
        "scheduler": request.scheduler,
        "fixed": loss_fixed(request, loss, "val"),
        "parameters": {"loss": {"branches": {loss: "own"}}},
    }
    if request.preset:
        space["preset"] = request.preset
    if request.start_points.get(loss):
        space["start_points"] = [{"loss": loss, **p} for p in request.start_points[loss]]
    return space


def final_space(request: BenchmarkRequest, best: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The final re-training: each loss's best configuration (``best``: loss -> its searched keys)
    with each of the benchmark's seeds, on the test classes (``searcher: points``)."""
    losses = [loss for loss in request.losses if loss in best]
    parameters: dict[str, Any] = {"loss": {"branches": {loss: "own" for loss in losses}}}
    # a setting the benchmark fixes for some losses only (npair's sampler) becomes a parameter
    # with one value per loss, so one search holds every loss
    common = loss_fixed(request, "", "test")
    extra: dict[str, dict[str, list[str]]] = {}
    for loss in losses:
        for k, v in loss_fixed(request, loss, "test").items():
            if k not in common:
                extra.setdefault(k, {}).setdefault(json.dumps(v), []).append(loss)
    for k, values in extra.items():
        default = [n for n in losses if all(n not in names for names in values.values())]
        variants = [{"choice": [json.loads(v)], "when": {"loss": names}} for v, names in values.items()]
        if default:
            variants.append({"choice": [common.get(k, _default_of(k))], "when": {"loss": default}})
        parameters[k] = variants if len(variants) > 1 else variants[0]
    parameters["seed"] = {"choice": list(request.seeds)}
    points = []
    for loss in losses:
        own = {k: v for k, v in loss_fixed(request, loss, "test").items() if k in extra}
        for seed in request.seeds:
            points.append({**best[loss], **own, "loss": loss, "seed": seed})
    space = {
        "description": f"benchmark {request.name}: each loss's best configuration re-trained with "
        f"{len(request.seeds)} seeds, scored on the test classes",
        "metric": request.metric,
        "mode": "max",
        "searcher": "points",
        "num_samples": len(points),
        "scheduler": "fifo",
        "fixed": common,
        "parameters": parameters,
        "start_points": points,
    }
    if request.preset:
        space["preset"] = request.preset
    return space


def _default_of(key: str) -> Any:
    from tuneddml.config import TrialConfig

    return getattr(TrialConfig(), key)


def write_space(path: Path, space: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(space, sort_keys=False))
    tmp.replace(path)
    return path


def prepare_benchmark(
    *,
    losses: str | list[str] = "reality_check",
    searcher: str | None = None,
    scheduler: str | None = None,
    trials: int | None = None,
    folds: int | None = None,
    seeds: int | None = None,
    metric: str | None = None,
    overrides: dict[str, Any] | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    resume: bool = False,
    seed: int | None = None,
    start_points: dict[str, list[dict[str, Any]]] | None = None,
    preset: str | None = None,
) -> BenchmarkRequest:
    """Validate every input (ConfigError naming the bad one); starts and writes nothing. Each
    loss's search is checked as ``search`` checks one (its space, its representative trials'
    data, sampler and loss), and the final phase's trials likewise, with each loss's start point."""
    from tuneddml.evaluation import metric_keys
    from tuneddml.tuning.request import _check_storage, prepare_search

    given = {
        "--losses": None if losses == "reality_check" else losses,
        "--searcher": searcher,
        "--scheduler": scheduler,
        "--trials": trials,
        "--folds": folds,
        "--seeds": seeds,
        "--metric": metric,
        "--cpus-per-trial": cpus_per_trial,
        "--gpus-per-trial": gpus_per_trial,
        "--max-concurrent": max_concurrent,
        "--seed": seed,
        "--preset": preset,
    }
    if "://" in (storage or ""):
        raise ConfigError("--storage", storage, "a folder (a benchmark keeps its searches in it)")
    storage_path = Path(storage or RUNS_FOLDER).expanduser().resolve()
    _check_storage(storage_path)
    if resume:
        return _resumed(storage_path, name, given, overrides, address, tracking_uri)
    names = resolve_losses(losses)
    for flag, value, lo in (("--trials", trials, 1), ("--folds", folds, 2), ("--seeds", seeds, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
            raise ConfigError(flag, value, f"an integer >= {lo}")
    from tuneddml.searchers import check_searcher
    from tuneddml.searchers.schedulers import SCHEDULERS

    check_searcher(searcher or "tpe")
    if searcher == "points":
        raise ConfigError("--searcher", searcher, "a searcher that proposes configurations (points only repeats given ones)")
    SCHEDULERS.get(scheduler or "fifo", "--scheduler")
    if preset is not None:
        from tuneddml.presets import read_preset

        read_preset(preset, "--preset")
    metric = metric or "map_at_r"
    if metric not in metric_keys():
        raise ConfigError("--metric", metric, ", ".join(metric_keys()))
    for key in ("split", "cross_validate", "num_folds", "fold"):
        if key in (overrides or {}):
            raise ConfigError(key, overrides[key], "not set by hand: the benchmark sets it (--folds)")
    if "seed" in (overrides or {}):
        raise ConfigError("seed", overrides["seed"], "not set by hand: --seeds gives the final training seeds")
    name = name or f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    if (storage_path / name).exists():
        raise ConfigError("--name", name, "a new benchmark name (that one exists: add --resume to continue it)")
    unknown = sorted(set(start_points or {}) - set(names))
    if unknown:
        raise ConfigError("start_points", unknown[0], f"one of the benchmark's losses: {', '.join(names)}")
    request = BenchmarkRequest(
        name=name,
        losses=names,
        searcher=searcher or "tpe",
        scheduler=scheduler or "fifo",
        trials=trials or 8,
        folds=folds or 4,
        seeds=list(range(1, (seeds or 3) + 1)),
        metric=metric,
        fixed=dict(overrides or {}),
        cpus_per_trial=cpus_per_trial or 1.0,
        gpus_per_trial=gpus_per_trial or 0.0,
        max_concurrent=max_concurrent,
        address=address,
        tracking_uri=tracking_uri or "",
        storage=storage_path,
        seed=seed or 0,
        start_points=dict(start_points or {}),
        preset=preset,
    )
    # every search as `search` would check it, on space files in a scratch folder
    scratch = Path(tempfile.mkdtemp(prefix="tuneddml-benchmark-"))
    try:
        kwargs = {**request.search_kwargs(), "storage": str(scratch / SEARCHES_FOLDER)}
        first = None
        for loss in names:
            path = write_space(scratch / f"{loss}.yaml", loss_space(request, loss))
            checked = prepare_search(space=str(path), name=loss, **kwargs)
            first = first or checked
            kwargs["address_checked"] = True  # the cluster was asked once
        assert first is not None
        request.tracking_uri = first.tracking_uri
        request.max_concurrent = first.max_concurrent
        starts = {loss: {"loss": loss} for loss in names}
        path = write_space(scratch / f"{FINAL}.yaml", final_space(request, starts))
        prepare_search(space=str(path), name=FINAL, **kwargs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return request


def resumed_settings(
    storage: Path,
    name: str | None,
    given: dict[str, Any],
    overrides: dict[str, Any] | None,
    address: str | None,
    tracking_uri: str | None,
    *,
    record_file: str,
    record_format: int,
    what: str,
) -> tuple[str, dict[str, Any]]:
    """The name and recorded settings of the ``what`` (a benchmark, a multi-fidelity search) to
    resume: ``name``, or the latest under ``storage`` holding ``record_file``; a flag or setting
    that would change it is refused."""
    if name is None:
        found = sorted(storage.glob(f"*/{record_file}"), key=lambda p: os.path.getmtime(p), reverse=True)
        if not found:
            raise ConfigError("--resume", str(storage), f"a folder holding {what} to resume (--storage)")
        name = found[0].parent.name
    record = storage / name / record_file
    if not record.is_file():
        raise ConfigError("--name", name, f"{what} under {storage} to resume")
    state = json.loads(record.read_text())
    if state.get("format") != record_format:
        raise ConfigError("--name", name, f"a record of {what} of format {record_format}")
    settings = state["settings"]
    if address is not None:
        from tuneddml.tuning.request import _check_address

        _check_address(address)
    changed = [f"{flag} {value}" for flag, value in given.items() if value is not None]
    if overrides:
        changed.append(" ".join(f"{k}={v}" for k, v in overrides.items()))
    if tracking_uri and tracking_uri != settings["tracking_uri"]:
        changed.append(f"--tracking-uri {tracking_uri}")
    if changed:
        raise ConfigError("--resume", ", ".join(changed)[:80], f"no flag that changes {what}: it keeps its settings")
    return name, settings


def _resumed(
    storage: Path,
    name: str | None,
    given: dict[str, Any],
    overrides: dict[str, Any] | None,
    address: str | None,
    tracking_uri: str | None,
) -> BenchmarkRequest:
    """The request a benchmark was started with (``--resume``)."""
    name, settings = resumed_settings(
        storage, name, given, overrides, address, tracking_uri,
        record_file=BENCHMARK_FILE, record_format=BENCHMARK_FORMAT, what="the benchmark",
    )
    return BenchmarkRequest(
        name=name,
        losses=settings["losses"],
        searcher=settings["searcher"],
        scheduler=settings["scheduler"],
        trials=settings["trials"],
        folds=settings["folds"],
        seeds=settings["seeds"],
        metric=settings["metric"],
        fixed=settings["fixed"],
        cpus_per_trial=settings["cpus_per_trial"],
        gpus_per_trial=settings["gpus_per_trial"],
        max_concurrent=settings["max_concurrent"],
        address=address,
        tracking_uri=settings["tracking_uri"],
        storage=storage,
        resume=True,
        seed=settings["seed"],
        start_points=settings.get("start_points", {}),
        preset=settings.get("preset"),
    )
