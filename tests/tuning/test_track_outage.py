"""The tracking server is not a single point of failure: an MLflow server (its PID held, sqlite
behind it) stopped for good in the middle of a search; the search still ends well, keeps what it
could not log in its outbox and names the command that logs it; once the server is back, that
command logs every epoch of every trial exactly once."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.tuning.procs import child_env, free_port, search_command, start, stop_tree, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _server(tmp_path: Path, port: int, env: dict[str, str], log: str) -> subprocess.Popen:
    mlflow = str(Path(sys.executable).parent / "mlflow")
    args = [mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    args += ["--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    proc = start([*args, "--workers", "1"], tmp_path, env, tmp_path / log)
    try:
        wait_for(lambda: _healthy(port), 120, "the MLflow server")
    except TimeoutError:
        stop_tree(proc)
        raise
    return proc


def test_a_search_outlives_its_tracking_server_and_the_sync_command_logs_the_rest(tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    env = child_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = _server(tmp_path, port, env, "server1.log")
    uri = f"http://127.0.0.1:{port}"
    storage = tmp_path / "runs"
    args = ["--space=quick", "--num-samples", "3", "--max-concurrent", "1", "--tracking-uri", uri]
    args += ["--storage", str(storage), "--name", "down", "epochs=3", "steps_per_epoch=3", "--json"]
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        proc = subprocess.Popen(
            search_command(*args), cwd=tmp_path, env=env | {"TUNEDDML_MLFLOW_FLUSH_S": "5"},
            stdout=out, stderr=err, start_new_session=True,
        )
    try:
        wait_for(lambda: "trials 1/3 done" in (tmp_path / "err.log").read_text(), 300, "a first trial")
        stop_tree(server)  # down for good, mid-search
        assert proc.wait(timeout=400) == 0, (tmp_path / "err.log").read_text()[-3000:]
    finally:
        stop_tree(proc)
        stop_tree(server)
    stdout = (tmp_path / "out.log").read_text().strip().splitlines()
    stderr = (tmp_path / "err.log").read_text()
    assert len(stdout) == 1
    summary = json.loads(stdout[0])
    assert summary["trials"] == {"finished": 3} and summary["mlflow_unsent"] > 0
    assert len(pq.read_table(summary["results"])) == 3  # the table is written all the same
    assert (storage / "down" / "mlflow_outbox.jsonl").is_file()
    assert "Traceback" not in stderr, stderr[-3000:]
    sync_lines = [line for line in stderr.splitlines() if "python -m tuneddml.tracking.sync" in line]
    assert len(sync_lines) == 1, stderr[-3000:]
    command = shlex.split(sync_lines[0].split(": ", 1)[1])
    assert command[:3] == ["python", "-m", "tuneddml.tracking.sync"]

    server = _server(tmp_path, port, env, "server2.log")
    try:
        for _attempt in (1, 2):  # the second finds nothing left and logs nothing twice
            done = subprocess.run(
                [sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stderr[-3000:]
        assert "0 operations logged" in done.stdout or "nothing left" in done.stdout
        client = MlflowClient(uri)
        parent = client.get_run(summary["parent_run_id"])
        assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == 3
        runs = client.search_runs(
            [summary["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'"
        )
        assert len(runs) == 3
        for run in runs:
            assert run.info.status == "FINISHED" and run.data.tags["tuneddml.status"] == "finished"
            for key in ("map_at_r", "loss/total", "system/rss_mb"):
                steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
                assert steps == [1, 2, 3], (key, steps)
            assert len(run.inputs.dataset_inputs) == 1 and run.data.tags["tuneddml.epochs"] == "3"
        assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "trial/best_map_at_r")) == [1, 2, 3]
        assert parent.data.tags["tuneddml.best_run_id"] in {r.info.run_id for r in runs}
        table = pq.read_table(summary["results"]).to_pylist()  # every row names its run, now
        assert {r["trial_id"]: r["mlflow_run_id"] for r in table} == {
            r.data.tags["tuneddml.trial_id"]: r.info.run_id for r in runs
        }
    finally:
        stop_tree(server)


def test_the_sync_command_refuses_an_unknown_search(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tuneddml.tracking.sync", "--name", "nope", "--storage", str(tmp_path)],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--name" in lines[0] and len(lines[0]) < 200
