"""Log what a search could not: ``python -m tuneddml.tracking.sync --name NAME [--storage DIR]
[--tracking-uri URI]``.

A search whose MLflow server was unreachable keeps what it could not log in its outbox
(``<storage>/<name>/mlflow_outbox.jsonl``, :mod:`.outbox`) and says so in its last lines. Once
the server is back, this sends the pending operations, in order, to the search's tracking URI
(from its ``search.json``, or ``--tracking-uri``). Every operation is idempotent (what a run
already holds is not logged again), so running it twice, or after a partial run, duplicates
nothing. Exit 0 when nothing is left, 1 when MLflow failed part-way (run it again), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tuneddml.cli import first_paragraph, guarded
from tuneddml.errors import ConfigError
from tuneddml.results import RESULTS_FILE, RUNS_FOLDER, SEARCH_FILE, write_results
from tuneddml.tracking.mlflow_store import check_tracking_uri
from tuneddml.tracking.outbox import OUTBOX_FILE, Outbox
from tuneddml.tracking.search_run import SearchRun


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuneddml.tracking.sync", description=first_paragraph(__doc__))
    p.add_argument("--name", required=True, help="the search's name")
    p.add_argument("--storage", default=RUNS_FOLDER, help=f"the search's storage folder (default: ./{RUNS_FOLDER})")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the search's own)")
    return p


def _meta(folder: Path, name: str) -> dict:
    try:
        meta = json.loads((folder / SEARCH_FILE).read_text())
        return {k: meta[k] for k in ("tracking_uri", "experiment_id", "parent_run_id")}
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError("--name", name, f"a search under {folder.parent} (with a readable {SEARCH_FILE})") from None


def sync(folder: Path, tracking_uri: str | None = None) -> tuple[int, int]:
    """Send the pending operations of the search in ``folder``: (sent, still pending)."""
    meta = _meta(folder, folder.name)
    uri = tracking_uri or meta["tracking_uri"]
    check_tracking_uri(uri)
    outbox = Outbox(folder)
    run = SearchRun(uri, meta["experiment_id"], meta["parent_run_id"])
    run.resumed = True  # the start of a trial lost by a kill adopts its run, as the search would
    sent = 0
    pending = outbox.pending()
    for item in pending:
        try:
            if item["kind"] == "finish":  # the table goes to the parent run: name every row's run first
                relink(folder / RESULTS_FILE, run)
            run.apply(item)
        except Exception as exc:  # the server failed part-way: what is left stays pending
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
            print(f"MLflow failed on {item['op']}: {line}", file=sys.stderr)
            break
        outbox.mark_done(item["op"])
        sent += 1
    return sent, len(pending) - sent


def relink(results_file: Path, run: SearchRun) -> None:
    """Fill in the ``mlflow_run_id`` of the results table's rows whose run was made after the
    search ended (by this command)."""
    import pyarrow.parquet as pq

    if not results_file.is_file():
        return
    rows = pq.read_table(results_file).to_pylist()
    if all(r.get("mlflow_run_id") for r in rows):
        return
    run_ids = run.lookup_run_ids()
    for row in rows:
        row["mlflow_run_id"] = row.get("mlflow_run_id") or run_ids.get(str(row.get("trial_id")))
    write_results(rows, results_file)


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    folder = Path(args.storage).expanduser().resolve() / args.name
    if not (folder / SEARCH_FILE).is_file():
        raise ConfigError("--name", args.name, f"a search under {folder.parent}")
    if not (folder / OUTBOX_FILE).is_file():
        print(f"search {args.name}: no outbox, nothing to log")
        return 0
    sent, left = sync(folder, args.tracking_uri)
    if left:
        print(f"search {args.name}: {sent} operations logged, {left} still pending: run this again", file=sys.stderr)
        return 1
    print(f"search {args.name}: {sent} operations logged, nothing left to log")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
