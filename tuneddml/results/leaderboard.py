# Long file: one protocol, read together: a leaderboard's statistics, sentences, page and files.
"""A benchmark's leaderboard, as the Reality Check of Musgrave et al. (2020, arXiv 2003.08505) asks
for one: every loss's best configuration (found by its own search) trained again with several
seeds, and the losses compared on the test classes with error bars, not by one lucky run.

Input: one row per (loss, seed) re-training (``loss``, ``seed``, ``config``: the loss's best
configuration, and for each metric ``m`` the float columns ``test.<m>``: the test metric, mean over
the k fold models, the paper's "separated" numbers; ``concat.<m>``: the test metric of the fold
models' concatenated embeddings, "concatenated"; ``val.<m>``: the validation metric, mean over the
folds). A failed run's numbers are missing or NaN and are left out.

Statistics, per loss and column: the mean over seeds with a Student-t confidence interval of that
mean (:func:`interval`; one seed gives no interval); between the best loss and each other loss a
two-sided paired t-test across the seeds both have (:func:`paired_test`; a seed's data split and
initialisation are shared by the losses, so pairing takes that part of the noise out), the p
values Holm-Bonferroni adjusted over the comparisons with the best (:func:`holm`). The measured
noise is each loss's seed-to-seed standard deviation of the ranking metric.

:func:`build_leaderboard` makes the :class:`Leaderboard`; :func:`leaderboard_markdown` presents
it; :func:`write_leaderboard` / :func:`read_leaderboard` keep it (``leaderboard.md``,
``leaderboard.parquet``, ``seeds.parquet``). The figure is :func:`tuneddml.plots.draw_leaderboard`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from tuneddml.errors import ConfigError

LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_PARQUET = "leaderboard.parquet"
SEEDS_PARQUET = "seeds.parquet"
METRICS = ("map_at_r", "r_precision", "recall_at_1")
PARTS = ("test", "concat")  # the columns given an interval; ``val`` is given its mean only
NAMES = {"map_at_r": "MAP@R", "r_precision": "R-Precision", "recall_at_1": "Recall@1"}
ZERO = 1e-12  # differences whose spread is below this count as identical (no variance)
_META_KEY = b"tuneddml.leaderboard"


def metric_label(metric: str) -> str:
    """A metric's name as papers print it (``MAP@R``); an unknown key as it is."""
    return NAMES.get(metric, metric)


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values with its confidence interval ``[low, high]`` and the sample standard
    deviation ``sd`` (ddof=1); ``low``, ``high`` and ``sd`` are NaN below two values."""

    mean: float
    low: float
    high: float
    sd: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def _number(value: Any, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ConfigError(name, value, "a number (NaN or missing for a failed run)")
    return float(value)


def _present(values: Iterable[Any]) -> np.ndarray:
    array = np.array([_number(v, "values") for v in values], dtype=float)
    return array[np.isfinite(array)]


def interval(values: Iterable[Any], confidence: float = 0.95) -> Interval:
    """Student-t confidence interval of the mean of ``values`` (one per seed; NaN and None, failed
    runs, dropped): ``mean +- t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n)``. One value gives its
    mean and NaN for the rest (no interval from one seed); none gives NaN throughout, n = 0."""
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ConfigError("confidence", confidence, "a number between 0 and 1 (0.95 for a 95% interval)")
    x = _present(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


def _pairs(a: Mapping[Any, Any] | Sequence[Any], b: Mapping[Any, Any] | Sequence[Any]) -> np.ndarray:
    """Rows (a, b) of the seeds both have with a finite value in both."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise ConfigError("paired_test", (type(a).__name__, type(b).__name__), "two dicts or two sequences")
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        seeds = [s for s in a if s in b]
        pairs = [(_number(a[s], "a"), _number(b[s], "b")) for s in seeds]
    else:
        if len(a) != len(b):
            raise ConfigError("paired_test", (len(a), len(b)), "sequences of one length, aligned by seed")
        pairs = [(_number(x, "a"), _number(y, "b")) for x, y in zip(a, b)]
    array = np.array(pairs, dtype=float).reshape(-1, 2)
    return array[np.isfinite(array).all(axis=1)]


