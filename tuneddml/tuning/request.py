"""A search request, validated: everything the user can get wrong is checked by
:func:`prepare_search` before Ray or MLflow start. This module imports no Ray (a test holds it to
that), so a bad request costs a fraction of a second and writes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
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
    from tuneddml.searchers import check_searcher
    from tuneddml.searchers.schedulers import SCHEDULERS
    from tuneddml.searchers.space import load_space
    from tuneddml.tracking import check_tracking_uri, default_tracking_uri

    loaded = load_space(space)
    searcher = searcher or loaded.searcher
    check_searcher(searcher)
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
    if storage_path.exists() and not storage_path.is_dir():
        raise ConfigError("--storage", str(storage_path), "a folder")
    if not storage_path.parent.is_dir():
        raise ConfigError("--storage", str(storage_path), "a path whose parent folder exists")
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
        # a resumed search is the same search: its budget, searcher and settings come from its record
        searcher, scheduler, num_samples = meta["searcher"], meta["scheduler"], meta["num_samples"]
        overrides, cpus_per_trial = meta["overrides"], meta["cpus_per_trial"]
        tracking_uri = tracking_uri or meta["tracking_uri"]
        if not ray_storage:  # Ray's state of the search, read as Ray will read it (no Ray here)
            check_resumable(storage_path / name, searcher)
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
    candidates = sorted(storage.glob(f"{space_name}-*/{SEARCH_FILE}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError("--resume", space_name, f"an earlier search of this space under {storage}")
    return candidates[-1].parent.name
