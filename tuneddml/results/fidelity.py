# Long file: one analysis, read together: promotion, rank correlation, the report and its page.
"""How well cheap fidelities rank configurations: the analysis of a multi-fidelity search.

A multi-fidelity search runs many configurations at a cheap fidelity (rung 0: cached features,
few epochs, a subset), promotes the top k to the next rung, and so on up to full fidelity. Its
input here: each rung's results-table rows (``config.<key>``, ``best.<metric>``, ``status``,
``trial_id``, ``order``, ``seconds``), cheapest first. Rows of different rungs are the same
configuration when their searched keys agree (:func:`config_key`); a configuration run twice in
one rung counts once, by its best row (as :func:`promote` ranks them).

- :func:`promote`: the top k rows of a rung (what the search carries on);
- :func:`spearman`: Spearman's rank correlation (average ranks for ties);
- :func:`fidelity_report`: per rung, per pair of consecutive rungs and between the first and the
  last rung: configurations, best, the rank correlation over the configurations both ran, whether
  the best stayed the best, the compute; with a *check* run (every rung-0 configuration run at
  full fidelity) also the regret of promoting the top k from rung 0 and the compute saved;
- :func:`fidelity_markdown` / :func:`write_fidelity_report`: the report as sentences and a table
  (``fidelity.md``) and as JSON (``fidelity.json``). The figure is
  :func:`tuneddml.plots.draw_fidelity`.

Regret is always how much worse (>= 0): ``best_full - chosen`` for a metric to maximise,
``chosen - best_full`` for one to minimise, where ``best_full`` is the best value in the check.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneddml.errors import ConfigError
from tuneddml.results.schema import BEST, CONFIG

FIDELITY_JSON = "fidelity.json"
FIDELITY_MD = "fidelity.md"
MODES = ("max", "min")
FEW = 10  # below this many configurations a rank correlation is noted as noisy

Key = tuple[Any, ...]


# -- configurations and values ---------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A config value comparable and hashable across rungs and tables: numpy scalars as Python
    ones, None/NaN/pandas' NA as None, lists as tuples; numbers keep their type (3 == 3.0 anyway)."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_plain(v) for v in value)
    return value


def config_key(row: Mapping[str, Any], keys: Sequence[str]) -> tuple:
    """The values ``row["config.<k>"]`` for ``k`` in ``keys``, hashable; a missing key, None or
    NaN is None, so a configuration's rows at different rungs (and tables) compare equal."""
    return tuple(_plain(row.get(CONFIG + k)) for k in keys)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError("mode", mode, MODES)


def _value(row: Mapping[str, Any], metric: str) -> float | None:
    """The row's finite ``best.<metric>``; None for a failed trial or no finite value."""
    if row.get("status") == "failed":
        return None
    value = _plain(row.get(BEST + metric))
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _order(row: Mapping[str, Any]) -> float:
    order = _plain(row.get("order"))
    try:
        return float(order)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf


def promote(rows: Sequence[Mapping[str, Any]], metric: str, mode: str, k: int) -> list[dict]:
    """The top ``k`` rows by ``best.<metric>`` (``mode`` max or min), best first, ties broken by
    ``order`` (the earlier trial first). Failed rows and rows without a finite value are left out;
    a ``k`` above the scored rows gives them all."""
    _check_mode(mode)
    sign = -1.0 if mode == "max" else 1.0
    scored = [(sign * v, _order(r), i, r) for i, r in enumerate(rows) if (v := _value(r, metric)) is not None]
    scored.sort(key=lambda t: t[:3])
    return [dict(r) for *_, r in scored[: max(int(k), 0)]]


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _regret(best: float, chosen: float, mode: str) -> float:
    return float(best - chosen) if mode == "max" else float(chosen - best)


