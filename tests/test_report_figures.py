"""The report's figures regenerated from fixed results tables and epoch logs built here: one metric
axis per landscape figure, learning curves from the epoch log (its last record per epoch), the
parameter importance, and nothing drawn for a search without a result."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_report import METRIC, trial_rows, write_search
from tuneddml.plots import (
    draw_balance_landscape,
    draw_learning_curves,
    make_report,
    trial_labels,
)
from tuneddml.report import load_results, main
from tuneddml.searchers.importance import param_importance


def _panels(figure) -> list:
    """The landscape's loss panels (colour bars left out)."""
    return [ax for ax in figure.axes if ax.get_visible() and ax.get_xlabel().startswith("lambda")]


def test_landscape_panels_share_one_metric_axis(tmp_path):
    rows = trial_rows("s", "tpe", 12, seed=1)
    results = load_results([pa.Table.from_pylist(rows)])
    figure = draw_balance_landscape(results)
    panels = _panels(figure)
    assert len(panels) == 2  # contrastive and supcon; triplet has no lambda
    assert len({ax.get_ylim() for ax in panels}) == 1
    # the vertical axis is the metric itself: the points sit at the trials' values
    for ax in panels:
        loss = ax.get_title().split()[0]
        expected = sorted(
            r[f"best.{METRIC}"] for r in rows if r["config.loss"] == loss and r[f"best.{METRIC}"] is not None
        )
        drawn = sorted(ax.collections[0].get_offsets()[:, 1].tolist())
        assert drawn == pytest.approx(expected)
        # the loss's own balance terms name the lambda axis
        assert {"contrastive": "pos", "supcon": "ent"}[loss] in ax.get_xlabel()
    low, high = panels[0].get_ylim()
    values = [
        r[f"best.{METRIC}"] for r in rows if r[f"best.{METRIC}"] is not None and r["config.loss.lambda"]
    ]
    assert low <= min(values) and high >= max(values)


def test_an_all_failed_search_draws_nothing(tmp_path, capsys):
    rows = trial_rows("s", "tpe", 5, seed=1)
    for row in rows:
        row.update({"status": "failed", f"best.{METRIC}": None, f"metric.{METRIC}": None, "error": "boom"})
    notes: list[str] = []
    assert make_report([pa.Table.from_pylist(rows)], tmp_path / "report", notes=notes) == []
    assert not (tmp_path / "report").exists()
    assert notes == [f"no figures: none of the 5 trials has a {METRIC} (5 failed)"]
    (tmp_path / "runs" / "s").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "runs" / "s" / "results.parquet")
    assert main([str(tmp_path / "runs" / "s")]) == 0
    out = capsys.readouterr().out
    assert "no figures" in out and ".png" not in out
    assert not (tmp_path / "runs" / "s" / "report").exists() or not any(
        (tmp_path / "runs" / "s" / "report").iterdir()
    )


def _epoch_log(rows: list[dict], folder: Path) -> dict[tuple[str, int], float]:
    """An epoch log as a resumed search leaves it: epoch 2 of every trial written twice, the second
    one counts. Returns the value of the metric that should be drawn, by (trial, epoch)."""
    lines, expected = [], {}
    for row in rows:
        if row["status"] == "failed":
            continue
        final = row[f"best.{METRIC}"]
        for epoch in (1, 2, 2, 3):
            value = (
                final
                - 0.05 * (3 - epoch)
                - (0.2 if epoch == 2 and (row["trial_id"], 2) not in expected else 0)
            )
            expected[(row["trial_id"], epoch)] = value
            term = "loss/ent" if row["config.loss"] == "supcon" else "loss/neg"
            lines.append(
                {
                    "trial_id": row["trial_id"],
                    "epoch": epoch,
                    METRIC: value,
                    "loss/total": 3.0 - epoch,
                    "loss/pos": 1.0 / epoch,
                    term: 2.0 / epoch,
                }
            )
    lines.insert(3, {"trial_id": "cut"})  # a line without an epoch (a crash mid-write) is skipped
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"trial_id": "tpe_00'
    (folder / "epochs.jsonl").write_text(text)
    return expected


def test_learning_curves_from_the_epoch_log(tmp_path):
    folder = write_search(tmp_path, "s", "tpe", 9, seed=2)
    rows = trial_rows("s", "tpe", 9, seed=2)
    expected = _epoch_log(rows, folder)
    results = load_results([folder / "results.parquet"])
    assert len(results.epochs) == len(expected)  # one record per (trial, epoch)
    figure = draw_learning_curves(results, top=3)
    best = sorted((r for r in rows if r[f"best.{METRIC}"] is not None), key=lambda r: -r[f"best.{METRIC}"])[
        :3
    ]
    losses = list(dict.fromkeys(r["config.loss"] for r in best))
    second = {"supcon": "ent", "contrastive": "neg", "triplet": "neg"}
    panels = {ax.get_title(): ax for ax in figure.axes}
    # the terms get a row per loss (their own scales), total first, then the balance's two sides
    assert list(panels) == [f"{METRIC} (search metric)"] + [
        f"{loss}: loss term {term}" for loss in losses for term in ("total", "pos", second[loss])
    ]
    for loss in losses:
        assert len(panels[f"{loss}: loss term pos"].get_lines()) == sum(
            r["config.loss"] == loss for r in best
        )
    metric_ax = panels[f"{METRIC} (search metric)"]
    labels = trial_labels(results.frame)
    by_id = {results.frame.at[i, "trial_id"]: label for i, label in labels.items()}
    assert len(metric_ax.get_lines()) == 3
    for line, row in zip(metric_ax.get_lines(), best):
        assert line.get_label().startswith(by_id[row["trial_id"]])
        assert by_id[row["trial_id"]].startswith(f"t{row['order'] + 1:02d} {row['config.loss']} lambda=")
        assert list(line.get_ydata()) == pytest.approx([expected[(row["trial_id"], e)] for e in (1, 2, 3)])


