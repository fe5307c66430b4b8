"""The MLflow store: tracking URIs (the embedded sqlite default, checked before anything starts),
the client, and batched logging of parameters and metrics. Only :mod:`tuneddml.tracking` imports
mlflow; what a search writes there is :class:`~tuneddml.tracking.search_run.SearchRun`'s."""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
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


#: the schemes of MLflow's tracking-store registry (``mlflow.tracking._tracking_service.utils``;
#: a test holds this list to it): a folder, databases through SQLAlchemy, a server, Databricks
DATABASE_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql")
SERVER_SCHEMES = ("http", "https")
FILE_SCHEMES = ("", "file")
DATABRICKS_SCHEMES = ("databricks", "databricks-uc", "uc")
TRACKING_SCHEMES = (*FILE_SCHEMES, *DATABASE_SCHEMES, *SERVER_SCHEMES, *DATABRICKS_SCHEMES)
_EXPECTED = "sqlite:///PATH, postgresql|mysql|mssql[+DRIVER]://..., http(s)://HOST:PORT, file:PATH or ./FOLDER"
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_tracking_uri(uri: str) -> None:
    """Raise ConfigError unless ``uri`` is a tracking URI MLflow accepts and it answers; cheap
    (a database is reached in about a second), and before Ray or MLflow start (no mlflow import)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    db_type, plus, driver = scheme.partition("+")
    if len(scheme) == 1 and scheme.isalpha():  # a Windows drive letter: a path, as for MLflow
        scheme = db_type = ""
    if uri in DATABRICKS_SCHEMES or scheme in DATABRICKS_SCHEMES:
        return  # Databricks: reached with the user's Databricks credentials, not checked here
    if db_type == "sqlite" and scheme.count("+") <= 1:
        rest = uri.split("://", 1)[1] if "://" in uri else ""
        path = Path(rest[1:]) if rest.startswith("/") and len(rest) > 1 else None
        if path is None or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise ConfigError("--tracking-uri", uri, "sqlite:///PATH/mlflow.db in a writable folder")
        return
    if db_type in DATABASE_SCHEMES and scheme.count("+") <= 1 and (not plus or driver.isidentifier()):
        _check_database(uri, db_type)
        return
    if scheme in SERVER_SCHEMES and parsed.hostname:
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status >= 400:
                    raise OSError(response.status)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise ConfigError("--tracking-uri", uri, f"a reachable MLflow server ({exc})") from None
        return
    if scheme in FILE_SCHEMES:
        # a folder: one that exists, or a new one named as a path (./mlruns), not a bare word
        # (`garbage` is a typo more often than a wish for a folder ./garbage)
        folder = Path(parsed.path if scheme == "file" else uri).expanduser()
        named_as_path = scheme == "file" or os.sep in uri or uri.startswith(("~", "."))
        if not (folder.is_dir() or (named_as_path and folder.parent.is_dir())):
            raise ConfigError("--tracking-uri", uri, _EXPECTED)
        if not os.access(folder if folder.is_dir() else folder.parent, os.W_OK):
            raise ConfigError("--tracking-uri", uri, "a folder you can write in")
        return
    raise ConfigError("--tracking-uri", uri, _EXPECTED)


def _check_database(uri: str, db_type: str) -> None:
    """A database URI: its SQLAlchemy driver installed, its server answering (a TCP connect, then
    a login with a 5-s timeout). SQLAlchemy is imported here only (a quarter of a second)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError("--tracking-uri", uri, f"a database URI SQLAlchemy reads ({exc})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise ConfigError(
            "--tracking-uri", _hide_password(uri), f"an installed {db_type} driver (pip install {missing})"
        ) from None
    host, port = url.host or "127.0.0.1", url.port or _DEFAULT_PORTS.get(db_type)
    import socket

    try:
        with socket.create_connection((host, int(port or 0)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(
            "--tracking-uri", _hide_password(uri), f"a reachable {db_type} server ({exc.strerror or exc})"
        ) from None
    from sqlalchemy import create_engine

    timeout = {"mssql": {"timeout": 5}}.get(db_type, {"connect_timeout": 5})
    engine = create_engine(url, connect_args=timeout, poolclass=None)
    try:
        with engine.connect():
            pass
    except Exception as exc:  # the driver's own errors: bad login, unknown database, ...
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise ConfigError("--tracking-uri", _hide_password(uri), f"a database that accepts us ({first})") from None
    finally:
        engine.dispose()


def _hide_password(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@", 1)
    return uri


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


#: the experiment tag that says what kind of work an experiment holds, and the value for model
#: training (MLflow 3.17's UI, ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT`` in its JS bundle; its
#: other kinds are ``genai_development``, ``finetuning``, ...). The 3.17 UI picks its view from
#: its own "workflow type" switch (``?workflowType=machine_learning`` in a URL, remembered by the
#: browser), and shows this tag in the experiment's kind selector.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: the query that opens a page of the 3.17 UI in its model-training view
ML_VIEW = "workflowType=machine_learning"


def experiment_id(mlflow: Any, name: str) -> str:
    """The id of experiment ``name``, created (or restored from deletion) if need be, and tagged
    as a model-training experiment (:data:`EXPERIMENT_KIND`)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow.restore_experiment(experiment.experiment_id)
        found = str(experiment.experiment_id)
        if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            mlflow.set_experiment_tag(found, *EXPERIMENT_KIND)
        return found
    return str(mlflow.create_experiment(name, tags=dict([EXPERIMENT_KIND])))


def log_params(mlflow: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Parameters as text (cut at MLflow's 6,000 characters), 100 to a batch."""
    from mlflow.entities import Param

    items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_batch(run_id, params=items[start : start + 100])


def log_metrics(mlflow: Any, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """The finite numbers of ``metrics`` at ``step``, 500 to a batch."""
    log_points(mlflow, run_id, ((k, v, step) for k, v in metrics.items()))


def log_points(mlflow: Any, run_id: str, points: Iterable[tuple[str, Any, int]]) -> None:
    """``(key, value, step)`` points, the finite numbers among them, 500 to a batch."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, int(step))
        for k, v, step in points
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    for start in range(0, len(items), 500):
        mlflow.log_batch(run_id, metrics=items[start : start + 500])

