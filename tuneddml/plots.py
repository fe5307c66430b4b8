"""The report's figures, drawn from a results frame (one row per trial: :mod:`tuneddml.results.schema`).

Three views of a search, each a function ``plot_*(frame, path, *, metric, mode) -> Path | None``
that returns ``None`` when the view does not apply (no loss with a ``lambda``, no varied parameter,
no scored trial):

- the *balance landscape* of Sors et al. (2021, arXiv 2112.11743): for every loss with the balance
  weight ``lambda`` (``total = 2 lambda * first + 2 (1 - lambda) * second``, the two sides each loss
  declares in its :class:`~tuneddml.losses.base.Balance`, named on the lambda axis), a scatter of
  lambda against the temperature (or a margin when the loss has no temperature), coloured by the
  search metric;
- *best so far* against the number of trials started, one line per search (searcher): the
  sample-efficiency comparison of coordinate descent, TPE, random and grid search;
- *parallel coordinates* of every varied parameter, one line per trial coloured by the metric;
  categorical parameters sit at evenly spaced ticks, a parameter a trial does not have at "n/a".

:func:`make_report` draws every figure of :data:`PLOTS` that applies (the search driver calls it at
the end of a search, ``python -m tuneddml.report`` on demand). Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never through pyplot,
so drawing touches no global state and needs no display.
"""

from __future__ import annotations

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
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tuneddml.results import CONFIG, config_column, scores, varied_params

if TYPE_CHECKING:
    from tuneddml.results import Results, Source

LAMBDA = config_column("loss.lambda")
# Second axis of the landscape, in order of preference (Sors et al. plot lambda against these).
SECOND_AXES = ("temperature", "margin", "neg_margin", "pos_margin", "proxy_temperature", "alpha", "scale")
MAX_PARALLEL_AXES = 14
NA_POSITION = -0.14
DPI = 110
FAILED_COLOR = "0.62"


def _is_numeric(values: pd.Series) -> bool:
    present = values.dropna()
    return len(present) > 0 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        for v in present
    )


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


def _log_scale(values: pd.Series) -> bool:
    present = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(present) > 1 and (present > 0).all() and present.max() / present.min() >= 20)


def _second_axis(rows: pd.DataFrame) -> str | None:
    """The loss parameter drawn against lambda: the first of SECOND_AXES that varies in ``rows``."""
    candidates = [config_column(f"loss.{name}") for name in SECOND_AXES]
    candidates += sorted(c for c in rows.columns if c.startswith(config_column("loss.")) and c not in candidates)
    for column in candidates:
        if column == LAMBDA or column not in rows.columns:
            continue
        values = rows[column].dropna()
        if _is_numeric(values) and values.nunique() > 1:
            return column
    return None


def plot_balance_landscape(frame: pd.DataFrame, path: Path, *, metric: str, mode: str) -> Path | None:
    """One panel per loss that has ``lambda``: lambda x temperature (or margin), coloured by the metric."""
    from tuneddml.losses import balance_label  # the loss registry (and torch) only when drawn
    loss_column = config_column("loss")
    if LAMBDA not in frame.columns or loss_column not in frame.columns:
        return None
    with_lambda = frame[pd.to_numeric(frame[LAMBDA], errors="coerce").notna()]
    losses = sorted(str(loss) for loss in with_lambda[loss_column].dropna().unique())
    if not losses:
        return None
    score = scores(frame, metric)
    norm, cmap = _norm(score), _colors(mode)
    columns = min(3, len(losses))
    rows = math.ceil(len(losses) / columns)
    figure = _new_figure(4.4 * columns + 1.0, 3.7 * rows + 0.4)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, loss in zip(axes.flat, losses):
        sub = with_lambda[with_lambda[loss_column].astype(str) == loss]
        x = pd.to_numeric(sub[LAMBDA], errors="coerce").astype(float)
        value = score.loc[sub.index]
        ok = value.notna()
        y_column = _second_axis(sub)
        if y_column is not None:
            y = pd.to_numeric(sub[y_column], errors="coerce").astype(float)
            ax.set_ylabel(y_column.removeprefix(config_column("loss.")))
            if _log_scale(y):
                ax.set_yscale("log")
        else:
            # No second parameter varies: the metric itself is the vertical axis.
            floor = float(score.min()) if score.notna().any() else 0.0
            y = value.fillna(floor)
            ax.set_ylabel(metric)
        ax.scatter(x[ok], y[ok], c=value[ok], cmap=cmap, norm=norm, s=42, edgecolors="black", linewidths=0.3)
        if (~ok).any():
            ax.scatter(x[~ok], y[~ok], marker="x", color=FAILED_COLOR, s=36, label="no result")
            ax.legend(loc="best", fontsize=7)
        best = _best_index(value, mode)
        if best is not None:
            ax.scatter(
                [x[best]], [y[best]], marker="*", s=240, facecolors="none", edgecolors="red", linewidths=1.4
            )
            ax.annotate(
                f"{value[best]:.3f}",
                (x[best], y[best]),
                xytext=(6, 6),
                textcoords="offset points",
                fontsize=8,
                color="red",
            )
        ax.set_xlabel(balance_label(loss))
        if x.between(0, 1).all():
            ax.set_xlim(-0.04, 1.04)
        ax.set_title(f"{loss}  ({len(sub)} trials)", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(losses) :]:
        ax.set_visible(False)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), label=metric, shrink=0.9)
    figure.suptitle(f"balance landscape: {metric} over lambda (red star: best of the loss)", fontsize=11)
    return _save(figure, path)