def test_a_search_without_epoch_log_has_no_learning_curves(tmp_path):
    folder = write_search(tmp_path, "s", "tpe", 9, seed=2)
    notes: list[str] = []
    paths = make_report([folder / "results.parquet"], tmp_path / "report", notes=notes)
    assert "learning_curves.png" not in {p.name for p in paths} and "balance_landscape.png" in {
        p.name for p in paths
    }
    assert any(n.startswith("learning curves: no per-epoch log") for n in notes)


def _lambda_rows(n: int, seed: int) -> list[dict]:
    """supcon trials whose metric depends on lambda alone (temperature and batch size are noise)."""
    rng = random.Random(seed)
    rows = trial_rows("s", "tpe", n, seed=seed)
    for row in rows:
        lam = rng.uniform(0.05, 0.95)
        value = 0.6 - 2.0 * (lam - 0.7) ** 2
        row.update(
            {
                "status": "finished",
                "config.loss": "supcon",
                "config.loss.lambda": lam,
                "config.loss.temperature": 10 ** rng.uniform(-2, 0),
                "config.loss.neg_margin": None,
                "config.batch_size": rng.choice([32, 64, 128]),
                f"best.{METRIC}": value,
            }
        )
    return rows


def test_parameter_importance_finds_the_parameter_that_matters():
    results = load_results([pa.Table.from_pylist(_lambda_rows(30, seed=5))])
    importance, basis = param_importance(results)
    assert max(importance, key=importance.get) == "loss.lambda"
    assert importance["loss.lambda"] > 0.5 and "of 30 trials" in basis
    assert set(importance) == {"loss.lambda", "loss.temperature", "batch_size"}


def test_parameter_importance_handles_conditional_parameters():
    """contrastive_balance: temperature only for supcon, the margins only for contrastive."""
    rows = trial_rows("s", "tpe", 24, seed=7)
    for row in rows:  # the triplet rows outside the space become contrastive ones
        if row["config.loss"] == "triplet":
            row.update({"config.loss": "contrastive", "config.loss.lambda": 0.3})
        row["config.batch_size"] = 64
    importance, _ = param_importance(load_results([pa.Table.from_pylist(rows)]))
    assert {"loss", "loss.lambda", "loss.temperature", "loss.neg_margin"} <= set(importance)
    assert "batch_size" not in importance  # did not vary


@pytest.mark.parametrize(("case", "reason"), [("few", "needs 6 trials"), ("fixed", "no parameter varied")])
def test_parameter_importance_says_why_it_is_skipped(case, reason):
    rows = _lambda_rows(5 if case == "few" else 8, seed=1)
    if case == "fixed":
        for row in rows:
            row.update({"config.loss.lambda": 0.5, "config.loss.temperature": 0.1, "config.batch_size": 64})
    found = param_importance(load_results([pa.Table.from_pylist(rows)]))
    assert isinstance(found, str) and reason in found


def test_params_column_shows_the_loss_settings_when_only_the_loss_varied(tmp_path, capsys):
    rows = trial_rows("s", "tpe", 6, seed=1)
    for row in rows:
        row.update(
            {
                "config.batch_size": 64,
                "config.loss.lambda": 0.5 if row["config.loss"] != "triplet" else None,
                "config.loss.temperature": 0.1 if row["config.loss"] == "supcon" else None,
                "config.loss.neg_margin": 0.3 if row["config.loss"] != "supcon" else None,
            }
        )
    (tmp_path / "s").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s" / "results.parquet")
    assert main(["--storage", str(tmp_path), "--no-plots", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    params = {t["loss"]: t["params"] for t in summary["best_per_loss"]}
    assert params == {
        "supcon": {"loss.lambda": 0.5, "loss.temperature": 0.1},
        "contrastive": {"loss.lambda": 0.5, "loss.neg_margin": 0.3},
        "triplet": {"loss.neg_margin": 0.3},
    }


def test_the_epoch_log_callback_appends_and_a_resume_repeats_last_wins(tmp_path):
    from tuneddml.results.table import Location, read_epochs
    from tuneddml.tuning.epoch_log import EpochLog

    class Trial:
        trial_id = "abc_00001"

    record = {
        "epoch": 1,
        METRIC: 0.2,
        "loss/total": 2.0,
        "loss/pos": 1.0,
        "time/train_s": 3.0,
        "training_iteration": 1,
        "config": {"x": 1},
        "error": "text is not a number",
    }
    log = EpochLog(tmp_path)
    log.on_trial_result(1, [], Trial(), record)
    log.on_trial_result(2, [], Trial(), {**record, "epoch": 2, METRIC: 0.3})
    log.on_trial_result(3, [], Trial(), {"done": True})  # not an epoch record: not logged
    EpochLog(tmp_path).on_trial_result(1, [], Trial(), {**record, "epoch": 2, METRIC: 0.35})  # resumed
    lines = (tmp_path / "epochs.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0]) == {
        "trial_id": "abc_00001",
        "epoch": 1,
        METRIC: 0.2,
        "loss/total": 2.0,
        "loss/pos": 1.0,
        "time/train_s": 3.0,
    }
    epochs = read_epochs(Location.parse(tmp_path))
    assert epochs[["epoch", METRIC]].values.tolist() == [[1, 0.2], [2, 0.35]]
    assert isinstance(epochs, pd.DataFrame)
