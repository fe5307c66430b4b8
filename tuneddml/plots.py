# Long file: the report's five figures, the leaderboard's and the fidelity report's share their scales, labels and figure helpers.
"""The report's figures, drawn from a results frame (one row per trial: :mod:`tuneddml.results.schema`)
and the searches' per-epoch logs.

Five views of a search, each a function ``draw_*(results) -> Figure | str`` that returns why it
does not apply (no loss with a ``lambda``, no varied parameter, no epoch log, too few trials):

- the *balance landscape* of Sors et al. (2021, arXiv 2112.11743): for every loss with the balance
  weight ``lambda`` (``total = 2 lambda * first + 2 (1 - lambda) * second``, the two sides each loss
  declares in its :class:`~tuneddml.losses.base.Balance`, named on the lambda axis), the search
  metric against lambda, on one metric axis shared by every loss's panel, coloured by the loss's
  temperature (or a margin when the loss has no temperature);
- *best so far* against the number of trials started, one line per search (searcher): the
  sample-efficiency comparison of coordinate descent, TPE, random and grid search;
- *learning curves*: the metric and each loss term per epoch for the best trials, from the epoch
  log (:data:`~tuneddml.results.schema.EPOCHS_FILE`);
- *parameter importance*: Optuna's PED-ANOVA over the trials with a result, in an in-memory study
  built from the table (conditional parameters in their own regime);
- *parallel coordinates* of every varied parameter, one line per trial coloured by the metric;
  categorical parameters sit at evenly spaced ticks, a parameter a trial does not have at "n/a".

:func:`make_report` draws every figure of :data:`PLOTS` that applies (the search driver calls it at
the end of a search, ``python -m tuneddml.report`` on demand), and none for a search without any
result. :func:`draw_leaderboard` draws a benchmark's leaderboard (a
:class:`~tuneddml.results.leaderboard.Leaderboard`, not a results table) as error bars, and
:func:`save_leaderboard_figure` saves it; :func:`draw_fidelity` draws a multi-fidelity search's
fidelity report (rung against rung, not a results table) and :func:`save_fidelity_figure` saves it. Figures are built on :class:`matplotlib.figure.Figure`
with the Agg canvas, never through pyplot, so drawing touches no global state and needs no display.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from tuneddml.results import (
    CONFIG,
    EPOCH,
    TERM,
    config_column,
    is_numeric,
    log_scaled,
    present_config,
    scores,
    varied_params,
)

if TYPE_CHECKING:
    from tuneddml.results import Results, Source
    from tuneddml.results.leaderboard import Leaderboard

LAMBDA = config_column("loss.lambda")
# Second axis of the landscape, in order of preference (Sors et al. plot lambda against these).
SECOND_AXES = ("temperature", "margin", "neg_margin", "pos_margin", "proxy_temperature", "alpha", "scale")
MAX_PARALLEL_AXES = 14
LEARNING_CURVES = 5  # best trials drawn per epoch
NA_POSITION = -0.14
DPI = 110
FAILED_COLOR = "0.62"


def _colors(mode: str) -> Any:
    # Bright means better whatever the direction of the metric.
    return colormaps["viridis" if mode == "max" else "viridis_r"]


def _norm(values: pd.Series) -> Normalize:
    present = values.dropna()
    if present.empty:
        return Normalize(0.0, 1.0)
    low, high = float(present.min()), float(present.max())
    if low == high:
        low, high = low - 0.5 * abs(low or 1.0) * 0.01, high + 0.5 * abs(high or 1.0) * 0.01
    return Normalize(low, high)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _best_index(values: pd.Series, mode: str) -> Any:
    present = values.dropna()
    if present.empty:
        return None
    return present.idxmax() if mode == "max" else present.idxmin()


def _second_axis(rows: pd.DataFrame) -> str | None:
    """The loss parameter drawn against lambda: the first of SECOND_AXES that varies in ``rows``."""
    candidates = [config_column(f"loss.{name}") for name in SECOND_AXES]
    candidates += sorted(
        c for c in rows.columns if c.startswith(config_column("loss.")) and c not in candidates
    )
    for column in candidates:
        if column == LAMBDA or column not in rows.columns:
            continue
        values = rows[column].dropna()
        if is_numeric(values) and values.nunique() > 1:
            return column
    return None


def _lambda_label(loss: str, rows: pd.DataFrame) -> str:
    """The lambda axis of ``loss``: its balance sides; CCP's (which declares none) its base loss's."""
    from tuneddml.losses import balance_label  # the loss registry (and torch) only when drawn

    label = balance_label(loss)
    base = config_column("loss.base")
    if label == "lambda" and base in rows.columns and rows[base].dropna().nunique() == 1:
        label = balance_label(str(rows[base].dropna().iloc[0]))
    return label.replace(" (", "\n(", 1)


def draw_balance_landscape(results: Results) -> Figure | str:
    """One panel per loss that has ``lambda``: the search metric against lambda, on one metric axis
    shared by every panel (so the losses compare by height), coloured by the loss's second setting
    (temperature or a margin) where one varies."""
    frame, metric, mode = results.frame, results.metric, results.mode
    loss_column = config_column("loss")
    if LAMBDA not in frame.columns or loss_column not in frame.columns:
        return "balance landscape: no trial has a loss.lambda"
    with_lambda = frame[pd.to_numeric(frame[LAMBDA], errors="coerce").notna()]
    score = scores(frame, metric)
    if score.loc[with_lambda.index].notna().sum() == 0:
        return "balance landscape: no trial with a loss.lambda has a result"
    best_of = {
        str(loss): score.loc[group.index].agg("max" if mode == "max" else "min")
        for loss, group in with_lambda.groupby(with_lambda[loss_column].astype(str))
    }
    # best loss first; a loss without any result last
    losses = sorted(
        best_of, key=lambda k: (math.isnan(best_of[k]), -best_of[k] if mode == "max" else best_of[k])
    )
    columns = min(3, len(losses))
    rows = math.ceil(len(losses) / columns)
    figure = _new_figure(4.6 * columns + 0.4, 3.9 * rows + 0.5)
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
    overall = score.loc[with_lambda.index].agg("max" if mode == "max" else "min")
    for ax, loss in zip(axes.flat, losses):
        sub = with_lambda[with_lambda[loss_column].astype(str) == loss]
        x = pd.to_numeric(sub[LAMBDA], errors="coerce").astype(float)
        value = score.loc[sub.index]
        ok = value.notna()
        c_column = _second_axis(sub)
        if c_column is not None:
            c = pd.to_numeric(sub[c_column], errors="coerce").astype(float)
            norm = LogNorm(c.min(), c.max()) if log_scaled(c) else _norm(c)
            points = ax.scatter(
                x[ok], value[ok], c=c[ok], cmap="plasma", norm=norm, s=46, edgecolors="black", linewidths=0.4
            )
            # below the panel: a bar beside it would read as the next panel's vertical axis
            bar = figure.colorbar(points, ax=ax, location="bottom", shrink=0.8, aspect=35, pad=0.01)
            bar.set_label(f"colour: {c_column.removeprefix(config_column('loss.'))}", fontsize=8)
            bar.ax.tick_params(labelsize=7)
            if isinstance(norm, LogNorm):  # 0.01, 0.03, 0.1 ... rather than 10^-2 and 3 x 10^-2
                bar.ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
                bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
                bar.ax.xaxis.set_minor_formatter(NullFormatter())
        else:  # lambda alone varies in this loss: a scan, read as a curve
            line = value[ok].groupby(x[ok]).agg("max" if mode == "max" else "min").sort_index()
            ax.plot(line.index, line.to_numpy(), color="tab:blue", linewidth=1, alpha=0.5)
            ax.scatter(x[ok], value[ok], color="tab:blue", s=46, edgecolors="black", linewidths=0.4, zorder=3)
        if (~ok).any():  # no metric, so no height: a cross on the floor of the panel
            ax.scatter(
                x[~ok],
                np.full(int((~ok).sum()), 0.03),
                transform=ax.get_xaxis_transform(),
                marker="x",
                color=FAILED_COLOR,
                s=40,
                clip_on=False,
            )
        best = _best_index(value, mode)
        if best is not None:
            ax.scatter(
                [x[best]],
                [value[best]],
                marker="*",
                s=260,
                facecolors="none",
                edgecolors="red",
                linewidths=1.4,
            )
            ax.annotate(
                f"{value[best]:.3f}",
                (x[best], value[best]),
                xytext=(7, 5),
                textcoords="offset points",
                fontsize=8,
                color="red",
            )
        ax.axhline(overall, color="red", linestyle=":", linewidth=0.8, alpha=0.7)
        ax.set_xlabel(_lambda_label(loss, sub), fontsize=8)
        if x.between(0, 1).all():
            ax.set_xlim(-0.04, 1.04)
        trials = f"{len(sub)} trial{'s' if len(sub) != 1 else ''}"
        missing = "; grey x: without" if (~ok).any() else ""
        ax.set_title(f"{loss}  ({trials}, {int(ok.sum())} with a result{missing})", fontsize=10)
        ax.margins(y=0.12)  # room for the best value's label above its star
        ax.grid(alpha=0.3)
        ax.tick_params(labelleft=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    for ax in list(axes.flat)[len(losses) :]:
        ax.set_visible(False)
    figure.suptitle(
        f"balance landscape: {metric} against lambda per loss, on one {metric} axis "
        "(star: best of the loss; dotted: best of all)",
        fontsize=11,
    )
    return figure


def _running_best(values: np.ndarray, mode: str) -> np.ndarray:
    # fmax/fmin skip NaN, so a failed trial never lowers (or erases) the best so far.
    return np.fmax.accumulate(values) if mode == "max" else np.fmin.accumulate(values)


def draw_best_so_far(results: Results) -> Figure | str:
    """Best metric so far against the number of trials started, one line per search; the legend
    sits below the axes, where it hides no trial."""
    frame, metric, mode = results.frame, results.metric, results.mode
    score = scores(frame, metric)
    keys = [c for c in ("search", "searcher") if c in frame.columns]
    groups = list(frame.groupby(keys, dropna=False, sort=True)) if keys else [(("all",), frame)]
    searchers = [g.get("searcher", pd.Series(["?"])).iloc[0] for _, g in groups]
    ambiguous = len(set(map(str, searchers))) < len(groups)
    figure = _new_figure(7.2, 4.9)
    ax = figure.subplots()
    cycle = colormaps["tab10"]
    for i, (key, group) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        order = (
            group["order"] if "order" in group.columns else pd.Series(range(len(group)), index=group.index)
        )
        group = group.assign(_order=pd.to_numeric(order, errors="coerce")).sort_values(
            "_order", kind="stable"
        )
        values = score.loc[group.index].to_numpy(float)
        best = _running_best(values, mode)
        trials = np.arange(1, len(values) + 1)
        searcher = str(group["searcher"].iloc[0]) if "searcher" in group.columns else "search"
        label = f"{searcher} ({key[0]})" if ambiguous and "search" in group.columns else searcher
        final = best[-1] if len(best) and not np.isnan(best[-1]) else float("nan")
        failed = int(np.isnan(values).sum())
        color = cycle(i % 10)
        ax.step(
            trials,
            best,
            where="post",
            color=color,
            linewidth=2,
            label=f"{label}: best {final:.4g} after {len(values)} trials"
            + (f" ({failed} without result)" if failed else ""),
        )
        ax.plot(trials, values, linestyle="none", marker="o", markersize=4, color=color, alpha=0.45)
    ax.set_xlabel("trials started")
    ax.set_ylabel(f"best {metric} so far ({mode})")
    ax.set_title("best so far per searcher (dots: single trials)", fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    figure.legend(loc="outside lower center", fontsize=8, ncol=1 if len(groups) < 3 else 2, frameon=False)
    return figure


def _axis_positions(values: pd.Series) -> tuple[np.ndarray, list[float], list[str]]:
    """Positions in [0, 1] (NA_POSITION for a missing value), tick positions and their labels."""
    missing = values.isna().to_numpy()
    positions = np.full(len(values), NA_POSITION)
    ticks: list[float] = []
    labels: list[str] = []
    if is_numeric(values):
        numbers = pd.to_numeric(values, errors="coerce").astype(float)
        log = log_scaled(numbers)
        scaled = np.log10(numbers) if log else numbers
        low, high = float(scaled.min()), float(scaled.max())
        span = high - low
        positions[~missing] = ((scaled[~missing] - low) / span) if span > 0 else 0.5
        distinct = sorted(set(scaled[~missing]))
        if len(distinct) <= 5:  # few values (batch sizes, counts): label each, not an invented midpoint
            fractions = [(v - low) / span if span > 0 else 0.5 for v in distinct]
        else:
            fractions = [0.0, 0.5, 1.0]
        for fraction in fractions:
            raw = low + fraction * span
            ticks.append(fraction)
            labels.append(f"{10**raw if log else raw:.3g}")
    else:
        text = values.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        categories = sorted(set(text.dropna()))
        where = {
            c: (i / (len(categories) - 1) if len(categories) > 1 else 0.5) for i, c in enumerate(categories)
        }
        positions[~missing] = [where[c] for c in text[~missing]]
        ticks, labels = list(where.values()), list(where)
    if missing.any():
        ticks.append(NA_POSITION)
        labels.append("n/a")
    return positions, ticks, labels


def draw_parallel_coordinates(results: Results) -> Figure | str:
    """One vertical axis per varied parameter and one for the metric; one line per trial."""
    frame, metric, mode = results.frame, results.metric, results.mode
    params = varied_params(frame)[:MAX_PARALLEL_AXES]
    if not params:
        return "parallel coordinates: no parameter varied"
    score = scores(frame, metric)
    columns: Sequence[tuple[str, pd.Series]] = [(p.removeprefix(CONFIG), frame[p]) for p in params]
    columns = [*columns, (metric, score)]
    axes_data = [_axis_positions(values) for _, values in columns]
    norm, cmap = _norm(score), _colors(mode)
    figure = _new_figure(max(6.5, 1.35 * len(columns) + 1.8), 4.8)
    ax = figure.subplots()
    xs = np.arange(len(columns))
    ys = np.stack([positions for positions, _, _ in axes_data], axis=1)
    # Worst first, so the best trials are drawn on top; trials without a result first of all.
    ranking = score.rank(ascending=(mode == "max"), na_option="bottom").to_numpy()
    for row in np.argsort(-ranking, kind="stable"):
        value = score.iloc[row]
        if math.isnan(value):
            ax.plot(xs, ys[row], color=FAILED_COLOR, linewidth=0.9, alpha=0.6, linestyle="--")
        else:
            ax.plot(xs, ys[row], color=cmap(norm(value)), linewidth=1.4, alpha=0.85)
    for x, (_, ticks, labels) in zip(xs, axes_data):
        ax.axvline(x, color="black", linewidth=0.8)
        for tick, label in zip(ticks, labels):
            ax.text(
                x - 0.04,
                tick,
                label,
                ha="right",
                va="center",
                fontsize=7,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7},
            )
    ax.set_xticks(xs, [name for name, _ in columns], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(columns) - 0.6)
    ax.set_ylim(NA_POSITION - 0.08, 1.06)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric, shrink=0.9)
    ax.set_title(
        f"parallel coordinates of the varied parameters ({len(frame)} trials; dashed: no result)", fontsize=10
    )
    return figure


def trial_labels(frame: pd.DataFrame) -> dict[Any, str]:
    """Each row's readable name (:func:`tuneddml.results.labels.trial_label`), by frame index: its
    start order, loss and the settings the search varied."""
    from tuneddml.results.labels import trial_label

    searched = [c.removeprefix(CONFIG) for c in varied_params(frame)]
    order = pd.to_numeric(frame["order"], errors="coerce") if "order" in frame.columns else None
    return {
        i: trial_label(
            present_config(row), searched, None if order is None or math.isnan(order[i]) else int(order[i]) + 1
        )
        for i, row in frame.iterrows()
    }


def _balance_sides(loss: str) -> tuple[str, str] | tuple[()]:
    """The two terms ``lambda`` weighs in ``loss`` (first, second), or none."""
    from tuneddml.losses import LOSSES

    try:
        balance = LOSSES.get(loss).factory.balance  # type: ignore[attr-defined]
    except Exception:  # not a registered loss, or one without a balance
        return ()
    return (balance.first, balance.second) if balance is not None else ()


def draw_learning_curves(results: Results, top: int = LEARNING_CURVES) -> Figure | str:
    """The search metric and every loss term (``loss/<term>``) per epoch, for the ``top`` best
    trials, from the search's epoch log: does a trial still climb when it ends, which term moves.
    The metric's panel (left, full height) holds every trial; the terms get one row per loss, as
    two losses' ``pos`` are different quantities on different scales."""
    frame, metric, mode, epochs = results.frame, results.metric, results.mode, results.epochs
    if epochs.empty or "trial_id" not in epochs.columns or "trial_id" not in frame.columns:
        return "learning curves: no per-epoch log (epochs.jsonl) for these searches"
    if metric not in epochs.columns:
        return f"learning curves: the epoch log has no {metric}"
    score = scores(frame, metric)
    logged = set(epochs["trial_id"].astype(str))
    best = [
        i
        for i in score.dropna().sort_values(ascending=mode == "min", kind="stable").index
        if str(frame.at[i, "trial_id"]) in logged
    ][:top]
    if not best:
        return "learning curves: the epoch log has no epoch of a trial with a result"
    curves = {
        i: epochs[epochs["trial_id"].astype(str) == str(frame.at[i, "trial_id"])].sort_values(EPOCH)
        for i in best
    }
    loss_column = config_column("loss")
    loss_of = {i: str(frame.at[i, loss_column]) if loss_column in frame.columns else "loss" for i in best}
    terms: dict[str, list[str]] = {}  # loss -> its terms, best loss first
    for i in best:
        present = [c for c in curves[i].columns if c.startswith(TERM) and curves[i][c].notna().any()]
        known = terms.setdefault(loss_of[i], [])
        known += [c for c in present if c not in known]
    for loss, names in terms.items():  # total, then the balance's two sides in its order
        sides = _balance_sides(loss)
        names.sort(key=lambda c: (c != f"{TERM}total", *(c != f"{TERM}{side}" for side in sides), c))
    width = max((len(t) for t in terms.values()), default=0)
    rows = [
        [metric, *(f"{loss}|{t}" for t in names), *["."] * (width - len(names))]
        for loss, names in terms.items()
    ]
    rows = [row for row in rows if len(row) > 1] or [[metric]]
    figure = _new_figure(3.9 * len(rows[0]) + 0.4, max(3.4, 2.7 * len(rows)) + 0.4 + 0.2 * len(best))
    axes = figure.subplot_mosaic(rows, empty_sentinel=".")
    labels = trial_labels(frame)
    cycle = colormaps["tab10"]
    for rank, i in enumerate(best):
        status = frame.at[i, "status"] if "status" in frame.columns else "finished"
        label = f"{labels[i]}: best {metric} {score[i]:.3f}" + (
            f" ({status})" if status != "finished" else ""
        )
        style = {"marker": "o", "markersize": 3.5, "color": cycle(rank % 10), "linewidth": 1.6}
        curve = curves[i]
        axes[metric].plot(curve[EPOCH], curve[metric], label=label, **style)
        for term in terms.get(loss_of[i], []):
            if curve.get(term) is not None and curve[term].notna().any():
                axes[f"{loss_of[i]}|{term}"].plot(curve[EPOCH], curve[term], **style)
    for key, ax in axes.items():
        loss, _, term = key.partition("|")
        ax.set_title(
            f"{metric} (search metric)" if not term else f"{loss}: loss term {term.removeprefix(TERM)}",
            fontsize=10,
        )
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    figure.legend(loc="outside lower center", fontsize=8, frameon=False, ncol=1)
    figure.suptitle(
        f"learning curves of the {len(best)} best trials (each loss term: its mean over the epoch)",
        fontsize=11,
    )
    return figure


