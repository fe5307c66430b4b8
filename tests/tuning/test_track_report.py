"""The report shows a failed or diverged trial's own message (the results table's ``error``
column) where its value would be, instead of ``-``."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_report import trial_rows
from tests.tuning import test_track_errors
from tuneddml.report import main

local_search = test_track_errors.local_search  # the fixture: a quick-space search on a stand-in trainable


def test_failed_and_diverged_trials_show_their_message(tmp_path, capsys):
    rows = trial_rows("s", "tpe", 6, seed=3)
    failed = "ConfigError: sampler.samples_per_class: bad value 9 (expected at most 4)"
    for row in rows:
        row["error"] = {"failed": failed, "diverged": "diverged at epoch 1 (step 2): total=inf"}.get(
            row["status"]
        )
    (tmp_path / "s").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s" / "results.parquet")
    assert main(["--storage", str(tmp_path), "--top", "6", "--no-plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_trial = {line.split()[1]: line for line in lines if line[:1].isdigit() and len(line.split()) > 3}
    for row in rows:
        line = " ".join(by_trial[row["trial_id"]].split())
        if row["status"] == "failed":
            assert f"failed {failed}" in line
        elif row["status"] == "diverged":
            assert "diverged diverged at epoch 1 (step 2): total=inf" in line
        else:
            assert "ConfigError" not in line and "diverged at" not in line


@pytest.mark.slow
@pytest.mark.ray
def test_a_real_search_leaves_its_epoch_log_and_the_report_shows_the_failure(local_search, capsys):
    """Through the driver on a local Ray (the stand-in trainable of test_track_errors: one trial
    fails, one diverges, one trains 2 epochs): the epoch log holds every epoch reported, and the
    report names the failed trial's reason and draws the finished trial's learning curve."""
    import io

    from tuneddml.plots import draw_learning_curves
    from tuneddml.results import load_results
    from tuneddml.tuning.driver import run_search

    summary = run_search(local_search("log"), stream=io.StringIO())
    rows = {r["status"]: r for r in pq.read_table(summary.results_file).to_pylist()}
    log = [json.loads(line) for line in (summary.folder / "epochs.jsonl").read_text().splitlines()]
    assert [(e["trial_id"], e["epoch"]) for e in log if e["trial_id"] == rows["finished"]["trial_id"]] == [
        (rows["finished"]["trial_id"], 1),
        (rows["finished"]["trial_id"], 2),
    ]
    assert {e["trial_id"] for e in log} == {rows["finished"]["trial_id"], rows["diverged"]["trial_id"]}
    capsys.readouterr()
    assert main([str(summary.folder), "--top", "3"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if rows["failed"]["trial_id"] in x)
    assert "failed ConfigError: sampler.samples_per_class: bad value 9" in " ".join(line.split())
    curves = draw_learning_curves(load_results([summary.results_file]))
    assert [len(line.get_xdata()) for line in curves.axes[0].get_lines()] == [2]  # the finished trial
