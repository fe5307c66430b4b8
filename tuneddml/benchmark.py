"""A fair leaderboard of losses: ``python -m tuneddml.benchmark [--losses SET|a,b,...] [options] [KEY=VALUE ...]``.

The Reality Check protocol (Musgrave, Belongie, Lim, ECCV 2020) as one command: every loss gets
the same searcher and the same number of trials over its own parameters, on the training classes
only, each trial's value the mean validation metric of ``--folds`` class-disjoint fold models; each
loss's best configuration is then re-trained with ``--seeds`` fresh seeds and scored once on the
test classes, per fold model and as the concatenated fold ensemble. The leaderboard gives each
loss's mean and 95% confidence interval, the seed-to-seed noise, and which differences are
significant (a paired t-test across seeds, Holm-adjusted), as Markdown, Parquet, a figure and one
MLflow parent run with a child run per loss. Same conventions as ``search``: a local Ray and MLflow
store by default, ``--address``, ``--tracking-uri``, ``--storage``, ``--resume``; bad input exits
with code 2 and one line, before Ray or MLflow start.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tuneddml.cli import first_paragraph, format_duration, guarded, parse_overrides
from tuneddml.results import RUNS_FOLDER


def _parser() -> argparse.ArgumentParser:
    from tuneddml.searchers import SEARCHERS
    from tuneddml.searchers.schedulers import SCHEDULERS
    from tuneddml.tuning.benchmark_request import LOSS_SETS

    p = argparse.ArgumentParser(prog="python -m tuneddml.benchmark", description=first_paragraph(__doc__))
    sets = ", ".join([*LOSS_SETS, "seed_methods"])
    p.add_argument(
        "--losses", default="reality_check", help=f"a set ({sets}) or a comma list of losses (default: reality_check)"
    )
    p.add_argument("--searcher", help=f"{', '.join(SEARCHERS.names())} (default: tpe)")
    p.add_argument("--scheduler", help=f"{', '.join(SCHEDULERS.names())} (default: fifo, every trial trained in full)")
    p.add_argument("--trials", type=int, help="trials per loss, the same for every loss (default: 8)")
    p.add_argument("--folds", type=int, help="class-disjoint folds of the training classes per trial (default: 4)")
    p.add_argument("--seeds", type=int, help="re-trainings of each loss's best configuration (default: 3)")
    p.add_argument("--preset", help="a published protocol's settings for every trial (python -m tuneddml.catalog presets)")
    p.add_argument("--metric", help="the validation metric that picks each loss's best (default: map_at_r)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: CPUs / --cpus-per-trial)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs each trial reserves (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs each trial reserves (default: 0)")
    p.add_argument("--address", help="join a running Ray cluster (auto or HOST:PORT); default: a local Ray")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--storage", help=f"folder of the benchmark's searches and leaderboard (default: ./{RUNS_FOLDER})")
    p.add_argument("--name", help="benchmark name (default: benchmark-DATE-TIME)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted benchmark (--name, or the latest)")
    p.add_argument("--seed", type=int, help="seed of the searchers (default: 0)")
    p.add_argument("--json", action="store_true", help="end with one JSON line summarising the benchmark")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output too")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="settings of every trial, e.g. dataset=glyphs-xl epochs=3"
    )
    return p


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from tuneddml.tuning.benchmark import run_benchmark
    from tuneddml.tuning.benchmark_request import prepare_benchmark

    request = prepare_benchmark(
        losses=args.losses,
        searcher=args.searcher,
        scheduler=args.scheduler,
        trials=args.trials,
        folds=args.folds,
        seeds=args.seeds,
        metric=args.metric,
        overrides=parse_overrides(args.overrides),
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        address=args.address,
        tracking_uri=args.tracking_uri,
        storage=args.storage,
        name=args.name,
        resume=args.resume,
        seed=args.seed,
        preset=args.preset,
    )
    out = sys.stderr if args.json else sys.stdout
    summary = run_benchmark(request, stream=out, verbose=args.verbose)
    print(f"benchmark {summary.name} done in {format_duration(summary.seconds)}: best {summary.best_loss}", file=out)
    if summary.failed:
        print(f"no result for: {', '.join(summary.failed)}", file=out)
    if args.json:
        print(json.dumps(summary.to_json(), default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
