"""A search request, validated: everything the user can get wrong is checked by
:func:`prepare_search` before Ray or MLflow start. This module imports no Ray (a test holds it to
that), so a bad request costs a fraction of a second and writes nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.results import RUNS_FOLDER, SEARCH_FILE
from tuneddml.tuning.resume_check import check_resumable


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
    storage: Path  # local folder of the search's own records (search.json, results table, report)
    name: str
    resume: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    ray_storage: str = ""  # where Ray keeps trials and checkpoints: ``storage``, or a cloud URI
    # the MLflow experiment of the parent run (None: the space's name) and extra tags of the parent
    # run (a benchmark nests each loss's search under its own run with ``mlflow.parentRunId``)
    experiment: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

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
    """Ask Ray whether a driver can join ``address`` (a subprocess: this module imports no Ray)."""
    from tuneddml.tuning.ray_address import check_address

    check_address(address)


def prepare_search(
    *,
    space: str,
    searcher: str | None = None,
    scheduler: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    seed: int | None = None,
    address_checked: bool = False,
) -> SearchRequest:
    """Validate every input; raises ConfigError naming the bad one. Starts nothing.

    ``None`` means "not given": the space's or the built-in default (1 CPU and no GPU per trial,
    seed 0); on ``--resume``, what the search recorded, and a given value must equal it."""
    from tuneddml.searchers import check_searcher
    from tuneddml.searchers.schedulers import SCHEDULERS
    from tuneddml.searchers.space import load_space
    from tuneddml.tracking import check_tracking_uri, default_tracking_uri

    given = {
        "--searcher": searcher,
        "--scheduler": scheduler,
        "--num-samples": num_samples,
        "--max-concurrent": max_concurrent,
        "--cpus-per-trial": cpus_per_trial,
        "--gpus-per-trial": gpus_per_trial,
        "--seed": seed,
        "--tracking-uri": tracking_uri,
    }
    cpus_per_trial = 1.0 if cpus_per_trial is None else cpus_per_trial
    gpus_per_trial = 0.0 if gpus_per_trial is None else gpus_per_trial
    seed = 0 if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError("--seed", seed, f"an integer in [0, 2**32 - 1 = {SEED_LIMIT - 1}]")
    loaded = load_space(space)
    searcher = searcher or loaded.searcher
    check_searcher(searcher, loaded)
    scheduler = scheduler or loaded.scheduler
    SCHEDULERS.get(scheduler, "--scheduler")
    num_samples = loaded.num_samples if num_samples is None else num_samples
    if num_samples < 1:
        raise ConfigError("--num-samples", num_samples, "a positive number of trials")
    if cpus_per_trial <= 0:
        raise ConfigError("--cpus-per-trial", cpus_per_trial, "a positive number of CPUs")
    if gpus_per_trial < 0:
        raise ConfigError(
            "--gpus-per-trial", gpus_per_trial, "zero or a positive (fractional) number of GPUs"
        )
    if gpus_per_trial > 0 and address is None and not resume:
        _check_local_gpus(gpus_per_trial)
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
    storage_path = Path(storage or RUNS_FOLDER).expanduser().resolve()
    _check_storage(storage_path)
    if resume:
        name = name or _latest_search(storage_path, loaded.name)
        meta_file = storage_path / name / SEARCH_FILE
        if not meta_file.is_file():
            raise ConfigError("--name", name, f"a search under {storage_path} to resume")
        meta = json.loads(meta_file.read_text())
        if overrides and dict(overrides) != meta["overrides"]:
            raise ConfigError(
                "--resume",
                " ".join(f"{k}={v}" for k, v in overrides.items()),
                "no KEY=VALUE settings: a resumed search keeps the settings it started with",
            )
        _check_resume_flags(given, meta, loaded)
        # a resumed search is the same search: its budget, searcher and settings come from its record
        searcher, scheduler, num_samples = meta["searcher"], meta["scheduler"], meta["num_samples"]
        overrides, cpus_per_trial = meta["overrides"], meta["cpus_per_trial"]
        # recorded since issue 9 (a resumed GPU search keeps its GPUs)
        gpus_per_trial = meta.get("gpus_per_trial", gpus_per_trial)
        max_concurrent, seed = meta.get("max_concurrent", max_concurrent), meta.get("seed", seed)
        tracking_uri = tracking_uri or meta["tracking_uri"]
        if not ray_storage:  # Ray's state of the search, read as Ray will read it (no Ray here)
            check_resumable(storage_path / name, searcher)
    tracking_uri = tracking_uri or default_tracking_uri(".")
    check_tracking_uri(tracking_uri)
    if address is not None and not address_checked:  # (a benchmark asks once for all its searches)
        _check_address(address)
    if not resume:
        name = name or f"{loaded.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (storage_path / name).exists():
            raise ConfigError(
                "--name", name, "a new search name (that one exists: add --resume to continue it)"
            )
    if not resume:  # the trials run in Ray's own folders: a path given relative to here, made absolute
        overrides = absolute_paths(overrides or {})
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
    from tuneddml.tuning.preflight import check_trials

    # data, sampler, loss and metric of the representative points
    check_trials(loaded, request.fixed, cluster=address is not None)
    return request


#: settings that are paths on the machine that starts the search
PATH_SETTINGS = ("data_root", "feature_cache", "backbone.path")


def absolute_paths(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with each relative :data:`PATH_SETTINGS` value made absolute from the working
    folder (a trial runs in Ray's trial folder, where a relative path would not be found)."""
    out = dict(settings)
    for key in PATH_SETTINGS:
        value = out.get(key)
        if isinstance(value, str) and value and "://" not in value and not Path(value).expanduser().is_absolute():
            out[key] = str(Path(value).expanduser().resolve())
    return out


