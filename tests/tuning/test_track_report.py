"""The report shows a failed or diverged trial's own message (the results table's ``error``
column) where its value would be, instead of ``-``."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from tests.test_report import trial_rows
from tuneddml.report import main


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

