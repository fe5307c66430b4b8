"""A small benchmark end to end on a two-node loopback Ray cluster (2 losses, 2 trials, 2 folds, 2
seeds on glyphs-tiny), its driver killed after the first loss and resumed: the leaderboard files,
the MLflow tree benchmark -> loss -> search -> trials, trials on both nodes, no work done twice."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.tuning.procs import (
    kill_tree_hard,
    start,
    stop_tree,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY = ["dataset=glyphs-tiny", "epochs=1", "steps_per_epoch=2", "batch_size=32", "eval_nmi=false"]


def benchmark_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuneddml.benchmark", *args]


def _status(record, loss):  # type: ignore[no-untyped-def]
    try:
        return json.loads(record.read_text())["losses"].get(loss, {}).get("status")
    except (OSError, ValueError, KeyError):
        return None


def test_a_killed_benchmark_resumes_on_a_two_node_cluster_and_leaves_its_leaderboard(auth_cluster, tmp_path):
    """On the session's 2-node cluster (tests/tuning/conftest.py: auth_cluster)."""
    address, env = auth_cluster
    storage = tmp_path / "runs"
    args = [
        "--losses", "contrastive,supcon", "--trials", "2", "--folds", "2", "--seeds", "2",
        "--address", address, "--storage", str(storage), "--name", "b",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
    ]
    log = tmp_path / "first.log"
    driver = start(benchmark_command(*args, *TINY), tmp_path, env, log)
    record = storage / "b" / "benchmark.json"
    orphans = []
    try:
        wait_for(lambda: _status(record, "contrastive") == "done" or driver.poll() is not None, 400, "the first loss")
        assert driver.poll() is None, log.read_text()[-3000:]
        orphans = kill_tree_hard(driver)
    finally:
        for orphan in orphans:
            stop_tree(orphan)
        if driver.poll() is None:
            stop_tree(driver)
    state = json.loads(record.read_text())
    assert state["losses"]["contrastive"]["status"] == "done" and "leaderboard" not in state
    first = storage / "b" / "searches" / "contrastive"
    table_written = (first / "results.parquet").stat().st_mtime_ns

    proc = subprocess.run(
        benchmark_command("--resume", "--name", "b", "--storage", str(storage), "--address", address, "--json"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "[1/2] contrastive: done before, not run again" in proc.stderr
    assert (first / "results.parquet").stat().st_mtime_ns == table_written  # not searched again
    assert summary["best_loss"] in ("contrastive", "supcon") and summary["failed"] == []

    folder = storage / "b"
    for name in ("leaderboard.md", "leaderboard.parquet", "seeds.parquet", "leaderboard.png"):
        assert (folder / name).is_file(), name
    seeds = pq.read_table(folder / "seeds.parquet").to_pylist()
    assert sorted((r["loss"], r["seed"]) for r in seeds) == [("contrastive", 1), ("contrastive", 2), ("supcon", 1), ("supcon", 2)]
    for row in seeds:
        for key in ("test.map_at_r", "concat.map_at_r", "val.map_at_r", "test.recall_at_1"):
            assert 0 < row[key] <= 1 and math.isfinite(row[key]), (key, row)
    board = pq.read_table(folder / "leaderboard.parquet").to_pylist()
    assert [r["loss"] for r in board] == sorted([r["loss"] for r in board], key=lambda n: -next(
        x["test.map_at_r.mean"] for x in board if x["loss"] == n))
    markdown = (folder / "leaderboard.md").read_text()
    assert "contrastive" in markdown and "supcon" in markdown and "95%" in markdown

    # trials ran on both nodes, and no search trained a trial twice
    nodes = set()
    for search, trials in (("contrastive", 2), ("supcon", 2), ("final", 4)):
        table = pq.read_table(folder / "searches" / search / "results.parquet").to_pylist()
        assert len(table) == trials and all(r["status"] == "finished" for r in table), search
        nodes |= {r["node_id"] for r in table}
    assert len(nodes) == 2

    # MLflow: benchmark -> one run per loss -> that loss's search -> its trials; nothing twice
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "b"]
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    by_id = {r.info.run_id: r for r in runs}
    parent = by_id[summary["parent_run_id"]]
    assert parent.info.status == "FINISHED" and "tuneddml.benchmark" in parent.data.tags
    loss_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and "tuneddml.loss" in r.data.tags]
    assert sorted(r.data.tags["tuneddml.loss"] for r in loss_runs) == ["contrastive", "supcon"]
    for run in loss_runs:
        assert run.info.status == "FINISHED" and 0 < run.data.metrics["test.map_at_r.mean"] <= 1
        search = by_id[run.data.tags["tuneddml.search_run_id"]]
        assert search.data.tags["mlflow.parentRunId"] == run.info.run_id
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search.info.run_id]
        assert len(trials) == 2  # the resumed search made no second run of a trial
    final = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.info.run_name == "final"]
    assert len(final) == 1
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == final[0].info.run_id]) == 4
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.md", "leaderboard.parquet", "seeds.parquet", "leaderboard.png"} <= artifacts


def test_search_reevaluates_its_best_configurations_with_fresh_seeds(auth_cluster, tmp_path):
    address, env = auth_cluster
    proc = subprocess.run(
        [sys.executable, "-m", "tuneddml.search", "--space=quick", "--num-samples", "2", "--reevaluate", "1",
         "--reevaluate-seeds", "2", "--address", address, "--storage", str(tmp_path / "runs"), "--name", "s",
         "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--json", "epochs=1", "steps_per_epoch=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    first = pq.read_table(tmp_path / "runs" / "s" / "results.parquet").to_pylist()
    best = max(first, key=lambda r: r["best.map_at_r"])
    again = pq.read_table(tmp_path / "runs" / "s-reevaluated" / "results.parquet").to_pylist()
    # the best trial's searched settings, once per fresh seed (not the search's seed 0)
    assert sorted(r["config.seed"] for r in again) == [1, 2]
    assert all(r["config.loss.lambda"] == best["config.loss.lambda"] for r in again)
    values = [r["metric.map_at_r"] for r in again]
    (row,) = summary["reevaluation"]["table"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(sum(values) / 2)
    assert row["first"] == pytest.approx(best["best.map_at_r"])
    assert summary["reevaluation"]["best_config"] == {"loss": best["config.loss"], "loss.lambda": best["config.loss.lambda"]}
    assert (tmp_path / "runs" / "s" / "reevaluation.md").is_file()
    # in MLflow the re-evaluation nests under the search's parent run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    nested = client.search_runs(
        [summary["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'"
    )
    assert "s-reevaluated" in {r.info.run_name for r in nested}