def draw_param_importance(results: Results) -> Figure | str:
    """:func:`param_importance` as horizontal bars, most important on top."""
    from tuneddml.searchers.importance import param_importance

    found = param_importance(results)
    if isinstance(found, str):
        return found
    importance, basis = found
    names = list(importance)[::-1]
    values = [importance[n] for n in names]
    figure = _new_figure(6.8, 1.4 + 0.38 * len(names))
    ax = figure.subplots()
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_xlabel("importance (normalised: the bars add up to 1)")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        f"parameter importance: what sets the {results.metric} of the best trials\n"
        f"(Optuna PED-ANOVA over the {basis})",
        fontsize=10,
    )
    return figure


def draw_leaderboard(board: Leaderboard) -> Figure | str:
    """A leaderboard (:func:`tuneddml.results.leaderboard.build_leaderboard`) as error bars: one
    panel per metric, one row per loss in the table's order (best on top), its mean over seeds a
    dot and its confidence interval a horizontal bar, the test numbers (each fold model's own
    embeddings, "separated") and the concatenated ones in two colours. The best loss's row is
    shaded and its test mean a dotted line; a loss with one seed has a dot and no bar."""
    from tuneddml.results.leaderboard import metric_label

    table, key = board.table, f"test.{board.rank_by}"
    if not any(row.get(f"{key}.n") for row in table):
        return f"leaderboard: no loss has a test {board.rank_by}"
    parts = (
        ("test", "tab:blue", -0.13, "test (separated: mean over the fold models)"),
        ("concat", "tab:orange", 0.13, "concatenated (the fold models' embeddings joined)"),
    )
    figure = _new_figure(3.9 * len(board.metrics) + 1.6, 1.7 + 0.5 * len(table))
    axes = figure.subplots(1, len(board.metrics), sharey=True, squeeze=False)[0]
    y = np.arange(len(table), dtype=float)
    for ax, metric in zip(axes, board.metrics):
        for part, color, offset, label in parts:
            mean, low, high = (
                np.array([row.get(f"{part}.{metric}.{k}", math.nan) for row in table], dtype=float)
                for k in ("mean", "low", "high")
            )
            bars = np.isfinite(low) & np.isfinite(high)
            ax.hlines(y[bars] + offset, low[bars], high[bars], color=color, linewidth=2.4, alpha=0.8)
            ax.plot(mean, y + offset, "o", color=color, markersize=5, label=label if ax is axes[0] else None)
        if board.best is not None:
            ax.axhspan(-0.5, 0.5, color="gold", alpha=0.18, linewidth=0)
            ax.axvline(table[0][f"test.{metric}.mean"], color="red", linestyle=":", linewidth=0.9)
        ax.set_title(f"{metric_label(metric)} (mean, {board.confidence * 100:g}% CI over seeds)", fontsize=10)
        ax.set_xlabel(metric_label(metric), fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    labels = [f"{row['loss']}  n={row['seeds']}" + ("  *" if row.get("significant") else "") for row in table]
    axes[0].set_yticks(y, labels, fontsize=9)
    axes[0].set_ylim(len(table) - 0.5, -0.5)  # the table's order, best on top
    if board.best is not None:
        axes[0].get_yticklabels()[0].set(color="red", fontweight="bold")
    figure.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    figure.suptitle(
        f"leaderboard on test {metric_label(board.rank_by)}: best {board.best} (shaded, dotted line); "
        f"*: significantly different from it (paired t-test, Holm p < {board.alpha:g})",
        fontsize=10,
    )
    return figure


def save_leaderboard_figure(board: Leaderboard, path: str | os.PathLike) -> Path | str:
    """:func:`draw_leaderboard` saved as a PNG at ``path``; why not, when it does not apply."""
    drawn = draw_leaderboard(board)
    return drawn if isinstance(drawn, str) else _save(drawn, Path(path))


def draw_fidelity(report: dict[str, Any]) -> Figure | str:
    """A multi-fidelity search's fidelity report (:func:`tuneddml.results.fidelity.fidelity_report`):
    one panel per pair of rungs it compares (consecutive ones, and the first against the last), and
    one of rung 0 against the check run if there is one. Each configuration run at both is a point,
    x its value at the cheaper fidelity, y at the dearer one; the configurations promoted on from the
    panel's dearer rung (from rung 0, in the check's panel) are highlighted, the search's final pick
    is a star, the cheaper rung's configurations not run at the dearer one are ticks along the
    bottom, the dotted line is y = x; Spearman's rank correlation is in each title."""
    from tuneddml.results.leaderboard import metric_label

    metric = metric_label(report["metric"])
    panels = [(p, p["names"][0], p["names"][1]) for p in report["pairs"]]
    if report.get("check") is not None:
        panels.append((report["check"], report["rungs"][0]["name"], "check"))
    panels = [panel for panel in panels if panel[0]["points"]]
    if not panels:
        return "fidelity: no configuration has a value at two fidelities"
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = _new_figure(4.2 * columns, 3.9 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (panel, cheap, dear) in zip(axes, panels):
        points = panel["points"]
        x = np.array([p["x"] for p in points], dtype=float)
        y = np.array([p["y"] for p in points], dtype=float)
        promoted = np.array([p["promoted"] for p in points], dtype=bool)
        final = np.array([p["final_best"] for p in points], dtype=bool)
        on = panel.get("promoted_to")
        rest = f"not promoted to {on}" if on else f"run at {cheap} and {dear}"
        ax.scatter(x[~promoted], y[~promoted], s=22, color="tab:blue", alpha=0.75, label=rest)
        if on:
            ax.scatter(x[promoted], y[promoted], s=34, color="tab:orange", edgecolor="black", linewidth=0.5,
                       label=f"promoted to {on}")  # fmt: skip
        if final.any():
            ax.scatter(x[final], y[final], s=160, marker="*", color="red", edgecolor="black", linewidth=0.5,
                       label="search's final pick", zorder=3)  # fmt: skip
        dropped = np.array(panel.get("dropped") or [], dtype=float)
        if dropped.size:
            ax.scatter(dropped, np.full(dropped.size, 0.02), marker="|", s=60, color=FAILED_COLOR,
                       transform=ax.get_xaxis_transform(), label=f"not run at {dear}")  # fmt: skip
        values = np.concatenate([x, y, dropped])
        low, high = float(values.min()), float(values.max())
        ax.plot([low, high], [low, high], ":", color="0.5", linewidth=0.9)
        rho = panel["spearman"]
        shown = f"{rho:.2f}" if rho is not None else "n/a"
        ax.set_title(f"{cheap} vs {dear}: Spearman {shown} (n={len(points)})", fontsize=10)
        ax.set_xlabel(f"{metric} at {cheap}", fontsize=8)
        ax.set_ylabel(f"{metric} at {dear}", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(f"fidelity: each configuration's {metric} at a cheaper and a dearer fidelity", fontsize=10)
    return figure


def save_fidelity_figure(report: dict[str, Any], path: str | os.PathLike) -> Path | str:
    """:func:`draw_fidelity` saved as a PNG at ``path`` (the driver's ``fidelity.png``); why not,
    when it does not apply."""
    drawn = draw_fidelity(report)
    return drawn if isinstance(drawn, str) else _save(drawn, Path(path))


PLOTS = {
    "balance_landscape.png": draw_balance_landscape,
    "best_so_far.png": draw_best_so_far,
    "learning_curves.png": draw_learning_curves,
    "param_importance.png": draw_param_importance,
    "parallel_coordinates.png": draw_parallel_coordinates,
}


def make_report(
    tables: Iterable[Source] | Results,
    out_dir: str | os.PathLike,
    *,
    metric: str | None = None,
    epochs: pd.DataFrame | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """Draw the report's PNGs from results tables (paths, pyarrow Tables or DataFrames) into ``out_dir``.

    ``epochs``: per-epoch records for tables given as data (a search folder's own epoch log is read
    with its table). Returns the files written; a figure that does not apply is skipped, and why is
    appended to ``notes``. A search without any result draws nothing (one note says so).
    """
    from tuneddml.results import Results, load_results

    results = tables if isinstance(tables, Results) else load_results(tables, metric=metric)
    if epochs is not None:
        results = dataclasses.replace(results, epochs=epochs)
    notes = [] if notes is None else notes
    if scores(results.frame, results.metric).notna().sum() == 0:
        statuses = results.frame["status"].value_counts() if "status" in results.frame.columns else {}
        counts = ", ".join(f"{n} {k}" for k, n in sorted(dict(statuses).items()))
        notes.append(
            f"no figures: none of the {len(results.frame)} trials has a {results.metric}"
            + (f" ({counts})" if counts else "")
        )
        return []
    out = Path(out_dir)
    written = []
    for filename, draw in PLOTS.items():
        drawn = draw(results)
        if isinstance(drawn, str):
            notes.append(drawn)
        else:
            written.append(_save(drawn, out / filename))
    return written
