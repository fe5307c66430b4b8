"""The multi-user tracking backend: an MLflow server on PostgreSQL (Debian's binaries, started and
stopped by this test), 4 trials running and logging at once, and not one metric lost or doubled.

(4 trials of 2 epochs, all started at once: several writers on the one server at the same time
and a history of more than one step per metric, in about half the time of the 8 of 3 epochs it
used to run, whose 8 worker processes each paid torch's import on the same 2 cores.)"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.tuning.procs import (
    Postgres,
    child_env,
    postgres_bin,
    search_command,
    start_mlflow_server,
    stop_tree,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.skipif(
        postgres_bin() is None,
        reason="PostgreSQL binaries missing (/usr/lib/postgresql/*/bin): `make test` installs Debian's postgresql",
    ),
]

TRIALS = 4
EPOCHS = 2


def _trial_records(folder: Path) -> dict[str, list[dict]]:
    """Every record each trial reported to Ray (its result.json, one line per epoch)."""
    records: dict[str, list[dict]] = {}
    for path in folder.rglob("result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records.setdefault(record["trial_id"], []).append(record)
    return records


def test_concurrent_trials_log_every_epoch_to_mlflow_on_postgres(tmp_path):
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg[binary]) is not installed")
    from mlflow.tracking import MlflowClient

    from tuneddml.results import metric_names

    env = child_env()
    postgres = Postgres()
    server = None
    try:
        postgres.start()
        server, url = start_mlflow_server(postgres.uri, tmp_path, env)
        storage = tmp_path / "runs"
        proc = subprocess.run(
            search_command(
                "--space=quick", "--searcher", "random", "--num-samples", str(TRIALS),
                "--max-concurrent", str(TRIALS), "--cpus-per-trial", "0.25", "--tracking-uri", url,
                "--storage", str(storage), "--name", "pg", "--json", f"epochs={EPOCHS}", "steps_per_epoch=1",
            ),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["tracking_uri"] == url

        table = {r["trial_id"]: r for r in pq.read_table(summary["results"]).to_pylist()}
        assert len(table) == TRIALS and all(r["status"] == "finished" for r in table.values())
        records = _trial_records(storage / "pg")
        assert set(records) == set(table)

        client = MlflowClient(url)
        runs = client.search_runs(
            [summary["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'"
        )
        by_trial = {run.data.tags["tuneddml.trial_id"]: run for run in runs}
        assert set(by_trial) == set(table)  # one child run per trial, none twice
        keys = sorted(metric_names() | {"loss/total"})
        for trial_id, row in table.items():
            run = by_trial[trial_id]
            assert run.info.run_id == row["mlflow_run_id"] and run.info.status == "FINISHED"
            reported = sorted(records[trial_id], key=lambda r: r["epoch"])
            assert [r["epoch"] for r in reported] == list(range(1, EPOCHS + 1))
            for key in keys:
                history = client.get_metric_history(run.info.run_id, key)
                logged = sorted((m.step, m.value) for m in history)
                expected = [(r["epoch"], float(r[key])) for r in reported if math.isfinite(r[key])]
                # every epoch, exactly once, with the value the trial reported
                assert [step for step, _ in logged] == [step for step, _ in expected], (trial_id, key)
                assert [v for _, v in logged] == pytest.approx([v for _, v in expected]), (trial_id, key)
            for metric in metric_names():
                assert row[f"metric.{metric}"] == pytest.approx(reported[-1][metric]), (trial_id, metric)
    finally:
        if server is not None:
            stop_tree(server)
        postgres.stop()
