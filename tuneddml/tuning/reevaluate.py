"""``search --reevaluate K``: the search's best K configurations trained again with R fresh seeds,
so that its "best" is not a lucky draw.

One trial's value moves by 0.02-0.04 MAP@R from seed to seed on glyphs, as much as many gaps
between configurations; the best of a search is the maximum of noisy draws and so biased upwards.
After the search, its K best finished trials' searched settings are re-run with training seeds
``seed+1 .. seed+R`` (``seed``: the search's fixed one, default 0) as a second search,
``<name>-reevaluated`` (``searcher: points``, nested under the search's parent run in MLflow), and
each configuration's mean and 95% interval over those seeds is written beside the first value it
had (``reevaluation.md``, ``reevaluation.parquet`` in the search's folder). The best by mean is the
search's answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tuneddml.errors import ConfigError

REEVALUATION_MD = "reevaluation.md"
REEVALUATION_PARQUET = "reevaluation.parquet"
SUFFIX = "-reevaluated"


@dataclass
class Reevaluation:
    rows: list[dict[str, Any]]  # one per configuration: rank, config, first value, mean, low, high, sd, n
    best_config: dict[str, Any] | None
    search: str
    files: dict[str, Path]


def check_reevaluation(request: Any, top: int, seeds: int) -> None:
    """Before Ray starts: the numbers, and a space that does not search ``seed`` itself."""
    for flag, value in (("--reevaluate", top), ("--reevaluate-seeds", seeds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(flag, value, "an integer >= 1")
    if "seed" in request.space.parameters:
        raise ConfigError("--reevaluate", top, "a space that does not search seed (it re-trains with fresh seeds)")
    if request.space.path is None or not Path(request.space.path).is_file():
        raise ConfigError("--reevaluate", top, "a search whose space is a file")


def reevaluation_space(request: Any, configs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The space of the re-evaluation: the search's own file, its parameters and a ``seed``
    choice, evaluating exactly ``configs`` x ``seeds`` (``searcher: points``)."""
    from tuneddml.cli import load_yaml

    space = dict(load_yaml(Path(request.space.path).read_text()))
    space["parameters"] = {**space.get("parameters", {}), "seed": {"choice": list(seeds)}}
    space["start_points"] = [{**c, "seed": s} for c in configs for s in seeds]
    space.update(searcher="points", num_samples=len(configs) * len(seeds), scheduler="fifo")
    space["description"] = f"{request.name}: its best {len(configs)} configurations re-trained with seeds {seeds}"
    return space


def top_configs(results_file: Path, searched: list[str], metric: str, mode: str, top: int) -> list[dict[str, Any]]:
    """The searched settings of the ``top`` best finished trials (best over epochs), best first;
    a configuration that several trials share counts once."""
    import pyarrow.parquet as pq

    from tuneddml.results import BEST, CONFIG

    rows = [r for r in pq.read_table(results_file).to_pylist() if r["status"] == "finished"]
    rows = [r for r in rows if r.get(f"{BEST}{metric}") is not None and math.isfinite(r[f"{BEST}{metric}"])]
    rows.sort(key=lambda r: r[f"{BEST}{metric}"], reverse=mode == "max")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in rows:
        config = {k: row[f"{CONFIG}{k}"] for k in searched if row.get(f"{CONFIG}{k}") is not None}
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append({**config, "_value": row[f"{BEST}{metric}"]})
        if len(out) == top:
            break
    return out


