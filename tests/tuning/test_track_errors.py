"""Errors that survive the trip from a trial to the driver, and a search that fails before its
first trial leaves nothing behind. The searches here run in this process on a local Ray, with a
stand-in trainable (this module's :func:`fake_trial`, imported by Ray's workers) so that a trial
fails or diverges on purpose, in a second."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import tuneddml.errors as errors_module
from tests.tuning.procs import ROOT, short_tmp
from tuneddml.errors import ConfigError, TrialDiverged, error_message

SAMPLES = {
    ConfigError: [
        ConfigError("sampler.samples_per_class", 9, "at most 4 (the smallest class)"),
        ConfigError("loss", "nope", ["supcon", "contrastive"]),
        ConfigError("--name", None),
    ],
    TrialDiverged: [TrialDiverged(2, 7, {"total": math.nan, "pos": 1.5})],
}


def test_every_project_exception_pickles_with_its_type_and_message():
    classes = [
        c for _, c in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(c, BaseException) and c.__module__ == errors_module.__name__
    ]
    assert set(classes) == set(SAMPLES)  # a new exception class gets its sample here
    for samples in SAMPLES.values():
        for exc in samples:
            back = pickle.loads(pickle.dumps(exc))
            assert type(back) is type(exc) and str(back) == str(exc)
            assert vars(back).keys() == vars(exc).keys()


def test_error_message_unwraps_a_cause_and_falls_back_to_the_traceback_text():
    class Wrapper(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("Traceback (most recent call last):\n  ...long...")
            self.cause = cause

    inner = ConfigError("lr", -1.0, "a positive number")
    assert error_message(Wrapper(inner)) == f"ConfigError: {inner}"
    text = "Failure # 1\nTraceback (most recent call last):\n  File x\nValueError: boom\n"
    assert error_message(None, text) == "ValueError: boom"


# ---- searches on a local Ray ------------------------------------------------------------------
BAD = ConfigError("sampler.samples_per_class", 9, "at most 4 (the smallest class)")


def fake_trial(params, metric="map_at_r", ended=None):
    """supcon: fails with a ConfigError; contrastive with lambda above 0.6: diverges; else trains."""
    import ray
    from ray import tune

    from tuneddml.results import diverged_record

    node = ray.get_runtime_context().get_node_id()
    if params["loss"] == "supcon":
        raise BAD
    if params["loss.lambda"] > 0.6:
        exc = TrialDiverged(1, 2, {"total": math.inf})
        tune.report({**diverged_record(1, metric, str(exc)), "node_id": node})
        return
    for epoch in (1, 2):
        tune.report({"epoch": epoch, metric: 0.1 * epoch + params["loss.lambda"] / 10, "diverged": 0, "node_id": node})


@contextlib.contextmanager
def _stderr_to(path: Path):
    """The file descriptor 2 (Ray's processes, its C++ logging) and ``sys.stderr`` (Python's) into
    ``path`` while the block runs, as ``capfd`` would read them (the fixture below is the module's,
    capfd a test's own). ``sys.stderr`` is a writer on descriptor 2 for the block: a logging
    handler that keeps it writes to wherever descriptor 2 goes afterwards."""
    saved = os.dup(2)
    stream = open(2, "w", buffering=1, closefd=False, errors="replace")
    try:
        with open(path, "wb") as handle:
            os.dup2(handle.fileno(), 2)
            with contextlib.redirect_stderr(stream):
                yield
            stream.flush()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@pytest.fixture(scope="module")
def again(tmp_path_factory):
    """One search of the quick space (3 trials, one at a time) on the stand-in trainable, run in
    two goes by the same name: the first fails before its first trial (its searcher cannot be
    built); the second runs the 3 trials, of which one fails and one diverges. What the first go
    left and what the second printed are kept for the tests that read them."""
    from mlflow.tracking import MlflowClient

    import tuneddml.searchers.ray_searcher as ray_searcher
    import tuneddml.tuning.trainable as trainable
    from tuneddml.tuning.driver import run_search
    from tuneddml.tuning.request import prepare_search

    tmp_path = tmp_path_factory.mktemp("errs")
    ray_tmp = short_tmp("rt")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
        monkeypatch.setenv("TUNEDDML_MLFLOW_FLUSH_S", "60")
        monkeypatch.setattr(trainable, "train_trial", fake_trial)
        # Ray's workers import the stand-in trainable from this module: the repository on their path
        path = os.environ.get("PYTHONPATH")
        monkeypatch.setenv("PYTHONPATH", str(ROOT) + (os.pathsep + path if path else ""))
        monkeypatch.chdir(tmp_path)

        def request():
            return prepare_search(
                space="quick", num_samples=3, max_concurrent=1, storage=str(tmp_path / "runs"), name="again",
                tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            )

        def broken(*args, **kwargs):
            raise RuntimeError("the searcher could not be built")

        first = request()
        with monkeypatch.context() as patched:
            patched.setattr(ray_searcher, "make_ray_searcher", broken)
            with pytest.raises(RuntimeError, match="could not be built"):
                run_search(first, stream=io.StringIO())
        experiment = MlflowClient(first.tracking_uri).get_experiment_by_name("quick")
        left = {
            "folder": first.folder.exists(),
            "runs": MlflowClient(first.tracking_uri).search_runs([experiment.experiment_id]),
        }
        out = io.StringIO()
        with _stderr_to(tmp_path / "stderr.txt"):
            summary = run_search(request(), stream=out)  # the same name, accepted again
        err = (tmp_path / "stderr.txt").read_text(errors="replace")
    try:
        yield {"summary": summary, "console": out.getvalue(), "err": err, "left": left, "folder": tmp_path}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.ray
def test_a_trials_own_message_reaches_the_console_mlflow_the_table_and_the_report(again, capfd):
    from mlflow.tracking import MlflowClient

    from tuneddml.plots import draw_learning_curves
    from tuneddml.report import main as report_main
    from tuneddml.results import load_results

    summary, console, err, tmp_path = again["summary"], again["console"], again["err"], again["folder"]
    table = {r["config.loss"] + str(r["config.loss.lambda"]): r for r in pq.read_table(summary.results_file).to_pylist()}
    assert summary.counts == {"failed": 1, "diverged": 1, "finished": 1}, console
    failed = next(r for r in table.values() if r["status"] == "failed")
    diverged = next(r for r in table.values() if r["status"] == "diverged")
    assert failed["error"] == f"ConfigError: {BAD}"
    assert diverged["error"].startswith("diverged at epoch 1 (step 2): total=inf")
    assert [r["error"] for r in table.values() if r["status"] == "finished"] == [None]
    # one line per failed trial, with what varied, and no Ray traceback on the console
    assert f"t{failed['order'] + 1:02d} supcon lambda=0.50 failed: ConfigError: {BAD}" in console
    assert f"t{diverged['order'] + 1:02d} contrastive lambda=" in console and " diverged at epoch 1 (step 2)" in console
    assert "Traceback" not in console + err and "RayTaskError" not in err, err[-3000:]
    client = MlflowClient(summary.tracking_uri)
    runs = {r.data.tags["tuneddml.trial_id"]: r for r in client.search_runs(
        [summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )}
    assert runs[failed["trial_id"]].data.tags["tuneddml.error"] == f"ConfigError: {BAD}"
    assert runs[failed["trial_id"]].info.status == "FAILED"
    # the whole traceback, kept by MLflow after Ray's session folder has gone
    traceback = client.download_artifacts(runs[failed["trial_id"]].info.run_id, "error.txt", str(tmp_path / "e"))
    text = open(traceback).read()
    assert 'File "' in text and text.strip().endswith(f"ConfigError: {BAD}") and "\x1b[" not in text
    assert runs[diverged["trial_id"]].data.tags["tuneddml.error"] == diverged["error"]
    # the epoch log holds every epoch reported; the report names the failed trial's reason and
    # draws the finished trial's learning curve
    finished = next(r for r in table.values() if r["status"] == "finished")
    log = [json.loads(line) for line in (summary.folder / "epochs.jsonl").read_text().splitlines()]
    assert [(e["trial_id"], e["epoch"]) for e in log if e["trial_id"] == finished["trial_id"]] == [
        (finished["trial_id"], 1),
        (finished["trial_id"], 2),
    ]
    assert {e["trial_id"] for e in log} == {finished["trial_id"], diverged["trial_id"]}
    assert report_main([str(summary.folder), "--top", "3", "--no-plots"]) == 0
    line = next(x for x in capfd.readouterr().out.splitlines() if failed["trial_id"] in x)
    assert "failed ConfigError: sampler.samples_per_class: bad value 9" in " ".join(line.split())
    curves = draw_learning_curves(load_results([summary.results_file]))
    assert [len(line.get_xdata()) for line in curves.axes[0].get_lines()] == [2]  # the finished trial


@pytest.mark.slow
@pytest.mark.ray
def test_a_search_that_fails_before_its_first_trial_can_be_run_again_by_name(again):
    from mlflow.tracking import MlflowClient

    summary = again["summary"]
    assert not again["left"]["folder"]
    assert again["left"]["runs"] == []  # the parent run is gone
    client = MlflowClient(summary.tracking_uri)
    # the same name, accepted again
    assert sum(summary.counts.values()) == 3 and summary.results_file.exists()
    assert [r.info.run_id for r in client.search_runs(
        [summary.experiment_id], filter_string="tags.`tuneddml.search` = 'again'"
    )] == [summary.parent_run_id]