def paired_test(a: Mapping[Any, Any] | Sequence[Any], b: Mapping[Any, Any] | Sequence[Any]) -> float:
    """Two-sided p value of the paired t-test of ``a`` against ``b`` across seeds: dicts seed ->
    value are paired by seed (a seed only one has is left out), sequences by position; a pair with
    a NaN is dropped. Fewer than two pairs: NaN (no test). Differences all identical (no variance,
    spread below ``ZERO``): 1.0 if they are zero, else 0.0 (every seed moves the same way by the
    same amount; the t statistic would be infinite)."""
    pairs = _pairs(a, b)
    n = len(pairs)
    if n < 2:
        return math.nan
    d = pairs[:, 0] - pairs[:, 1]
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd <= ZERO:
        return 1.0 if abs(mean) <= ZERO else 0.0
    t = mean / (sd / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p values, in the given order: the i-th smallest of the m finite
    ones times ``m - i + 1``, made non-decreasing in that order, at most 1. NaN stays NaN and is
    not counted in m."""
    p = [float(v) for v in p_values]
    finite = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    out = [math.nan] * len(p)
    running = 0.0
    for rank, (value, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * value))
        out[i] = running
    return out


@dataclass(frozen=True)
class Noise:
    """The seed-to-seed standard deviation of ``test.<metric>`` per loss (losses with two seeds or
    more) and its mean over those losses: how much one training run's number moves."""

    metric: str
    per_loss: dict[str, float]
    mean: float


@dataclass
class Leaderboard:
    """One row per loss in ``table``, best first (see :func:`build_leaderboard`), the ``best``
    loss's name (None when no loss has a result), the measured ``noise`` and ``statement``: plain
    sentences saying what the table does and does not show."""

    table: list[dict[str, Any]]
    best: str | None
    noise: Noise
    statement: list[str]
    metrics: tuple[str, ...] = METRICS
    rank_by: str = "map_at_r"
    confidence: float = 0.95
    alpha: float = 0.05
    meta: dict[str, Any] = field(default_factory=dict)  # the meta write_leaderboard kept, when read back


def _group(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    seen: set[tuple[str, int]] = set()
    for row in rows:
        if "loss" not in row or "seed" not in row:
            raise ConfigError("rows", dict(row), "rows with a 'loss' and a 'seed'")
        loss, seed = str(row["loss"]), row["seed"]
        if (loss, seed) in seen:
            raise ConfigError("rows", (loss, seed), "one row per (loss, seed)")
        seen.add((loss, seed))
        groups.setdefault(loss, []).append(row)
    return groups


def _config(loss: str, rows: Sequence[Mapping[str, Any]]) -> str:
    texts = {json.dumps(r.get("config") or {}, sort_keys=True, default=str) for r in rows if r.get("config")}
    if len(texts) > 1:
        raise ConfigError("config", loss, "the same best configuration in every seed's row of a loss")
    return texts.pop() if texts else "{}"


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> dict[Any, float]:
    return {r["seed"]: _number(r.get(key), key) for r in rows}


def build_leaderboard(
    rows: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str] = METRICS,
    rank_by: str = "map_at_r",
    search: Mapping[str, Mapping[str, Any]] | None = None,
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> Leaderboard:
    """The leaderboard of ``rows`` (one per (loss, seed), see the module docstring), ranked by the
    mean of ``test.<rank_by>``, highest first.

    Each table row: ``rank``, ``loss``, ``seeds`` (runs with a ``test.<rank_by>``), ``failed``
    (runs without); for every metric and part (``test``, ``concat``) ``<part>.<m>.mean``, ``.low``,
    ``.high``, ``.sd``, ``.n``; ``val.<m>.mean``; ``search.val``, ``search.trials``, ``search.name``
    (from ``search``: loss -> ``{"val", "trials", "search"}``); ``config`` (JSON text); and against
    the best loss on ``test.<rank_by>``: ``pairs`` (seeds with a result in both), ``diff_vs_best``
    (the best's mean minus this loss's over those seeds), ``p_vs_best`` (paired t-test), ``p_holm``
    (Holm-adjusted over the comparisons with the best), ``significant`` (``p_holm < alpha``) and
    ``overlaps_best`` (the two intervals overlap); NaN / None for the best itself and where there
    is no test (fewer than 2 pairs) or no interval (one seed).
    """
    metrics = tuple(metrics)
    if rank_by not in metrics:
        raise ConfigError("rank_by", rank_by, metrics)
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError("alpha", alpha, "a number between 0 and 1 (0.05)")
    if not rows:
        raise ConfigError("rows", [], "at least one (loss, seed) row")
    search = search or {}
    key = f"test.{rank_by}"
    table, ranked = [], {}
    for loss, group in _group(rows).items():
        ranked[loss] = _column(group, key)
        row: dict[str, Any] = {"rank": 0, "loss": loss}
        for m in metrics:
            for part in PARTS:
                iv = interval(_column(group, f"{part}.{m}").values(), confidence)
                for name in ("mean", "low", "high", "sd", "n"):
                    row[f"{part}.{m}.{name}"] = getattr(iv, name)
            row[f"val.{m}.mean"] = interval(_column(group, f"val.{m}").values(), confidence).mean
        row["seeds"] = row[f"{key}.n"]
        row["failed"] = len(group) - row["seeds"]
        found = search.get(loss, {})
        row["search.val"] = _number(found.get("val"), f"search.{loss}.val")
        row["search.trials"] = None if found.get("trials") is None else int(found["trials"])
        row["search.name"] = None if found.get("search") is None else str(found["search"])
        row["config"] = _config(loss, group)
        table.append(row)
    table.sort(key=lambda r: (math.isnan(r[f"{key}.mean"]), -np.nan_to_num(r[f"{key}.mean"]), r["loss"]))
    best = table[0]["loss"] if not math.isnan(table[0][f"{key}.mean"]) else None
    for i, row in enumerate(table):
        row["rank"] = i + 1
        row["p_vs_best"], row["pairs"], row["diff_vs_best"] = math.nan, 0, math.nan
        if best is not None and row["loss"] != best:
            pairs = _pairs(ranked[best], ranked[row["loss"]])
            row["p_vs_best"] = paired_test(ranked[best], ranked[row["loss"]])
            row["pairs"] = len(pairs)
            row["diff_vs_best"] = float((pairs[:, 0] - pairs[:, 1]).mean()) if len(pairs) else math.nan
    for row, p in zip(table, holm([r["p_vs_best"] for r in table])):
        row["p_holm"] = p
        row["significant"] = None if math.isnan(p) else bool(p < alpha)
        top = table[0]
        bounds = [top[f"{key}.low"], top[f"{key}.high"], row[f"{key}.low"], row[f"{key}.high"]]
        row["overlaps_best"] = (
            None
            if row["loss"] == best or best is None or any(math.isnan(b) for b in bounds)
            else bool(bounds[0] <= bounds[3] and bounds[2] <= bounds[1])
        )
    per_loss = {r["loss"]: r[f"{key}.sd"] for r in table if not math.isnan(r[f"{key}.sd"])}
    noise = Noise(rank_by, per_loss, float(np.mean(list(per_loss.values()))) if per_loss else math.nan)
    board = Leaderboard(table, best, noise, [], metrics, rank_by, confidence, alpha)
    board.statement = _statement(board)
    return board


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def _value(row: Mapping[str, Any], column: str, confidence: float) -> str:
    """``0.412 +- 0.010, 95% CI over 3 seeds``, or what stands in for it below two seeds."""
    n, mean = row[f"{column}.n"], row[f"{column}.mean"]
    if n == 0:
        return "no result"
    if n == 1:
        return f"{mean:.3f} from 1 seed; n=1: no interval"
    half = (row[f"{column}.high"] - row[f"{column}.low"]) / 2
    return f"{mean:.3f} +- {half:.3f}, {confidence * 100:g}% CI over {n} seeds"


def _statement(board: Leaderboard) -> list[str]:
    key, name, best = f"test.{board.rank_by}", metric_label(board.rank_by), board.best
    if best is None:
        return [f"No loss has a run with a test {name}: there is nothing to rank."]
    top = board.table[0]
    out = [f"{best} ranks first on test {name} ({_value(top, key, board.confidence)})."]
    compared = [r for r in board.table[1:] if not math.isnan(r["p_holm"])]
    for row in board.table[1:]:
        loss, value = row["loss"], _value(row, key, board.confidence)
        if row["seeds"] == 0:
            out.append(f"{loss}: no run with a test {name} ({row['failed']} failed).")
            continue
        if math.isnan(row["p_holm"]):
            out.append(
                f"{loss} ({value}): not compared with {best} (a paired t-test needs 2 seeds with a "
                f"result in both; they have {row['pairs']})."
            )
            continue
        k = row["pairs"]
        if not row["significant"]:
            verdict = f"not significantly different from {best}"
        elif row["diff_vs_best"] > 0:
            verdict = f"significantly worse than {best}"
        else:
            verdict = (
                f"significantly better than {best} on the {k} seeds both have (it ranks lower on its mean)"
            )
        power = ", little power with 2 seeds" if k == 2 else ""
        overlap = {True: "; intervals overlap", False: "; intervals do not overlap", None: ""}
        out.append(
            f"{loss} ({value}): {verdict} (paired t-test over {k} seeds{power}, "
            f"Holm-adjusted p {_p(row['p_holm'])}{overlap[row['overlaps_best']]})."
        )
    for row in board.table:
        if row["seeds"] and row["failed"]:
            runs = row["seeds"] + row["failed"]
            out.append(f"{row['loss']}: {row['failed']} of {runs} runs without a test {name}, left out.")
    if compared:
        out.append(
            f"Significant: Holm-Bonferroni adjusted p < {board.alpha:g} over the {len(compared)} "
            f"comparison{'s' if len(compared) > 1 else ''} with {best}."
        )
    if any(r["pairs"] == 2 for r in compared):
        out.append(
            "With 2 seeds the paired t-test has 1 degree of freedom and little power: "
            "'not significantly different' there is weak evidence that the losses are equal."
        )
    if any(r["significant"] and r["overlaps_best"] for r in compared):
        out.append(
            "Overlapping intervals with a significant paired test: the seeds move the losses together, "
            "and the paired test takes that shared part of the noise out."
        )
    out.append(_noise_sentence(board.noise))
    return out


def _noise_sentence(noise: Noise) -> str:
    name = metric_label(noise.metric)
    if not noise.per_loss:
        return f"Measured noise: none (no loss has 2 seeds with a test {name})."
    low, high = min(noise.per_loss, key=noise.per_loss.get), max(noise.per_loss, key=noise.per_loss.get)
    spread = (
        f" over {len(noise.per_loss)} losses (from {noise.per_loss[low]:.3f} for {low} to "
        f"{noise.per_loss[high]:.3f} for {high})"
        if len(noise.per_loss) > 1
        else f" ({low})"
    )
    return (
        f"Measured noise: the seed-to-seed standard deviation of test {name} is {noise.mean:.3f}{spread}; "
        "one run's number moves by about that from seed to seed, so a gap of that size between two "
        "single runs shows no difference."
    )


def _cell(row: Mapping[str, Any], column: str, bounds: bool = False) -> str:
    n, mean = row[f"{column}.n"], row[f"{column}.mean"]
    if n == 0:
        return "n/a"
    if n == 1:
        return f"{mean:.3f} (n=1: no interval)"
    low, high = row[f"{column}.low"], row[f"{column}.high"]
    return f"{mean:.3f} +- {(high - low) / 2:.3f}" + (f" [{low:.3f}, {high:.3f}]" if bounds else "")


def _float(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _comparison(row: Mapping[str, Any], best: str | None) -> tuple[str, str]:
    if row["loss"] == best:
        return "best", "best"
    if math.isnan(row["p_holm"]):
        return "n/a", "n/a"
    p = row["p_holm"]
    return ("< 0.001" if p < 0.001 else f"{p:.2g}"), ("yes" if row["significant"] else "no")


def leaderboard_markdown(
    board: Leaderboard,
    *,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
    figure: str | None = None,
) -> str:
    """The leaderboard as a Markdown page: ``title``, ``meta`` (dataset, budget, folds, seeds, wall
    time: whatever it holds) as a bullet list, the table, ``figure`` (a PNG's path, relative to the
    page) if given, the statements, and each loss's best configuration."""
    m, others = board.rank_by, [x for x in board.metrics if x != board.rank_by]
    name, level = metric_label(m), f"{board.confidence * 100:g}%"
    lines = [f"# {title or 'Leaderboard: ' + name + ' over seeds (Reality Check protocol)'}", ""]
    for k, v in (meta or {}).items():
        shown = v if isinstance(v, str) else json.dumps(v, default=str)
        lines.append(f"- **{k}**: {shown}")
    if meta:
        lines.append("")
    header = [
        "rank", "loss", "seeds", f"test {name} ({level} CI)", *(f"test {metric_label(x)}" for x in others),
        f"concatenated {name}", f"val {name}", f"search's best val {name}", "p vs best (Holm)", "significant",
    ]  # fmt: skip
    align = ["---:", "---", "---:", *["---:"] * (len(header) - 4), "---"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in board.table:
        p, significant = _comparison(row, board.best)
        cells = [
            str(row["rank"]), row["loss"].replace("|", "\\|"), str(row["seeds"]),
            _cell(row, f"test.{m}", bounds=True), *(_cell(row, f"test.{x}") for x in others),
            _cell(row, f"concat.{m}"), _float(row[f"val.{m}.mean"]), _float(row["search.val"]),
            p, significant,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"test: the mean over the fold models of each model's own embeddings (the Reality Check's "
        f"separated numbers); concatenated: the fold models' embeddings joined into one; val: the "
        f"validation classes, mean over folds. Mean +- half-width [low, high] of the {level} Student-t "
        f"interval of the mean over seeds (n=1: no interval). p vs best: two-sided paired t-test "
        f"across seeds against {board.best}, Holm-Bonferroni adjusted; significant: p < {board.alpha:g}.",
        "",
    ]
    if figure:
        lines += [f"![leaderboard]({figure})", ""]
    lines += [
        "## What the numbers say",
        "",
        *(f"- {s}" for s in board.statement),
        "",
        "## Best configurations",
        "",
    ]
    for row in board.table:
        found = ""
        if row["search.trials"] is not None or row["search.name"] is not None:
            by = f" by {row['search.name']}" if row["search.name"] else ""
            trials = f" in {row['search.trials']} trials" if row["search.trials"] is not None else ""
            found = f" (found{by}{trials}; its best val {name}: {_float(row['search.val'])})"
        config = json.dumps(json.loads(row["config"]), indent=2, sort_keys=True)
        lines += [f"### {row['rank']}. {row['loss']}{found}", "", "```json", config, "```", ""]
    return "\n".join(lines)


def _cells(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy's float64 and int64 as Python's
        return value.item()
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _arrow(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows as a table: the union of their keys (null where a row lacks one), a dict or list as
    JSON text, a column mixing ints and floats as floats and any other mixture as text."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for key in keys:
        values = [_cells(row.get(key)) for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds and kinds <= {int, float} and float in kinds:
            values = [None if v is None else float(v) for v in values]
        elif len(kinds) > 1:
            values = [None if v is None else str(v) for v in values]
        columns[key] = values
    return pa.table(columns)


def _replace(path: Path, write: Any) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
    return path


def write_leaderboard(
    board: Leaderboard,
    folder: str | os.PathLike,
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
    title: str | None = None,
    figure: str | None = None,
) -> dict[str, Path]:
    """Write ``folder/leaderboard.md``, ``folder/leaderboard.parquet`` (the table, its statements,
    noise and settings in the file's metadata) and, given ``rows``, ``folder/seeds.parquet`` (one row
    per (loss, seed), ``config`` as JSON text), each atomically. Returns the paths by kind:
    ``markdown``, ``table``, ``seeds``."""
    import pyarrow.parquet as pq

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    text = leaderboard_markdown(board, title=title, meta=meta, figure=figure)
    written = {"markdown": _replace(out / LEADERBOARD_MD, lambda p: p.write_text(text))}
    settings = {
        "best": board.best, "noise": asdict(board.noise), "statement": board.statement,
        "metrics": list(board.metrics), "rank_by": board.rank_by, "confidence": board.confidence,
        "alpha": board.alpha, "meta": dict(meta or {}),
    }  # fmt: skip
    table = _arrow(board.table).replace_schema_metadata({_META_KEY: json.dumps(settings, default=str)})
    written["table"] = _replace(out / LEADERBOARD_PARQUET, lambda p: pq.write_table(table, p))
    if rows is not None:
        seeds = _arrow(rows)
        written["seeds"] = _replace(out / SEEDS_PARQUET, lambda p: pq.write_table(seeds, p))
    return written


def read_leaderboard(folder: str | os.PathLike) -> Leaderboard:
    """The leaderboard :func:`write_leaderboard` wrote in ``folder`` (``config`` stays JSON text)."""
    import pyarrow.parquet as pq

    path = Path(folder) / LEADERBOARD_PARQUET
    if not path.is_file():
        raise ConfigError("folder", str(folder), f"a folder holding {LEADERBOARD_PARQUET}")
    table = pq.read_table(path)
    settings = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    if not settings:
        raise ConfigError("folder", str(path), "a leaderboard written by write_leaderboard")
    rows = [
        {k: (math.nan if v is None and k.endswith(_FLOATS) else v) for k, v in r.items()}
        for r in table.to_pylist()
    ]
    return Leaderboard(
        rows, settings["best"], Noise(**settings["noise"]), settings["statement"], tuple(settings["metrics"]),
        settings["rank_by"], settings["confidence"], settings["alpha"], settings.get("meta") or {},
    )  # fmt: skip


_FLOATS = (".mean", ".low", ".high", ".sd", "search.val", "p_vs_best", "p_holm", "diff_vs_best")


def read_seeds(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-seed rows of ``folder/seeds.parquet`` (``config`` back as a dict)."""
    import pyarrow.parquet as pq

    path = Path(folder) / SEEDS_PARQUET
    if not path.is_file():
        raise ConfigError("folder", str(folder), f"a folder holding {SEEDS_PARQUET}")
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if isinstance(row.get("config"), str):
            row["config"] = json.loads(row["config"])
    return rows
