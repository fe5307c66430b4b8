# Long file: the report command: its ranking tables, the figures' folder, the MLflow targets and the checks made before anything is written, all over one Results; split, each part would re-read it.
"""Report on finished searches: ``python -m tuneddml.report [RESULTS ...] [options]``.

Reads the results tables the search driver writes (``<storage>/<search>/results.parquet``, one row
per trial) and their per-epoch logs (``epochs.jsonl``), prints the best trials and the best trial
per loss, and draws the figures of :mod:`tuneddml.plots` (balance landscape, best so far per
searcher, learning curves, parameter importance, parallel coordinates) as PNGs. It is read-only
towards MLflow unless asked: with ``--log`` the images are logged as artifacts (folder ``report/``)
of each search's MLflow parent run (tracking URI from ``--tracking-uri``, or ``tracking_uri`` in
the search folder's ``search.json``).

The table's columns are :mod:`tuneddml.results.schema`'s; it is read with
:func:`tuneddml.results.load_results`. The report only presents: it computes nothing the driver
has not written.

Searches run with several searchers on one space compare best when given together: the best-so-far
figure then has one line per search. Every input (the tables, the output folder, the tracking URI
and parent runs with ``--log``) is checked before anything is written; bad input exits with code 2
and one line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from tuneddml.cli import first_paragraph, guarded
from tuneddml.errors import ConfigError
from tuneddml.plots import make_report
from tuneddml.results import (
    BEST,
    CONFIG,
    METRIC,
    REPORT_FOLDER,
    RESULTS_FILE,
    RUNS_FOLDER,
    SEARCH_FILE,
    Results,
    config_column,
    find_results,
    load_results,
    most_common,
    score_column,
    scores,
    varied_params,
)

__all__ = ["find_results", "load_results", "log_report", "main", "make_report", "parent_runs", "print_report"]


# ---------------------------------------------------------------------------------------- ranking
def sort_column(results: Results, sort: str | None) -> str:
    """``--sort``: a column name, or a metric name resolved to ``best.X`` / ``metric.X``."""
    columns = list(results.frame.columns)
    if sort is None:
        column = score_column(results.frame, results.metric)
        if column is None:
            raise ConfigError(
                "RESULTS", results.metric, f"a best.{results.metric} or metric.{results.metric} column"
            )
        return column
    for candidate in (sort, f"{BEST}{sort}", f"{METRIC}{sort}", f"{CONFIG}{sort}"):
        if candidate in columns:
            return candidate
    sortable = [c for c in columns if c.startswith((BEST, METRIC, CONFIG)) or c in ("seconds", "epochs")]
    raise ConfigError("--sort", sort, sortable)


def ranked(results: Results, column: str) -> pd.DataFrame:
    """Trials best first by ``column`` (in the search's direction); trials without a value last."""
    frame = results.frame
    key = pd.to_numeric(frame[column], errors="coerce") if frame[column].dtype != object else frame[column]
    ordered = frame.assign(_key=key).sort_values(
        "_key", ascending=results.mode == "min", na_position="last", kind="stable"
    )
    return ordered.drop(columns="_key")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any) -> str:
    return "-" if _missing(value) else f"{value:.4g}" if isinstance(value, float) else str(value)


def shown_params(frame: pd.DataFrame) -> list[str]:
    """The settings the tables show: the varied ones; where only the loss varied, each loss's own
    settings (``loss.*``), which differ between the losses even where none was searched."""
    varied = [c for c in varied_params(frame) if c != config_column("loss")]
    if varied:
        return varied
    return sorted(c for c in frame.columns if c.startswith(config_column("loss.")))


def _trial(row: pd.Series, column: str, params: Sequence[str]) -> dict[str, Any]:
    """One trial as the tables and the JSON show it; ``params`` are the shown settings it has."""
    value = row.get(column)
    keys = ("trial_id", "search", "searcher", "status", "mlflow_run_id")
    error = row.get("error")
    return {
        **{k: row.get(k) for k in keys},
        "error": None if _missing(error) else str(error),
        "loss": row.get(config_column("loss")),
        "value": None if _missing(value) else value,
        "params": {
            c.removeprefix(CONFIG): row[c]
            for c in params
            if c != config_column("loss") and not _missing(row.get(c))
        },
    }


def best_per_loss(results: Results, column: str) -> list[tuple[str, int, pd.Series]]:
    """``(loss, trials of that loss, best row)`` for every loss, best loss first."""
    loss = config_column("loss")
    if loss not in results.frame.columns:
        return []
    order = ranked(results, column)
    groups = order.groupby(order[loss].astype(str), sort=False)
    return [(str(loss), len(group), group.iloc[0]) for loss, group in groups]


