"""Writing and reading results tables, local or remote (``s3://``, ``gs://``: whatever
``pyarrow.fs`` reads); the columns are :mod:`tuneddml.results.schema`'s. The search driver writes
with :func:`write_results`; the report and its plots read with :func:`find_results` and
:func:`load_results` (which also reads each search's per-epoch log, :func:`read_epochs`) and rank
trials with :func:`score_column` / :func:`scores`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from tuneddml.errors import ConfigError
from tuneddml.results.schema import BEST, CONFIG, EPOCH, EPOCHS_FILE, METRIC, RESULTS_FILE, RUNS_FOLDER


def write_results(rows: list[dict], path: Path) -> None:
    """One row per trial (columns: :mod:`tuneddml.results.schema`), written atomically. A column whose
    values mix types (a loss name for one trial, a number for another) becomes strings."""
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


@dataclass(frozen=True)
class Location:
    """A file or folder, local or remote (``s3://``, ``gs://``, ``file://``: whatever pyarrow.fs reads)."""

    fs: pafs.FileSystem
    path: str
    prefix: str = ""  # the ``scheme://`` a remote location is shown with; empty for a local path

    @classmethod
    def parse(cls, text: str | os.PathLike, field: str = "RESULTS") -> Location:
        text = str(text)
        if "://" in text:
            try:
                fs, path = pafs.FileSystem.from_uri(text)
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise ConfigError(field, text, f"a readable location ({exc})") from None
            return cls(fs, path.rstrip("/"), text[: text.index("://") + 3])
        return cls(pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()))

    @property
    def local(self) -> Path | None:
        return Path(self.path) if not self.prefix else None

    def child(self, name: str) -> Location:
        return Location(self.fs, f"{self.path}/{name}", self.prefix)

    def kind(self) -> pafs.FileType:
        try:
            return self.fs.get_file_info(self.path).type
        except (OSError, pa.ArrowException):
            return pafs.FileType.NotFound

    def parent(self) -> Location:
        return Location(self.fs, self.path.rsplit("/", 1)[0], self.prefix)

    def searches(self) -> list[Location]:
        """Results files of the search folders directly under this folder."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except (OSError, pa.ArrowException):
            return []
        found = [
            Location(self.fs, i.path, self.prefix).child(RESULTS_FILE)
            for i in infos
            if i.type == pafs.FileType.Directory
        ]
        return sorted((f for f in found if f.kind() == pafs.FileType.File), key=str)

    def __str__(self) -> str:
        return f"{self.prefix}{self.path}"


Source = str | os.PathLike | Location | pa.Table | pd.DataFrame


@dataclass
class Results:
    """All trials of the searches read, with the search metric and where each search lives;
    ``epochs``: their per-epoch records (``trial_id``, ``epoch``, metrics, ``loss/<term>``), empty
    for searches without an epoch log."""

    frame: pd.DataFrame
    metric: str
    mode: str
    folders: list[Location] = field(default_factory=list)
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)


def find_results(
    paths: Sequence[str | os.PathLike], *, storage: str | os.PathLike | None = None, name: str | None = None
) -> list[Location]:
    """Results files named by ``paths`` (files or search folders) or, without paths, under ``storage``."""
    storage_at = Location.parse(storage or RUNS_FOLDER, "--storage")
    found: list[Location] = []
    for item in paths:
        at = Location.parse(item)
        if at.kind() == pafs.FileType.File:
            found.append(at)
        elif at.child(RESULTS_FILE).kind() == pafs.FileType.File:
            found.append(at.child(RESULTS_FILE))
        elif at.kind() == pafs.FileType.Directory and at.searches():
            found.extend(at.searches())
        else:
            raise ConfigError("RESULTS", str(item), f"a {RESULTS_FILE} file or a search folder holding one")
    if name is not None:
        candidate = storage_at.child(name).child(RESULTS_FILE)
        if candidate.kind() != pafs.FileType.File:
            choices = [s.parent().path.rsplit("/", 1)[-1] for s in storage_at.searches()]
            raise ConfigError("--name", name, choices or f"a search under {storage_at} with a {RESULTS_FILE}")
        found.append(candidate)
    if not paths and name is None:
        found = storage_at.searches()
        if not found:
            raise ConfigError(
                "--storage", str(storage_at), f"a folder of searches, each with a {RESULTS_FILE}"
            )
    return list({str(f): f for f in found}.values())


def read_results(at: Location) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(at.path, filesystem=at.fs)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError("RESULTS", str(at), f"a readable Parquet results table ({exc})") from None


def read_epochs(folder: Location) -> pd.DataFrame:
    """The search's epoch log (:data:`~tuneddml.results.schema.EPOCHS_FILE`) as one row per
    (trial, epoch): the last record of each, as a resumed search appends a repeated epoch again.
    Empty when the search has no log (it predates them); a line cut by a crash is skipped."""
    at = folder.child(EPOCHS_FILE)
    if at.kind() != pafs.FileType.File:
        return pd.DataFrame()
    try:
        with at.fs.open_input_stream(at.path) as stream:
            text = stream.read().decode(errors="replace")
    except (OSError, pa.ArrowException):
        return pd.DataFrame()
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            item = json.loads(line)
            key = (str(item["trial_id"]), int(item[EPOCH]))
        except (ValueError, KeyError, TypeError):
            continue
        records.pop(key, None)  # the last one wins, in the order it was last written
        records[key] = item
    return pd.DataFrame(list(records.values()))


def _frame(source: Source) -> tuple[pd.DataFrame, Location | None]:
    if isinstance(source, pd.DataFrame):
        return source.copy(), None
    if isinstance(source, pa.Table):
        return source.to_pandas(), None
    at = source if isinstance(source, Location) else Location.parse(source)
    return read_results(at).to_pandas(), at.parent()


def most_common(frame: pd.DataFrame, column: str) -> str | None:
    if column not in frame.columns or frame[column].dropna().empty:
        return None
    return str(frame[column].dropna().astype(str).mode().iloc[0])


def load_results(sources: Iterable[Source], *, metric: str | None = None) -> Results:
    """Stack the trials of every source (results files, pyarrow Tables or DataFrames)."""
    frames, folders = [], []
    for source in sources:
        frame, folder = _frame(source)
        if folder is not None:
            folders.append(folder)
        frames.append(frame)
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        raise ConfigError("RESULTS", "", "at least one results table")
    frame = pd.concat(frames, ignore_index=True, sort=False)
    if frame.empty:
        raise ConfigError("RESULTS", ", ".join(map(str, folders)) or "table", "a results table with trials")
    metric = metric or most_common(frame, "metric")
    if metric is None:
        found = sorted(c.removeprefix(BEST) for c in frame.columns if c.startswith(BEST))
        if not found:
            raise ConfigError("RESULTS", "table", "a results table with a 'metric' or 'best.<metric>' column")
        metric = found[0]
    mode = most_common(frame, "mode") or "max"
    if mode not in ("max", "min"):
        raise ConfigError("mode", mode, ("max", "min"))
    logs = [e for e in (read_epochs(f) for f in folders) if not e.empty]
    epochs = pd.concat(logs, ignore_index=True, sort=False) if logs else pd.DataFrame()
    return Results(frame, metric, mode, folders, epochs)


# ---------------------------------------------------------------------------------------- columns
def config_column(key: str) -> str:
    """The column of trial setting ``key`` (``loss.lambda`` -> ``config.loss.lambda``)."""
    return f"{CONFIG}{key}"


def score_column(frame: pd.DataFrame, metric: str) -> str | None:
    """The column that ranks trials: ``best.<metric>``, else ``metric.<metric>`` (last epoch)."""
    for column in (f"{BEST}{metric}", f"{METRIC}{metric}"):
        if column in frame.columns:
            return column
    return None


def scores(frame: pd.DataFrame, metric: str) -> pd.Series:
    """The search metric of every trial as floats, NaN where a trial has none."""
    column = score_column(frame, metric)
    if column is None:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def varied_params(frame: pd.DataFrame) -> list[str]:
    """``config.*`` columns holding more than one distinct value; ``config.loss`` first."""
    varied = []
    for column in frame.columns:
        if not column.startswith(CONFIG):
            continue
        values = frame[column].dropna()
        if values.map(repr).nunique() > 1:
            varied.append(column)
    varied.sort(key=lambda c: (c != f"{CONFIG}loss", not c.startswith(f"{CONFIG}loss."), c))
    return varied


def is_numeric(values: pd.Series) -> bool:
    """Whether a column's present values are all numbers (booleans are not)."""
    present = values.dropna()
    return len(present) > 0 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        for v in present
    )


def log_scaled(values: pd.Series) -> bool:
    """Whether a column's values are positive and span a factor of 20 or more: drawn and
    searched on a log scale."""
    present = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(present) > 1 and (present > 0).all() and present.max() / present.min() >= 20)


def present_config(row: pd.Series) -> dict[str, Any]:
    """A results row's ``config.*`` settings by key, without those the trial lacks (null, NaN)."""
    return {
        c.removeprefix(CONFIG): v
        for c, v in row.items()
        if c.startswith(CONFIG) and not (v is None or (isinstance(v, float) and math.isnan(v)))
    }