def _running_best(values: np.ndarray, mode: str) -> np.ndarray:
    # fmax/fmin skip NaN, so a failed trial never lowers (or erases) the best so far.
    return np.fmax.accumulate(values) if mode == "max" else np.fmin.accumulate(values)


def plot_best_so_far(frame: pd.DataFrame, path: Path, *, metric: str, mode: str) -> Path | None:
    """Best metric so far against the number of trials started, one line per search."""
    score = scores(frame, metric)
    if score.notna().sum() == 0:
        return None
    keys = [c for c in ("search", "searcher") if c in frame.columns]
    groups = list(frame.groupby(keys, dropna=False, sort=True)) if keys else [(("all",), frame)]
    searchers = [g.get("searcher", pd.Series(["?"])).iloc[0] for _, g in groups]
    ambiguous = len(set(map(str, searchers))) < len(groups)
    figure = _new_figure(7.2, 4.4)
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
        color = cycle(i % 10)
        ax.step(trials, best, where="post", color=color, linewidth=2, label=f"{label}: {final:.4g}")
        ax.plot(trials, values, linestyle="none", marker="o", markersize=3.5, color=color, alpha=0.35)
    ax.set_xlabel("trials started")
    ax.set_ylabel(f"best {metric} so far ({mode})")
    ax.set_title("best so far per searcher (dots: single trials)", fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if mode == "max" else "upper right", fontsize=8)
    return _save(figure, path)


def _axis_positions(values: pd.Series) -> tuple[np.ndarray, list[float], list[str]]:
    """Positions in [0, 1] (NA_POSITION for a missing value), tick positions and their labels."""
    missing = values.isna().to_numpy()
    positions = np.full(len(values), NA_POSITION)
    ticks: list[float] = []
    labels: list[str] = []
    if _is_numeric(values):
        numbers = pd.to_numeric(values, errors="coerce").astype(float)
        log = _log_scale(numbers)
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


def plot_parallel_coordinates(frame: pd.DataFrame, path: Path, *, metric: str, mode: str) -> Path | None:
    """One vertical axis per varied parameter and one for the metric; one line per trial."""
    params = varied_params(frame)[:MAX_PARALLEL_AXES]
    if not params:
        return None
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
    return _save(figure, path)


PLOTS = {
    "balance_landscape.png": plot_balance_landscape,
    "best_so_far.png": plot_best_so_far,
    "parallel_coordinates.png": plot_parallel_coordinates,
}


def make_report(
    tables: Iterable[Source] | Results, out_dir: str | os.PathLike, *, metric: str | None = None
) -> list[Path]:
    """Draw the report's PNGs from results tables (paths, pyarrow Tables or DataFrames) into ``out_dir``.

    Returns the files written; a figure that does not apply to these trials is skipped.
    """
    from tuneddml.results import Results, load_results

    results = tables if isinstance(tables, Results) else load_results(tables, metric=metric)
    out = Path(out_dir)
    written = []
    for filename, plot in PLOTS.items():
        path = plot(results.frame, out / filename, metric=results.metric, mode=results.mode)
        if path is not None:
            written.append(path)
    return written