def local_gpu_count() -> int:
    """CUDA devices this machine has (those ``CUDA_VISIBLE_DEVICES`` leaves), as a local Ray counts them."""
    import torch

    return torch.cuda.device_count()


def _check_local_gpus(gpus_per_trial: float) -> None:
    """A local search's trials that ask for more GPUs than the machine has would wait for ever."""
    available = local_gpu_count()
    if available == 0:
        raise ConfigError(
            "--gpus-per-trial",
            gpus_per_trial,
            "0 here: this machine has no CUDA device (a search on GPU nodes joins them with --address)",
        )
    if gpus_per_trial > available:
        raise ConfigError(
            "--gpus-per-trial", gpus_per_trial, f"at most {available}, the GPUs of this machine"
        )


#: seeds numpy and torch accept: [0, 2**32)
SEED_LIMIT = 2**32
#: flag -> its key in search.json (the flags that define a search: a resume may not change them)
_RECORDED = {
    "--searcher": "searcher",
    "--scheduler": "scheduler",
    "--num-samples": "num_samples",
    "--max-concurrent": "max_concurrent",
    "--cpus-per-trial": "cpus_per_trial",
    "--gpus-per-trial": "gpus_per_trial",
    "--seed": "seed",
    "--tracking-uri": "tracking_uri",
}


def _check_resume_flags(given: dict[str, Any], meta: dict[str, Any], space: Any) -> None:
    """A resumed search is the search it was: a flag given with ``--resume`` must equal what
    ``search.json`` recorded (a flag it did not record cannot be shown equal, so it is refused)."""
    changed = [
        f"{flag} {value}"
        for flag, value in given.items()
        if value is not None and (_RECORDED[flag] not in meta or meta[_RECORDED[flag]] != value)
    ]
    recorded = meta.get("space_file")
    if recorded and space.path is not None and Path(recorded).resolve() != Path(space.path).resolve():
        changed.insert(0, f"--space {space.path}")
    if changed:
        shown = ", ".join(changed)
        shown = shown if len(shown) < 80 else shown[:77] + "..."
        raise ConfigError(
            "--resume", shown, "no flag that changes the search: it keeps the settings it was started with"
        )


def _check_storage(path: Path) -> None:
    """``--storage``: a folder (or a path whose parent is a folder) this process can create files in.
    Tried for real (a temporary folder, removed at once): permission bits do not bind root."""
    if path.exists() and not path.is_dir():
        raise ConfigError("--storage", str(path), "a folder")
    if not path.parent.is_dir():
        raise ConfigError("--storage", str(path), "a path whose parent folder exists")
    target = path if path.exists() else path.parent
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tuneddml-probe-", dir=target))
    except OSError as exc:
        raise ConfigError(
            "--storage", str(path), f"a folder you can write in ({target}: {exc.strerror or exc})"
        ) from None


def _latest_search(storage: Path, space_name: str) -> str:
    candidates = sorted(storage.glob(f"{space_name}-*/{SEARCH_FILE}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError("--resume", space_name, f"an earlier search of this space under {storage}")
    return candidates[-1].parent.name
