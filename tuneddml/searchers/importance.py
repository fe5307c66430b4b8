"""Which searched parameters decide a search's result: Optuna's PED-ANOVA importance over its
finished trials, asked of an in-memory study built from the results table.

The trials' parameters and distributions come from the search's space file (the domain names of
:mod:`.space`, ``key@i`` for a variant, so a conditional parameter counts in its own regime:
Conditional PED-ANOVA), or, where the space no longer loads, are inferred from the table's values.
The report (:mod:`tuneddml.plots`) draws the answer; Optuna stays inside this package.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from tuneddml.results import (
    CONFIG,
    is_numeric,
    log_scaled,
    most_common,
    present_config,
    scores,
    varied_params,
)

if TYPE_CHECKING:
    import pandas as pd

    from tuneddml.results import Results

MIN_IMPORTANCE_TRIALS = 6  # trials with a result before PED-ANOVA is asked
IMPORTANCE_TOP = 5  # trials PED-ANOVA's top quantile should hold (its docs: at least 5)


def _distributions(results: Results, rows: pd.DataFrame) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(params, distributions)`` of each row, by the space's domain names (``key@i`` for a
    variant): from the space file when it loads, else from the values in the table."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    try:
        from tuneddml.searchers.space import load_space

        space = load_space(most_common(rows, "space") or "", validate=lambda flat: None)
    except Exception:  # a space file that moved or changed: infer from the table
        space = None
    out = []
    if space is not None:
        domains = {d.name: d for d in space.domains}
        made = {name: d.distribution() for name, d in domains.items()}
        for _, row in rows.iterrows():
            config = {k: v for k, v in present_config(row).items() if k in space.parameters}
            named = space.names_of(config)
            params = {n: _as_domain_value(domains[n], v) for n, v in named.items()}
            out.append((params, {n: made[n] for n in params}))
        return out
    inferred = {}
    for column in varied_params(rows):
        values = rows[column].dropna()
        if is_numeric(values):
            numbers = values.astype(float)
            inferred[column] = FloatDistribution(
                float(numbers.min()), float(numbers.max()), log=log_scaled(numbers)
            )
        else:
            inferred[column] = CategoricalDistribution(sorted({str(v) for v in values}))
    for _, row in rows.iterrows():
        present = present_config(row)
        params = {
            key: float(present[key]) if isinstance(d, FloatDistribution) else str(present[key])
            for key, d in ((c.removeprefix(CONFIG), d) for c, d in inferred.items())
            if key in present
        }
        out.append(
            (
                params,
                {c.removeprefix(CONFIG): inferred[c] for c in inferred if c.removeprefix(CONFIG) in params},
            )
        )
    return out


def _as_domain_value(domain: Any, value: Any) -> Any:
    """A table value as the domain's own type (Parquet gives numpy numbers, a choice may be a string)."""
    if domain.kind == "choice":
        return next((c for c in domain.choices if c == value or str(c) == str(value)), value)
    return int(value) if domain.kind == "int" else float(value)


def param_importance(results: Results) -> tuple[dict[str, float], str] | str:
    """Optuna's PED-ANOVA importance of each searched parameter for reaching the search's top
    trials (Conditional PED-ANOVA: a parameter that only some trials have counts in their regime),
    over the trials with a result, in an in-memory study built from the results table; with the
    trials it took. A reason (str) where it cannot say anything."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    frame, metric, mode = results.frame, results.metric, results.mode
    space = most_common(frame, "space")
    rows = (
        frame[frame["space"].astype(str) == space]
        if space is not None and "space" in frame.columns
        else frame
    )
    score = scores(rows, metric)
    rows = rows[score.notna()]
    if len(rows) < MIN_IMPORTANCE_TRIALS:
        return f"parameter importance: needs {MIN_IMPORTANCE_TRIALS} trials with a result, has {len(rows)}"
    trials = []
    for (params, distributions), value in zip(_distributions(results, rows), score[rows.index]):
        try:
            trials.append(
                optuna.trial.create_trial(params=params, distributions=distributions, value=float(value))
            )
        except ValueError:  # a value outside the space (the file changed since): left out
            continue
    values: dict[str, set[str]] = {}
    for t in trials:
        for n, v in t.params.items():
            values.setdefault(n, set()).add(repr(v))
    varied = sorted(n for n, seen in values.items() if len(seen) > 1)
    if not varied:
        return "parameter importance: no parameter varied"
    quantile = min(0.5, max(0.1, IMPORTANCE_TOP / len(trials)))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
        study.add_trials(trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importance = get_param_importances(
                study,
                evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile),
                params=varied,
                target=(lambda t: -t.value) if mode == "max" else (lambda t: t.value),  # lower is better
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not any(v > 0 for v in importance.values()):
        return "parameter importance: PED-ANOVA found no parameter that separates the best trials"
    top = max(1, math.ceil(quantile * len(trials)))
    return importance, f"top {top} of {len(trials)} trials with a result"
