"""Search loss/sampler recipes: ``python -m tuneddml.search --space=NAME|PATH [options] [KEY=VALUE ...]``.

With no option but ``--space`` it runs on the embedded default: a local Ray, a local sqlite MLflow
store (``./mlflow.db``) and results under ``./tuneddml_runs``. KEY=VALUE settings override the
space's fixed trial settings (e.g. ``epochs=2 dataset=glyphs-tiny``). Bad input exits with code 2
and one line, before Ray or MLflow start.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from tuneddml.cli import first_paragraph, format_duration, format_values, guarded, parse_overrides
from tuneddml.results import RUNS_FOLDER


def _parser() -> argparse.ArgumentParser:
    from tuneddml.searchers import SEARCHERS
    from tuneddml.searchers.schedulers import SCHEDULERS
    from tuneddml.searchers.space import list_spaces

    p = argparse.ArgumentParser(prog="python -m tuneddml.search", description=first_paragraph(__doc__))
    p.add_argument(
        "--space", required=True, help=f"a shipped space ({', '.join(list_spaces())}) or a path to a YAML file"
    )
    p.add_argument("--searcher", help=f"{', '.join(SEARCHERS.names())} (default: the space's)")
    p.add_argument("--scheduler", help=f"{', '.join(SCHEDULERS.names())} (default: the space's)")
    p.add_argument("--num-samples", type=int, help="budget: number of trials (default: the space's)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: CPUs / --cpus-per-trial)")
    # defaults are None ("not given"): prepare_search fills them in, and refuses a given one that
    # would change a resumed search
    p.add_argument("--cpus-per-trial", type=float, help="CPUs each trial reserves (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs each trial reserves (default: 0)")
    p.add_argument("--address", help="join a running Ray cluster (auto or HOST:PORT); default: a local Ray")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument(
        "--storage", help=f"folder for Ray results, checkpoints and results tables (default: ./{RUNS_FOLDER})"
    )
    p.add_argument("--name", help="search name (default: SPACE-DATE-TIME)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted search (--name, or the latest)"
    )
    p.add_argument("--seed", type=int, help="seed of the searcher, in [0, 2**32) (default: 0)")
    p.add_argument(
        "--reevaluate",
        type=int,
        metavar="K",
        help="at the end, train the best K configurations again with fresh seeds (mean +- 95%% interval each)",
    )
    p.add_argument(
        "--reevaluate-seeds", type=int, default=3, metavar="R", help="seeds of each re-evaluated configuration (default: 3)"
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line summarising the search")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own output too: its logs, the trials' output and each failed trial's traceback",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="trial settings to fix, e.g. epochs=2")
    return p


def print_summary(summary: Any, searched: Iterable[str], out: IO[str]) -> None:
    """The end of a search, for a person: trials by status, the best trial's searched settings and
    every metric of its last epoch (all of the evaluator's), where the table and the runs are."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    print(f"\nsearch {summary.name} done in {format_duration(summary.seconds)}: {counts}", file=out)
    if summary.best_config is not None:
        varied = {k: v for k, v in summary.best_config.items() if k in set(searched)}
        print(f"best trial {summary.best_trial}: {format_values(varied)}", file=out)
        print(f"  metrics: {format_values(summary.best_metrics or {})}", file=out)
    else:
        print("no trial produced a result", file=out)
    print(f"results table: {summary.results_file}", file=out)
    print(f"compare the trials: {ui_hint(summary.tracking_uri, summary.experiment_id)}", file=out, flush=True)


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """How to open the search's experiment in the MLflow UI's model-training view: the page itself
    for a tracking server, else the command that serves the store, then the page."""
    from tuneddml.tracking.mlflow_store import ML_VIEW

    page = f"#/experiments/{experiment_id}?{ML_VIEW}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then open http://127.0.0.1:5000/{page}"


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import time

    checked = time.monotonic()
    from tuneddml.tuning.driver import run_search
    from tuneddml.tuning.request import prepare_search

    request = prepare_search(
        space=args.space,
        searcher=args.searcher,
        scheduler=args.scheduler,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        address=args.address,
        tracking_uri=args.tracking_uri,
        storage=args.storage,
        name=args.name,
        resume=args.resume,
        overrides=parse_overrides(args.overrides),
        seed=args.seed,
    )
    if args.reevaluate is not None:
        from tuneddml.tuning.reevaluate import check_reevaluation

        check_reevaluation(request, args.reevaluate, args.reevaluate_seeds)
    checked = time.monotonic() - checked
    out = sys.stderr if args.json else sys.stdout
    summary = run_search(request, stream=out, verbose=args.verbose)
    summary.phases = {"checks": checked, **summary.phases}
    print_summary(summary, request.space.parameters, out)
    report = summary.to_json()
    if args.reevaluate is not None and summary.best_config is not None:
        from tuneddml.tuning.reevaluate import run_reevaluation

        again = run_reevaluation(request, summary, args.reevaluate, args.reevaluate_seeds, out, args.verbose)
        if again.best_config is not None:
            first = again.rows[0]
            print(
                f"best by the mean over {first['n']} fresh seeds: "
                f"{format_values(again.best_config)}: {request.space.metric}={first['mean']:.4f} (sd {first['sd']:.4f})",
                file=out,
                flush=True,
            )
        report["reevaluation"] = {
            "search": again.search,
            "best_config": again.best_config,
            "table": [{**r, "config": r["config"]} for r in again.rows],
            "files": {k: str(v) for k, v in again.files.items()},
        }
    if args.json:
        print(json.dumps(report, default=str))
    return 0 if summary.best_config is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