def search_summaries(results: Results) -> list[dict[str, Any]]:
    """Per search: searcher, space, trials by status and the best value of the search metric."""
    frame, out = results.frame, []
    names = frame["search"] if "search" in frame.columns else pd.Series("search", index=frame.index)
    for search, group in frame.groupby(names, sort=True):
        values = scores(group, results.metric).dropna()
        statuses = group["status"].value_counts() if "status" in group.columns else pd.Series(dtype=int)
        out.append(
            {
                "search": str(search),
                "searcher": most_common(group, "searcher"),
                "space": most_common(group, "space"),
                "trials": len(group),
                "statuses": {str(k): int(v) for k, v in statuses.items()},
                "best": None
                if values.empty
                else float(values.max() if results.mode == "max" else values.min()),
            }
        )
    return out


def _print_table(rows: list[list[str]], out: IO[str]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip(), file=out)


def _cells(trial: dict[str, Any], several: bool) -> list[str]:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial["params"].items())
    value = _fmt(trial["value"])
    if trial.get("error") and trial.get("status") in ("failed", "diverged"):  # why, not "-"
        value = trial["error"] if len(trial["error"]) <= 100 else trial["error"][:99] + "…"
    return [*([str(trial["search"])] if several else []), value, params]


def print_report(results: Results, column: str, top: int, out: IO[str]) -> dict[str, Any]:
    """Print the best trials and the best per loss; return the same as a JSON-ready dict."""
    frame, params = results.frame, shown_params(results.frame)
    searches = search_summaries(results)
    several = len(searches) > 1
    print(
        f"{len(frame)} trials from {len(searches)} search(es); metric {results.metric} ({results.mode}), "
        f"ranked by {column}",
        file=out,
    )
    for s in searches:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(s["statuses"].items()))
        print(
            f"  {s['search']}: space={s['space']} searcher={s['searcher']} {s['trials']} trials ({counts}), "
            f"best {_fmt(s['best'])}",
            file=out,
        )
    name = column.split(".", 1)[-1]
    best = [_trial(row, column, params) for _, row in ranked(results, column).head(top).iterrows()]
    print(f"\nbest {len(best)} of {len(frame)} trials:", file=out)
    rows = [["rank", "trial", "loss", "status", *(["search"] if several else []), name, "params"]]
    for rank, t in enumerate(best, start=1):
        rows.append([str(rank), str(t["trial_id"]), _fmt(t["loss"]), _fmt(t["status"]), *_cells(t, several)])
    _print_table(rows, out)
    per_loss = [
        {"loss": loss, "trials": n, **_trial(row, column, params)}
        for loss, n, row in best_per_loss(results, column)
    ]
    if per_loss:
        print("\nbest trial per loss:", file=out)
        rows = [["loss", "trials", "best trial", *(["search"] if several else []), name, "params"]]
        rows += [[t["loss"], str(t["trials"]), str(t["trial_id"]), *_cells(t, several)] for t in per_loss]
        _print_table(rows, out)
    return {
        "metric": results.metric,
        "mode": results.mode,
        "sort": column,
        "trials": len(frame),
        "searches": searches,
        "top": [{"rank": i, **t} for i, t in enumerate(best, 1)],
        "best_per_loss": per_loss,
    }


# ---------------------------------------------------------------------------------------- figures
def default_out_dir(results: Results, storage: str | os.PathLike | None) -> Path:
    """One search: ``<search folder>/report``; several: ``report`` beside them.

    Searches stored remotely (``s3://``...) get ``./report-<search>`` (or ``./report``) here instead.
    """
    local = sorted({f.local for f in results.folders if f.local is not None})
    remote = [f for f in results.folders if f.local is None]
    if remote:
        names = {f.path.rsplit("/", 1)[-1] for f in results.folders}
        return Path(f"report-{names.pop()}" if len(names) == 1 else "report").resolve()
    if len(local) == 1:
        return local[0] / REPORT_FOLDER
    if local:
        return Path(os.path.commonpath(local)) / REPORT_FOLDER
    return Path(storage or RUNS_FOLDER) / REPORT_FOLDER


# ---------------------------------------------------------------------------------------- MLflow
def parent_runs(results: Results, tracking_uri: str | None) -> list[tuple[str, str]]:
    """``(tracking URI, parent run id)`` of every search, from ``search.json`` or the table."""
    targets: dict[tuple[str, str], None] = {}
    for folder in results.folders:
        meta_file = folder.child(SEARCH_FILE)
        if meta_file.kind() != pafs.FileType.File:
            continue
        try:
            with meta_file.fs.open_input_stream(meta_file.path) as stream:
                meta = json.loads(stream.read().decode())
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise ConfigError(SEARCH_FILE, str(meta_file), f"readable JSON ({exc})") from None
        uri, run_id = tracking_uri or meta.get("tracking_uri"), meta.get("parent_run_id")
        if uri and run_id:
            targets[(str(uri), str(run_id))] = None
    if tracking_uri and "parent_run_id" in results.frame.columns:
        for run_id in results.frame["parent_run_id"].dropna().astype(str).unique():
            targets[(tracking_uri, run_id)] = None
    return list(targets)


