"""Cheap fidelities first: ``python -m tuneddml.multifidelity --space=NAME [--rung SETTINGS:N ...] [--check] [options] [KEY=VALUE ...]``.

A multi-fidelity search runs the space's search at a cheap fidelity (rung 0: e.g. features=cached,
a head trained on frozen-backbone features), then the best configurations again at each dearer
rung, the last at the full fidelity (the space's own settings): one bracket of successive halving
over whole searches, the space's scheduler still stopping trials early inside each rung. The report
(fidelity.md, fidelity.json, fidelity.png) gives each rung's configurations, best and time and how
well each fidelity ranked the next; --check also runs every rung-0 configuration at the full
fidelity, for the regret of the promoted top-k. Same conventions as ``search``: a local Ray and
MLflow store by default, --address, --tracking-uri, --storage, --resume; bad input exits with code
2 and one line, before Ray or MLflow start.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tuneddml.cli import first_paragraph, format_duration, format_values, guarded, parse_overrides
from tuneddml.errors import ConfigError
from tuneddml.results import RUNS_FOLDER


def _parser() -> argparse.ArgumentParser:
    from tuneddml.searchers.space import list_spaces

    p = argparse.ArgumentParser(prog="python -m tuneddml.multifidelity", description=first_paragraph(__doc__))
    p.add_argument("--space", help=f"a shipped space ({', '.join(list_spaces())}) or a path to a YAML file")
    p.add_argument(
        "--rung",
        action="append",
        metavar="SETTINGS:N",
        help="a rung, cheapest first, the last full:N; SETTINGS is full or KEY=VALUE[,KEY=VALUE], N the "
        "configurations it runs, strictly fewer each rung (default: features=cached:4*num_samples then "
        "full:max(2, num_samples//4))",
    )
    p.add_argument(
        "--check", action="store_true", help="after the rungs, every rung-0 configuration at the full fidelity (its own compute)"
    )
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: CPUs / --cpus-per-trial)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs each trial reserves (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs each trial reserves (default: 0)")
    p.add_argument("--address", help="join a running Ray cluster (auto or HOST:PORT); default: a local Ray")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--storage", help=f"folder of its searches and report (default: ./{RUNS_FOLDER})")
    p.add_argument("--name", help="its name (default: SPACE-mf-DATE-TIME)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted multi-fidelity search (--name, or the latest)")
    p.add_argument("--seed", type=int, help="seed of rung 0's searcher (default: 0)")
    p.add_argument("--json", action="store_true", help="end with one JSON line summarising it")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output too")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings of every rung's trials, e.g. epochs=3")
    return p


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from tuneddml.tuning.multifidelity import run_multifidelity
    from tuneddml.tuning.multifidelity_request import prepare_multifidelity

    if args.space is None and not args.resume:
        raise ConfigError("--space", None, "a space to search (only --resume goes without one)")
    if args.space is not None and args.resume:
        raise ConfigError("--space", args.space, "no --space with --resume (it keeps the space it started with)")
    request = prepare_multifidelity(
        space=args.space,
        rungs=args.rung,
        check=args.check,
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
    )
    out = sys.stderr if args.json else sys.stdout
    summary = run_multifidelity(request, stream=out, verbose=args.verbose)
    best = format_values(summary.best_config) if summary.best_config else "no result at the full fidelity"
    print(f"multi-fidelity search {summary.name} done in {format_duration(summary.seconds)}: best {best}", file=out)
    if summary.check_seconds is not None:
        print(f"check (not counted): {format_duration(summary.check_seconds)}", file=out)
    page = next((p for p in summary.files.values() if str(p).endswith(".md")), summary.folder)
    print(f"report: {page}", file=out, flush=True)
    if args.json:
        print(json.dumps(summary.to_json(), default=str))
    return 0 if summary.best_config is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