def run_reevaluation(request: Any, summary: Any, top: int, seeds: int, out: IO[str], verbose: bool = False) -> Reevaluation:
    """Re-train the search's best ``top`` configurations with ``seeds`` fresh seeds; the table."""
    from tuneddml.tuning.benchmark_request import write_space
    from tuneddml.tuning.driver import run_search
    from tuneddml.tuning.request import prepare_search

    space = request.space
    found = top_configs(summary.results_file, list(space.parameters), space.metric, space.mode, top)
    if not found:
        raise ConfigError("--reevaluate", top, "a search with finished trials to re-evaluate (it has none)")
    base = int(request.fixed.get("seed", 0))
    seed_list = list(range(base + 1, base + seeds + 1))
    configs = [{k: v for k, v in c.items() if k != "_value"} for c in found]
    name = f"{request.name}{SUFFIX}"
    path = request.folder / "reevaluate.yaml"
    resume = (request.storage / name / "search.json").is_file()
    if not resume:
        write_space(path, reevaluation_space(request, configs, seed_list))
    print(f"\nre-evaluating the best {len(configs)} configurations with seeds {seed_list}", file=out, flush=True)
    again = prepare_search(
        space=str(path),
        name=name,
        resume=resume,
        overrides=None if resume else request.overrides,
        storage=request.ray_storage if "://" in request.ray_storage else str(request.storage),
        cpus_per_trial=None if resume else request.cpus_per_trial,
        gpus_per_trial=None if resume else request.gpus_per_trial,
        address=request.address,
        tracking_uri=request.tracking_uri,
    )
    if not resume:
        again.experiment = request.experiment or space.name
        again.tags = {"mlflow.parentRunId": summary.parent_run_id}
    result = run_search(again, stream=out, verbose=verbose)
    table = reevaluation_table(result.results_file, found, list(again.space.parameters), space.metric, space.mode)
    files = write_reevaluation(table, request.folder, space.metric, seed_list)
    best = dict(table[0]["config"]) if table and table[0]["n"] else None
    for line in _lines(table, space.metric, seed_list):
        print(line, file=out)
    print(f"re-evaluation: {files['markdown']}", file=out, flush=True)
    return Reevaluation(table, best, name, files)


def reevaluation_table(
    results_file: Path, found: list[dict[str, Any]], searched: list[str], metric: str, mode: str
) -> list[dict[str, Any]]:
    """Each configuration's values over the fresh seeds (mean, 95% interval, sd, n) beside its
    first value, ranked by the mean."""
    import pyarrow.parquet as pq

    from tuneddml.results import CONFIG, METRIC
    from tuneddml.results.leaderboard import interval

    rows = pq.read_table(results_file).to_pylist()
    table = []
    for c in found:
        config = {k: v for k, v in c.items() if k != "_value"}
        values = [
            r.get(f"{METRIC}{metric}")
            for r in rows
            if r["status"] == "finished" and all(r.get(f"{CONFIG}{k}") == v for k, v in config.items())
        ]
        iv = interval([v for v in values if v is not None])
        table.append(
            {"config": config, "first": c["_value"], "mean": iv.mean, "low": iv.low, "high": iv.high, "sd": iv.sd, "n": iv.n}
        )
    sign = -1 if mode == "max" else 1
    table.sort(key=lambda r: (not r["n"], sign * (r["mean"] if r["n"] else 0.0)))
    for rank, row in enumerate(table, 1):
        row["rank"] = rank
    return table


def _lines(table: list[dict[str, Any]], metric: str, seeds: list[int]) -> list[str]:
    lines = [f"| rank | {metric} over seeds {seeds} (mean +- 95% half-width) | sd | first value | configuration |", "|---:|---|---:|---:|---|"]
    for r in table:
        half = (r["high"] - r["mean"]) if r["n"] > 1 else math.nan
        shown = f"{r['mean']:.4f} +- {half:.4f}" if r["n"] > 1 else (f"{r['mean']:.4f} (n=1)" if r["n"] else "no result")
        config = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        lines.append(f"| {r['rank']} | {shown} | {r['sd']:.4f} | {r['first']:.4f} | {config} |")
    return lines


def write_reevaluation(table: list[dict[str, Any]], folder: Path, metric: str, seeds: list[int]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    md = folder / REEVALUATION_MD
    text = [
        f"# The best configurations re-trained with seeds {seeds}",
        "",
        f"Each configuration's {metric} over the fresh seeds, ranked by the mean; 'first value' is what",
        "its trial in the search scored (the best of noisy draws, biased upwards).",
        "",
        *_lines(table, metric, seeds),
        "",
    ]
    tmp = md.with_suffix(".tmp")
    tmp.write_text("\n".join(text))
    tmp.replace(md)
    parquet = folder / REEVALUATION_PARQUET
    flat = [{**{k: v for k, v in r.items() if k != "config"}, "config": json.dumps(r["config"], default=str)} for r in table]
    tmp = parquet.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(flat), tmp)
    tmp.replace(parquet)
    return {"markdown": md, "table": parquet}