def log_report(paths: Sequence[Path], targets: Sequence[tuple[str, str]]) -> list[str]:
    """Log ``paths`` under ``report/`` in each parent run; returns the run ids logged to."""
    if not paths or not targets:
        return []
    from tuneddml.tracking import SearchRun

    logged = []
    for uri, run_id in targets:
        SearchRun.attach(uri, run_id).log_files(paths, REPORT_FOLDER)
        logged.append(run_id)
    return logged


# ---------------------------------------------------------------------------------------- checks
def readable_results(files: Sequence[Any]) -> list[Any]:
    """The results files that read; one that does not is left out with a one-line warning, so one
    corrupt table does not hide the searches beside it. ConfigError if none reads."""
    from tuneddml.results.table import read_results

    good, first = [], None
    for f in files:
        try:
            read_results(f)
        except ConfigError as exc:
            first = first or exc
            if len(files) > 1:
                print(f"warning: skipped {f}: {exc.expected or exc}"[:199], file=sys.stderr)
            continue
        good.append(f)
    if not good and first is not None:
        raise first
    return good


def check_out_dir(folder: Path) -> None:
    """``--out`` (or the default report folder): a folder, or one that can be made, writable."""
    folder = folder.expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ConfigError("--out", str(folder), "a folder for the figures")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError("--out", str(folder), f"a folder for the figures ({existing} is a file)")
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tuneddml-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(
            "--out", str(folder), f"a folder you can write in ({exc.strerror or exc})"
        ) from None


def check_targets(targets: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``--log``: the parent runs the figures go to, each tracking URI checked (and a sqlite store
    existing: the report creates none); one that is not usable is an error, before anything is
    drawn, as is having none."""
    from tuneddml.tracking import check_tracking_uri

    if not targets:
        raise ConfigError(
            "--log",
            "no parent run",
            "a search.json naming its MLflow run, or --tracking-uri for the table's parent_run_id",
        )
    for uri, run_id in targets:
        check_tracking_uri(uri)
        if (
            uri.split("://", 1)[0].split("+", 1)[0] == "sqlite"
            and not Path(uri.split("://", 1)[1][1:]).is_file()
        ):
            raise ConfigError(
                "--tracking-uri",
                uri,
                f"an existing sqlite store holding run {run_id} (the report creates none)",
            )
    return list(targets)


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuneddml.report", description=first_paragraph(__doc__))
    p.add_argument(
        "results",
        nargs="*",
        metavar="RESULTS",
        help=f"{RESULTS_FILE} files or search folders (default: every search under --storage)",
    )
    p.add_argument("--storage", help=f"folder of searches (default: ./{RUNS_FOLDER})")
    p.add_argument("--name", help="a search under --storage, by name")
    p.add_argument("--out", help="folder for the PNGs (default: <search folder>/report)")
    p.add_argument("--top", type=int, default=10, help="best trials to list (default: 10)")
    p.add_argument("--sort", help="rank by this column or metric name (default: best.<search metric>)")
    p.add_argument(
        "--log",
        action="store_true",
        help="also log the PNGs to each search's MLflow parent run, under report/ (default: MLflow is not touched)",
    )
    p.add_argument(
        "--tracking-uri",
        help="with --log: the MLflow store holding the parent runs (default: the search.json of each search)",
    )
    p.add_argument("--no-plots", action="store_true", help="print the tables only")
    p.add_argument(
        "--json", action="store_true", help="end with one JSON line (tables, files, runs logged to)"
    )
    return p


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.top < 1:
        raise ConfigError("--top", args.top, "a positive number of trials")
    files = readable_results(find_results(args.results, storage=args.storage, name=args.name))
    results = load_results(files)
    column = sort_column(results, args.sort)
    # everything that can fail is checked before anything is drawn or written
    if args.tracking_uri and not args.log:
        raise ConfigError(
            "--tracking-uri", args.tracking_uri, "given with --log (the report logs nothing without it)"
        )
    if args.log and args.no_plots:
        raise ConfigError("--log", "with --no-plots", "figures to log (drop --no-plots)")
    targets: list[tuple[str, str]] = []
    out_dir = Path(args.out) if args.out else default_out_dir(results, args.storage)
    if not args.no_plots:
        check_out_dir(out_dir)
    if args.log:
        targets = check_targets(parent_runs(results, args.tracking_uri))
    out = sys.stderr if args.json else sys.stdout
    summary = print_report(results, column, args.top, out)
    written: list[Path] = []
    logged: list[str] = []
    if not args.no_plots:
        notes: list[str] = []
        written = make_report(results, out_dir, notes=notes)
        print("\nfigures:" if written else "\nno figures", file=out)
        for path in written:
            print(f"  {path}", file=out)
        for note in notes:
            print(f"  skipped: {note}" if written else f"  {note}", file=out)
        logged = log_report(written, targets)
        if logged:
            print(f"logged to MLflow run(s) {', '.join(logged)} under {REPORT_FOLDER}/", file=out)
    if args.json:
        summary.update(files=[str(f) for f in files], figures=[str(p) for p in written], logged_to=logged)
        print(json.dumps(summary, default=_json_default), flush=True)
    return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