# -- rank correlation --------------------------------------------------------------------------
def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span."""
    _unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of paired values (average ranks for ties: Pearson's correlation
    of the ranks). Pairs with a missing or non-finite value are left out; None below 3 pairs or
    when one side is constant (no ranking to compare)."""
    a, b = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: {a.size} values against {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if scale == 0.0:
        return None
    return float(np.clip(float(ra @ rb) / scale, -1.0, 1.0))


# -- the report ----------------------------------------------------------------------------------
class _Rung:
    """One rung's (or the check's) rows by configuration: each configuration's best row, its
    value, in :func:`promote`'s order (best first, then the configurations without a value)."""

    def __init__(
        self, rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str, mode: str
    ) -> None:
        self.rows = list(rows)
        self.ran: dict[Key, Mapping[str, Any]] = {}
        self.values: dict[Key, float] = {}
        for row in promote(self.rows, metric, mode, len(self.rows)):
            key = config_key(row, keys)
            if key not in self.values:
                self.values[key] = _value(row, metric)  # type: ignore[assignment]
                self.ran[key] = row
        for row in self.rows:
            self.ran.setdefault(config_key(row, keys), row)
        self.mode = mode

    @property
    def best(self) -> Key | None:
        return next(iter(self.values), None)

    def rank(self, key: Key | None) -> int | None:
        """1 + the number of configurations strictly better than ``key``'s; None if it has no value."""
        if key is None or key not in self.values:
            return None
        value = self.values[key]
        return 1 + sum(_better(v, value, self.mode) for v in self.values.values())

    def seconds(self) -> float:
        total = 0.0
        for row in self.rows:
            value = _plain(row.get("seconds"))
            if isinstance(value, (int, float)) and math.isfinite(value):
                total += float(value)
        return total


def _config(keys: Sequence[str], key: Key | None) -> dict[str, Any] | None:
    return None if key is None else dict(zip(keys, key))


def _trial(rung: _Rung, key: Key | None) -> Any:
    return None if key is None else _plain(rung.ran[key].get("trial_id"))


def _pair(rungs: list[_Rung], names: list[str], keys: Sequence[str], i: int, j: int) -> dict[str, Any]:
    low, high = rungs[i], rungs[j]
    onward = rungs[j + 1] if j + 1 < len(rungs) else None
    final = rungs[-1].best
    common = [k for k in low.values if k in high.values]
    x, y = [low.values[k] for k in common], [high.values[k] for k in common]
    best_low, best_high = low.best, high.best
    return {
        "from": i,
        "to": j,
        "names": [names[i], names[j]],
        "ran_both": sum(k in high.ran for k in low.ran),
        "matched": len(common),
        "spearman": spearman(x, y),
        "best_kept": None if best_low is None or best_high is None else best_low == best_high,
        "best_rank_before": low.rank(best_high),
        "of": len(low.values),
        "promoted_to": names[j + 1] if onward is not None else None,
        "points": [
            {
                "config": _config(keys, k),
                "x": low.values[k],
                "y": high.values[k],
                "promoted": onward is not None and k in onward.ran,
                "final_best": k == final,
            }
            for k in common
        ],
        "dropped": [
            v for k, v in low.values.items() if k not in high.ran
        ],  # ``from``'s values of those not run at ``to``
    }


def _ks(m: int, top_k: int | None) -> list[int]:
    ks, k = set(), 1
    while k < m:
        ks.add(k)
        k *= 2
    if m:
        ks.add(m)
    if top_k is not None and 1 <= top_k <= m:
        ks.add(int(top_k))
    return sorted(ks)


def _check(
    rungs: list[_Rung], names: list[str], keys: Sequence[str], check: _Rung, total: float, top_k: int | None
) -> dict[str, Any]:
    mode, first, last = check.mode, rungs[0], rungs[-1]
    common = [k for k in first.values if k in check.values]
    best_full = check.best
    best_value = check.values[best_full] if best_full is not None else None
    order0 = list(first.values)  # rung 0's configurations with a value, best first
    regrets = []
    for k in _ks(len(order0), top_k):  # up to every configuration of rung 0: the last k keeps the best
        chosen = [check.values[c] for c in order0[:k] if c in check.values]
        if not chosen or best_value is None:
            regrets.append({"k": k, "best": None, "regret": None})
            continue
        pick = max(chosen) if mode == "max" else min(chosen)
        regrets.append({"k": k, "best": pick, "regret": _regret(best_value, pick, mode)})
    final = last.best
    final_check = check.values.get(final) if final is not None else None
    final_value = last.values.get(final) if final is not None else None
    compared = final_check if final_check is not None else final_value
    check_seconds = check.seconds()
    onward = rungs[1] if len(rungs) > 1 else None
    return {
        "configs": len(check.ran),
        "scored": len(check.values),
        "covered": sum(k in check.ran for k in first.ran),  # rung 0's configurations the check ran
        "of": len(first.ran),
        "matched": len(common),
        "spearman": spearman([first.values[k] for k in common], [check.values[k] for k in common]),
        "best_full": best_value,
        "best_full_config": _config(keys, best_full),
        "best_full_trial": _trial(check, best_full),
        "regret_top_k": regrets,
        "rung0_best_rank": check.rank(first.best),
        "search_best": {
            "config": _config(keys, final),
            "value": final_value,
            "check_value": final_check,
            "rank": check.rank(final),
            "regret": None if compared is None or best_value is None else _regret(best_value, compared, mode),
        },
        "seconds": check_seconds,
        "compute_ratio": total / check_seconds if check_seconds > 0 else None,
        "promoted_to": names[1] if onward is not None else None,
        "points": [
            {
                "config": _config(keys, k),
                "x": first.values[k],
                "y": check.values[k],
                "promoted": onward is not None and k in onward.ran,
                "final_best": k == final,
            }
            for k in common
        ],
        "dropped": [],
    }


def fidelity_report(
    rungs: Sequence[Sequence[Mapping[str, Any]]],
    keys: Sequence[str],
    metric: str,
    mode: str,
    *,
    names: Sequence[str] | None = None,
    seconds: Sequence[float] | None = None,
    check: Sequence[Mapping[str, Any]] | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    """The analysis of a multi-fidelity search, a plain JSON-able dict (see the module docstring).

    ``rungs``: each rung's results rows, cheapest first; ``keys``: the searched keys, which match a
    configuration's rows across rungs; ``names``: the rungs' names (``rung 0``, ...); ``seconds``:
    each rung's compute (else the sum of its rows' ``seconds``); ``check``: the rows of a check run
    (every rung-0 configuration at the last rung's fidelity); ``top_k``: the k the search promoted,
    added to the regret's k's. Keys: ``metric``, ``mode``, ``keys``, ``top_k``, ``rungs`` (per rung:
    name, trials, configs, scored, failed, best, best_config, best_trial, seconds, promoted: how
    many went on to the next rung), ``pairs`` (each consecutive pair and (0, last): matched,
    spearman, best_kept, best_rank_before: the rank at the cheaper rung of the dearer one's best,
    points, dropped), ``compute`` (seconds per rung, total), ``check`` (None, or: matched,
    spearman, best_full, regret_top_k, rung0_best_rank, search_best, seconds, compute_ratio,
    points) and ``configurations`` (every configuration's value per rung and in the check)."""
    _check_mode(mode)
    if not rungs:
        raise ConfigError("rungs", 0, "the rows of one rung or more")
    keys = list(keys)
    names = [str(n) for n in names] if names is not None else [f"rung {i}" for i in range(len(rungs))]
    if len(names) != len(rungs):
        raise ConfigError("names", len(names), f"one name per rung ({len(rungs)})")
    if seconds is not None and len(seconds) != len(rungs):
        raise ConfigError("seconds", len(seconds), f"one number per rung ({len(rungs)})")
    if top_k is not None and int(top_k) < 1:
        raise ConfigError("top_k", top_k, "an integer >= 1")
    parts = [_Rung(rows, keys, metric, mode) for rows in rungs]
    spent = [float(seconds[i]) if seconds is not None else r.seconds() for i, r in enumerate(parts)]
    total = float(sum(spent))
    out_rungs = []
    for i, rung in enumerate(parts):
        best = rung.best
        out_rungs.append(
            {
                "name": names[i],
                "trials": len(rung.rows),
                "configs": len(rung.ran),
                "scored": len(rung.values),
                "failed": sum(r.get("status") == "failed" for r in rung.rows),
                "best": rung.values[best] if best is not None else None,
                "best_config": _config(keys, best),
                "best_trial": _trial(rung, best),
                "seconds": spent[i],
                "promoted": sum(k in parts[i + 1].ran for k in rung.ran) if i + 1 < len(parts) else None,
            }
        )
    last = len(parts) - 1
    pairs = [_pair(parts, names, keys, i, i + 1) for i in range(last)]
    if last > 1:
        pairs.append(_pair(parts, names, keys, 0, last))
    checked = _Rung(check, keys, metric, mode) if check is not None else None
    return {
        "metric": metric,
        "mode": mode,
        "keys": keys,
        "top_k": None if top_k is None else int(top_k),
        "rungs": out_rungs,
        "pairs": pairs,
        "compute": {"seconds": spent, "total": total},
        "check": _check(parts, names, keys, checked, total, top_k) if checked is not None else None,
        "configurations": _configurations(parts, keys, checked),
    }


def _configurations(parts: list[_Rung], keys: Sequence[str], check: _Rung | None) -> list[dict[str, Any]]:
    """Every configuration, the furthest-promoted first, then by its value at the furthest rung."""
    seen: dict[Key, None] = {}
    for rung in parts:
        for key in [*rung.values, *rung.ran]:
            seen.setdefault(key, None)
    rows = []
    for key in seen:
        reached = max(i for i, rung in enumerate(parts) if key in rung.ran)
        rows.append(
            {
                "config": _config(keys, key),
                "ran": [key in rung.ran for rung in parts],
                "values": [rung.values.get(key) for rung in parts],
                "check": check.values.get(key) if check is not None else None,
                "check_ran": check is not None and key in check.ran,
                "reached": reached,
            }
        )
    sign = -1.0 if parts[0].mode == "max" else 1.0

    def order(row: dict[str, Any]) -> tuple[float, float]:
        value = row["values"][row["reached"]]
        return (-row["reached"], sign * value if value is not None else math.inf)

    return sorted(rows, key=order)


# -- the page and the files ------------------------------------------------------------------------
def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} s" if value >= 100 else f"{value:.1f} s"


def _shown(config: Mapping[str, Any] | None) -> str:
    if not config:
        return "(no searched keys)" if config is not None else "n/a"
    return ", ".join(f"{k}={_fmt(v)}" for k, v in config.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _agreement(rho: float, cheap: str, dear: str) -> str:
    if rho >= 0.9:
        text = f"the {cheap} ranking nearly orders the configurations as {dear} does"
    elif rho >= 0.7:
        text = f"the {cheap} ranking orders the configurations much as {dear} does"
    elif rho >= 0.4:
        text = f"the {cheap} ranking orders the configurations only roughly as {dear} does"
    elif rho >= 0.1:
        text = f"the {cheap} ranking barely agrees with {dear}'s"
    elif rho > -0.1:
        text = f"the {cheap} ranking tells nothing of {dear}'s (no better than chance)"
    else:
        text = f"the {cheap} ranking runs against {dear}'s"
    return text


def _spearman_sentence(rho: float | None, n: int, cheap: str, dear: str) -> str:
    if rho is None:
        return (
            f"No Spearman between {cheap} and {dear}: {n} configuration{'s' if n != 1 else ''} with a value at "
            "both, and it needs 3 or more whose values are not all equal."
        )
    noisy = f"; over fewer than {FEW} configurations this number is noisy" if n < FEW else ""
    return f"Spearman {rho:.2f} between {cheap} and {dear} over {n} configurations: {_agreement(rho, cheap, dear)}{noisy}."


def fidelity_markdown(
    report: Mapping[str, Any], *, title: str | None = None, figure: str | None = None
) -> str:
    """The report as a Markdown page: what each number means in plain sentences, then every
    configuration's values side by side. ``figure``: a PNG's path relative to the page."""
    from tuneddml.results.leaderboard import metric_label

    metric, mode = metric_label(report["metric"]), report["mode"]
    rungs, pairs, check = report["rungs"], report["pairs"], report["check"]
    direction = "higher" if mode == "max" else "lower"
    lines = [f"# {title or 'Fidelity: how well the cheap rungs rank the configurations'}", ""]
    lines.append(
        f"Metric: {metric} ({direction} is better), the best value of each trial. Configurations are matched "
        f"across rungs by the searched keys: {', '.join(report['keys']) or 'none'}."
    )
    lines.append("")
    if figure:
        lines += [f"![fidelity]({figure})", ""]
    lines += ["## Rungs", ""]
    for i, rung in enumerate(rungs):
        failed = f", {rung['failed']} failed" if rung["failed"] else ""
        went = (
            f"; {rung['promoted']} went on to {rungs[i + 1]['name']}" if rung["promoted"] is not None else ""
        )
        best = (
            f"best {metric} {_num(rung['best'])} ({_shown(rung['best_config'])})"
            if rung["best"] is not None
            else f"no {metric}"
        )
        lines.append(
            f"- {rung['name']}: {rung['configs']} configurations run ({rung['scored']} with a value{failed}), "
            f"{best}, {_seconds(rung['seconds'])}{went}."
        )
    lines.append("")
    if pairs:
        lines += [
            "## Rank agreement between rungs",
            "",
            "Each pair is compared over the configurations run at both: those promoted, the best of the cheaper "
            "rung, a narrow range of values, where two rankings agree less than over every configuration.",
            "",
        ]
    for pair in pairs:
        cheap, dear = pair["names"]
        lines.append(f"- {_spearman_sentence(pair['spearman'], pair['matched'], cheap, dear)}")
        if pair["best_kept"] is True:
            lines.append(f"  The best at {dear} was the best at {cheap} too.")
        elif pair["best_kept"] is False:
            rank = pair["best_rank_before"]
            where = f"{_ordinal(rank)} of {pair['of']}" if rank is not None else "without a value"
            lines.append(f"  The best at {dear} was not the best at {cheap}: it was {where} there.")
    if pairs:
        lines.append("")
    compute = report["compute"]
    per = ", ".join(f"{r['name']} {_seconds(s)}" for r, s in zip(rungs, compute["seconds"]))
    lines += ["## Compute", "", f"The search used {_seconds(compute['total'])} over its rungs ({per}).", ""]
    if check is not None:
        lines += _check_lines(report, check, metric)
    lines += _table(report)
    return "\n".join(lines) + "\n"


def _check_lines(report: Mapping[str, Any], check: Mapping[str, Any], metric: str) -> list[str]:
    rungs = report["rungs"]
    first, last = rungs[0]["name"], rungs[-1]["name"]
    lines = ["## Check: every rung-0 configuration at full fidelity", ""]
    lines.append(
        f"The check ran {check['covered']} of {first}'s {check['of']} configurations at {last}'s fidelity "
        f"({check['scored']} with a value, {_seconds(check['seconds'])})."
    )
    lines.append(_spearman_sentence(check["spearman"], check["matched"], first, "the check"))
    if check["best_full"] is None:
        return [*lines, "", f"No configuration has a {metric} in the check: no regret to measure.", ""]
    lines.append(
        f"The best in the check is {_num(check['best_full'])} ({_shown(check['best_full_config'])})."
    )
    rank = check["rung0_best_rank"]
    if rank is not None:
        lines.append(
            f"The best configuration of {first} is {_ordinal(rank)} of {check['scored']} in the check"
            + (": the cheap fidelity found the best." if rank == 1 else ".")
        )
    lines += [
        "",
        f"Regret of promoting the top k from {first}: the best value in the check minus the best check value "
        f"among {first}'s k best (0: promoting k keeps the best configuration).",
        "",
        f"| k | best in the check among {first}'s top k | regret |",
        "|---:|---:|---:|",
    ]
    for entry in check["regret_top_k"]:
        mark = " (the search's k)" if report["top_k"] == entry["k"] else ""
        lines.append(f"| {entry['k']}{mark} | {_num(entry['best'])} | {_num(entry['regret'])} |")
    kept = [e["k"] for e in check["regret_top_k"] if e["regret"] == 0]
    if kept:
        lines.append("")
        lines.append(f"Promoting the top {kept[0]} from {first} is the smallest k here that keeps the best.")
    final = check["search_best"]
    lines.append("")
    if final["config"] is not None:
        at = (
            f"scores {_num(final['check_value'])} in the check ({_ordinal(final['rank'])} of {check['scored']})"
            if final["check_value"] is not None
            else f"is not in the check; its value at {last} is {_num(final['value'])}"
        )
        verdict = "it is the best" if final["regret"] == 0 else f"regret {_num(final['regret'])}"
        lines.append(f"The search's final pick ({_shown(final['config'])}) {at}: {verdict}.")
    ratio = check["compute_ratio"]
    if ratio:
        saving = f"{1 / ratio:.1f}x less" if ratio < 1 else "no saving"
        lines.append(
            f"Compute: the search used {_seconds(report['compute']['total'])}, the check {_seconds(check['seconds'])}: "
            f"{ratio:.2f} of the check's ({saving})."
        )
    return [*lines, ""]


def _table(report: Mapping[str, Any]) -> list[str]:
    rungs, check = report["rungs"], report["check"]
    header = ["configuration", *(r["name"] for r in rungs), *(["check"] if check is not None else [])]
    lines = [
        "## Configurations",
        "",
        "Each configuration's value at every rung it ran (blank: not promoted there; n/a: ran without a value), "
        "the furthest-promoted first.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in report["configurations"]:
        cells = [_shown(row["config"]).replace("|", "\\|")]
        cells += [_num(v) if ran else "" for ran, v in zip(row["ran"], row["values"])]
        if check is not None:
            cells.append(_num(row["check"]) if row["check_ran"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return _plain(value) if isinstance(value, np.generic) else value


def _replace(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_fidelity_report(
    report: Mapping[str, Any],
    folder: str | os.PathLike,
    *,
    title: str | None = None,
    figure: str | None = None,
) -> dict[str, Path]:
    """Write ``folder/fidelity.json`` (the report) and ``folder/fidelity.md``
    (:func:`fidelity_markdown`), each atomically. Returns the paths by kind: ``json``, ``markdown``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(report), indent=1, default=str, allow_nan=False)
    return {
        "json": _replace(out / FIDELITY_JSON, text + "\n"),
        "markdown": _replace(out / FIDELITY_MD, fidelity_markdown(report, title=title, figure=figure)),
    }


def read_fidelity_report(folder: str | os.PathLike) -> dict[str, Any]:
    """The report a :func:`write_fidelity_report` left in ``folder``."""
    return json.loads((Path(folder) / FIDELITY_JSON).read_text())
