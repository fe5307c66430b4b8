"""The MLflow store: tracking URIs (the embedded sqlite default, checked before anything starts),
the client, and batched logging of parameters and metrics. Only :mod:`tuneddml.tracking` imports
mlflow; what a search writes there is :class:`~tuneddml.tracking.search_run.SearchRun`'s."""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneddml.errors import ConfigError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# the sqlite store's schema-migration chatter is not the user's business
import logging

logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


def default_tracking_uri(folder: str | Path = ".") -> str:
    """The embedded default: a sqlite store in the working folder."""
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str) -> None:
    """Raise ConfigError unless ``uri`` is usable; cheap, and before Ray or MLflow start."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if path is None or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise ConfigError("--tracking-uri", uri, "sqlite:///PATH/mlflow.db in a writable folder")
        return
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status >= 400:
                    raise OSError(response.status)
        except (OSError, urllib.error.URLError) as exc:
            raise ConfigError("--tracking-uri", uri, f"a reachable MLflow server ({exc})") from None
        return
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        if not (folder.is_dir() or folder.parent.is_dir()):
            raise ConfigError("--tracking-uri", uri, "an existing folder, sqlite:///PATH or http://HOST:PORT")
        return
    raise ConfigError("--tracking-uri", uri, "sqlite:///PATH, http(s)://HOST:PORT or a folder")


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow: Any, name: str) -> str:
    """The id of experiment ``name``, created (or restored from deletion) if need be."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)
    return str(mlflow.create_experiment(name))


def log_params(mlflow: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Parameters as text (cut at MLflow's 6,000 characters), 100 to a batch."""
    from mlflow.entities import Param

    items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_batch(run_id, params=items[start : start + 100])


def log_metrics(mlflow: Any, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """The finite numbers of ``metrics`` at ``step``, 500 to a batch."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    for start in range(0, len(items), 500):
        mlflow.log_batch(run_id, metrics=items[start : start + 500])

