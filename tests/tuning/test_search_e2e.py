# Long file: every end-to-end check of a real search (runs, weights, table, resume after a kill, a 2-node cluster with token auth, the MLflow UI) shares the searches and clusters its fixtures start once.
"""End to end through real Ray, a real sqlite MLflow store and glyphs-tiny."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.tuning.procs import (
    ROOT,
    child_env,
    free_port,
    kill_tree_hard,
    ray_token_file,
    search_command,
    start,
    stop_tree,
    stop_trees,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY = ["epochs=2", "steps_per_epoch=3"]


def run_search(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 420) -> dict:
    proc = subprocess.run(
        search_command(*args, "--json"),
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def children(uri: str, experiment_id: str, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")


@pytest.fixture
def finished_search(quick_search):
    """One small search (4 trials), shared by the tests that only read what it left: the
    session's (``conftest.py``), which ``test_safe_search.py`` reads too."""
    cwd, summary, _sockets = quick_search
    return cwd, summary


def test_search_leaves_one_parent_and_one_child_run_per_trial(finished_search):
    from mlflow.tracking import MlflowClient

    cwd, summary = finished_search
    assert summary["trials"] == {"finished": 4}
    uri = summary["tracking_uri"]
    assert uri == f"sqlite:///{cwd / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(summary["parent_run_id"])
    assert (
        parent.data.tags["tuneddml.space"] == "quick"
        and parent.data.tags["tuneddml.searcher"] == "coordinate_descent"
    )
    assert parent.data.metrics["best_map_at_r"] == pytest.approx(summary["best_metrics"]["best_map_at_r"])
    runs = children(uri, summary["experiment_id"], summary["parent_run_id"])
    assert len(runs) == 4
    assert len({r.data.tags["tuneddml.trial_id"] for r in runs}) == 4
    for run in runs:
        assert run.data.tags["tuneddml.status"] == "finished"
        assert run.info.status == "FINISHED"
        # every setting of the trial, defaults included
        for key in ("loss", "loss.lambda", "batch_size", "lr", "sampler.samples_per_class", "seed"):
            assert key in run.data.params
        for key in ("map_at_r", "loss/total", "system/cpu_percent", "system/rss_mb"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2], key
        assert "recall_at_1" in run.data.metrics and 0 < run.data.metrics["system/rss_mb"] < 1e5
        # bookkeeping values are tags, and nothing is logged twice under a final/ name
        assert not {"epoch", "diverged"} & set(run.data.metrics)
        assert not [k for k in run.data.metrics if k.startswith("final/")]
        assert run.data.tags["tuneddml.epochs"] == "2"
        assert Path(run.data.tags["tuneddml.checkpoint"]).is_dir()  # where its checkpoint lies
        (data,) = run.inputs.dataset_inputs  # the data split, the same for every trial
        assert data.dataset.name == "glyphs-tiny fold 0/4" and len(data.dataset.digest) == 16
    assert len({r.inputs.dataset_inputs[0].dataset.digest for r in runs}) == 1
    assert client.get_experiment(summary["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {a.path for a in client.list_artifacts(summary["parent_run_id"])}
    assert {"results.parquet", "best_config.json", "report", "space"} <= artifacts
    assert [a.path for a in client.list_artifacts(summary["parent_run_id"], "space")] == ["space/quick.yaml"]
    # the parent's own charts: each trial's value and the best so far, step = trial
    by_trial = client.get_metric_history(summary["parent_run_id"], "trial/map_at_r")
    best_so_far = client.get_metric_history(summary["parent_run_id"], "trial/best_map_at_r")
    assert sorted(m.step for m in by_trial) == sorted(m.step for m in best_so_far) == [1, 2, 3, 4]
    values = [m.value for m in sorted(by_trial, key=lambda m: m.step)]
    assert [m.value for m in sorted(best_so_far, key=lambda m: m.step)] == [max(values[: i + 1]) for i in range(4)]
    best_run = parent.data.tags["tuneddml.best_run_id"]
    assert best_run in {r.info.run_id for r in runs} and best_run in parent.data.tags["mlflow.note.content"]


def test_only_the_best_trials_weights_go_to_mlflow_and_load_weights_only(finished_search, tmp_path):
    import torch
    from mlflow.tracking import MlflowClient

    from tuneddml.config import TrialConfig
    from tuneddml.models import BACKBONES
    from tuneddml.results import row_config
    from tuneddml.training import Trainer
    from tuneddml.tuning.outcome import BEST_WEIGHTS

    _cwd, summary = finished_search
    client = MlflowClient(summary["tracking_uri"])
    table = sorted(pq.read_table(summary["results"]).to_pylist(), key=lambda r: -r["best.map_at_r"])
    with_weights = set()
    for row in table:
        artifacts = [a.path for a in client.list_artifacts(row["mlflow_run_id"])]
        assert artifacts in ([], ["model"])  # no checkpoint folder, no optimiser state
        if artifacts:
            with_weights.add(row["trial_id"])
            folder = client.download_artifacts(row["mlflow_run_id"], "model", str(tmp_path / row["trial_id"]))
            weights, architecture = sorted(Path(folder).iterdir(), key=lambda p: p.suffix != ".pt")
            state = torch.load(weights, weights_only=True)
            assert all(isinstance(v, torch.Tensor) for v in state.values())
            trained = Trainer(TrialConfig.from_flat(row_config(row))).model
            trained.load_state_dict(state)
            # the trial's settings beside them: the saved backbone builds its architecture from them
            assert architecture.name == f"{weights.stem}.json"
            assert json.loads(architecture.read_text())["backbone"] == TrialConfig.from_flat(row_config(row)).backbone
            saved = BACKBONES.build("saved", {"path": str(weights)}, item_shape=(1, 32, 32)).eval()
            x = torch.rand(2, 1, 32, 32)
            assert torch.equal(saved(x), trained.eval().backbone(x))
    assert with_weights == {r["trial_id"] for r in table[:BEST_WEIGHTS]} and len(table) > BEST_WEIGHTS


def test_results_table_has_one_row_per_trial(finished_search):
    _cwd, summary = finished_search
    table = pq.read_table(summary["results"]).to_pylist()
    assert len(table) == 4
    assert sorted(r["order"] for r in table) == [0, 1, 2, 3]
    for row in table:
        assert row["status"] == "finished" and row["epochs"] == 2
        assert 0.0 <= row["metric.map_at_r"] <= 1.0 and row["best.map_at_r"] >= row["metric.map_at_r"] - 1e-12
        assert row["config.dataset"] == "glyphs-tiny"
    best = max(table, key=lambda r: r["best.map_at_r"])
    assert best["trial_id"] == summary["best_trial"]


def _seconds(shown: str) -> int:
    """``1m05s`` -> 65 (the progress lines' elapsed time)."""
    minutes, _, seconds = shown.rstrip("s").rpartition("m")
    return int(minutes or 0) * 60 + int(seconds or 0)


def _snapshot_statuses(folder: Path) -> dict[str, str]:
    """Trial id -> status in Ray's latest experiment snapshot."""
    latest = sorted(folder.glob("experiment_state-*.json"))[-1]
    trials = [json.loads(t[0]) for t in json.loads(latest.read_text())["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def test_resume_after_the_driver_is_killed_is_exact(tmp_path):
    storage = tmp_path / "runs"
    env = child_env()
    args = [
        "--space=quick",
        "--num-samples",
        "3",
        "--max-concurrent",
        "1",
        "--storage",
        str(storage),
        "--name",
        "killed",
        "epochs=3",
        "steps_per_epoch=3",
    ]
    log = tmp_path / "first.log"
    # Ray snapshots the experiment only now and then: the trial that ends before the kill is
    # "running" in the snapshot (the case that used to train it, and log its epochs, again)
    proc = start(search_command(*args), tmp_path, env | {"TUNE_GLOBAL_CHECKPOINT_S": "600"}, log)
    orphans = []
    try:
        wait_for(lambda: re.search(r"finished after 3 epochs", log.read_text()), 300, "a trial's end", 0.05)
        orphans = kill_tree_hard(proc)
    finally:
        stop_trees(orphans)  # Ray's processes, all at once: a slow one does not hold up the rest
        if proc.poll() is None:
            stop_tree(proc)
    shutil.rmtree(Path(env.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster", ignore_errors=True)
    folder = storage / "killed"
    ended = [json.loads(line)["trial_id"] for line in (folder / "finished.jsonl").read_text().splitlines()]
    assert ended and all(_snapshot_statuses(folder).get(t) != "TERMINATED" for t in ended)  # the lag case
    elapsed = json.loads((folder / "progress.json").read_text())["elapsed_s"]

    proc = subprocess.run(
        search_command("--space=quick", "--storage", str(storage), "--name", "killed", "--resume", "--json"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]  # --json: stdout is the JSON line, progress is on stderr
    summary = json.loads(lines[0])
    assert summary["trials"] == {"finished": 3} and summary["mlflow_unsent"] == 0
    assert "trials 3/3 done (0 failed)" in proc.stderr
    # the search's clock goes on from where the killed driver left it
    after = _seconds(re.findall(r"^\[(\w+)\] trials", proc.stderr, re.M)[0])
    assert elapsed > 1 and after >= int(elapsed)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary["tracking_uri"])
    runs = children(summary["tracking_uri"], summary["experiment_id"], summary["parent_run_id"])
    by_trial = {r.data.tags["tuneddml.trial_id"]: r.info.run_id for r in runs}
    assert len(by_trial) == len(runs) == 3  # a resumed trial never makes a second child run
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("map_at_r", "loss/total"):  # no epoch logged twice
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2, 3]
    table = pq.read_table(summary["results"]).to_pylist()
    assert {r["trial_id"]: r["mlflow_run_id"] for r in table} == by_trial  # every row names its run
    # a trial that had ended before the kill did not train again: each epoch it reported, one time
    for trial_id in ended:
        (trial_folder,) = folder.glob(f"train_trial_{trial_id}_*")
        records = [json.loads(line) for line in (trial_folder / "result.json").read_text().splitlines()]
        seconds: dict[int, set] = {}
        for record in records:
            seconds.setdefault(record["epoch"], set()).add(record["time/train_s"])
        assert sorted(seconds) == [1, 2, 3] and all(len(v) == 1 for v in seconds.values()), records


def test_two_node_cluster_runs_trials_on_both_nodes(auth_cluster, tmp_path):
    """The driver gets only what a user has: the cluster's token (here RAY_AUTH_TOKEN_PATH; on a
    machine, ~/.ray/auth_token), no RAY_AUTH_MODE."""
    address, env = auth_cluster
    assert "RAY_AUTH_MODE" not in env
    summary = run_search(
        tmp_path, "--space=quick", "--num-samples", "4", "--address", address,
        "--storage", str(tmp_path / "runs"), *TINY, env=env,
    )
    table = pq.read_table(summary["results"]).to_pylist()
    assert len(table) == 4 and all(r["status"] == "finished" for r in table)
    assert len({r["node_id"] for r in table}) == 2


def test_the_cluster_refuses_a_driver_without_its_token(auth_cluster, tmp_path, monkeypatch):
    """Token auth is on: without the token, or with another one, --address ends with exit 2 and one
    line naming the token setting, before anything is written."""
    from tuneddml.errors import ConfigError
    from tuneddml.tuning.ray_address import check_address, probe

    address, env = auth_cluster
    cut = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    assert probe(address, cut | {"HOME": str(tmp_path)}) == "auth"  # no token at all: refused
    assert probe(address, env | {"RAY_AUTH_MODE": "token"}) == "ok"

    other = child_env(token=ray_token_file("other")) | {"RAY_AUTH_MODE": "token"}
    proc = subprocess.run(
        search_command("--space=quick", "--address", address, *TINY),
        cwd=tmp_path, env=other, capture_output=True, text=True, timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and len(lines[0]) < 200, proc.stderr[-2000:]
    assert "--address" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]
    assert os.listdir(tmp_path) == []

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token there
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN"):
        check_address(address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE unset or token"):
        check_address(address)


def test_the_mlflow_ui_compares_the_trials(finished_search, tmp_path):
    """A real ``mlflow server`` over the search's store, and the UI in headless Chromium: the
    experiment opens in the model-training view, the trials are named by what varied and nested
    under the parent, whose page links the best trial. Screenshots go to test-artifacts/ (the
    README's come from here)."""
    from mlflow.tracking import MlflowClient

    from tests.tuning.mlflow_ui import Browser
    from tuneddml.tracking.mlflow_store import ML_VIEW

    cwd, summary = finished_search
    client = MlflowClient(summary["tracking_uri"])
    experiment, parent_id = summary["experiment_id"], summary["parent_run_id"]
    parent = client.get_run(parent_id)
    best_run = parent.data.tags["tuneddml.best_run_id"]
    runs = children(summary["tracking_uri"], experiment, parent_id)
    assert best_run in {r.info.run_id for r in runs}
    names = sorted(r.info.run_name for r in runs)
    assert all(re.fullmatch(r"t0[1-4] (supcon|contrastive) lambda=0\.\d\d", n) for n in names), names
    port = free_port()
    env = child_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = str(Path(search_command()[0]).parent / "mlflow")
    args = ["server", "--backend-store-uri", summary["tracking_uri"], "--host", "127.0.0.1", "--port", str(port)]
    server = start([mlflow, *args, "--workers", "1"], cwd, env, tmp_path / "server.log")
    shots = ROOT / "test-artifacts"
    shots.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: _http_ok(f"{base}health"), 90, "the MLflow server")
        with Browser(tmp_path / "chrome") as page:
            page.quiet(base)
            # as a person sets the table up with a click or two: the parent open on its trials, the
            # search metric and lambda as columns
            columns = ["metrics.`map_at_r`", "params.`loss.lambda`"]
            page.runs_table(experiment, [parent_id], columns)
            # the experiment, as the README's link opens it: the runs table of the model-training view
            page.open(f"{base}#/experiments/{experiment}?{ML_VIEW}")
            shown = page.wait_text(parent.info.run_name, "matching runs", *names)
            assert "Runs" in shown and not {"Judges", "Evaluation runs", "Prompts"} & set(shown.splitlines())
            page.js("document.querySelector('button[aria-label=Close]')?.click()")  # the assistant panel
            page.screenshot(shots / "mlflow-runs.png")
            # the chart view: each metric and loss term per epoch, one line per trial
            page.open(f"{base}#/experiments/{experiment}/runs?compareRunsMode=CHART&{ML_VIEW}")
            page.wait_text("loss/total", "System metrics")
            drawn = "document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"
            wait_for(lambda: page.js(drawn) >= 8, 60, "the loss charts drawn")  # 4 charts, 2+ lines each
            time.sleep(1)
            page.screenshot(shots / "mlflow-charts.png")
            # the parent's page: its description names the best trial and links its run
            page.open(f"{base}#/experiments/{experiment}/runs/{parent_id}?{ML_VIEW}")
            page.wait_text("Best trial:", *names)
            links = page.js("Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href') || '')")
            assert [h for h in links if best_run in h and "/runs/" in h], links
            page.js(
                "Array.from(document.querySelectorAll('h1,h2,h3,h4,span,div')).find("
                "e => e.innerText && e.innerText.trim() === 'Description').scrollIntoView()"
            )
            page.screenshot(shots / "mlflow-parent.png")
            # the trials side by side: what lambda does to the search metric
            ids = json.dumps([r.info.run_id for r in runs])
            page.open(f"{base}#/compare-runs?runs={ids}&experiments={json.dumps([experiment])}&{ML_VIEW}")
            page.wait_text("Parallel Coordinates Plot", "loss.lambda", *names)
            page.screenshot(shots / "mlflow-compare.png")
        for shot in ("mlflow-runs.png", "mlflow-charts.png", "mlflow-parent.png", "mlflow-compare.png"):
            assert (shots / shot).stat().st_size > 20_000, shot
    finally:
        stop_tree(server)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
