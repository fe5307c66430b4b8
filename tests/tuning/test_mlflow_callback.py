"""The Ray-to-MLflow callback, driven with stand-in trials (no Ray cluster): child runs named by
what varied, epoch records (no bookkeeping values among the metrics, no ``final/*`` copies), the
data split as a dataset input, a failed trial's traceback as an artifact, and each trial's config
validated once."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from tuneddml.tracking import SearchRun
from tuneddml.tuning.mlflow_callback import MlflowCallback


def _trial(trial_id: str, tag: str = "", **config):
    return SimpleNamespace(
        trial_id=trial_id, config=config, last_result=None, error_file=None, checkpoint=None, experiment_tag=tag
    )


def test_trials_reach_their_child_runs_and_configs_are_validated_once(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    import tuneddml.config as config_module

    calls = []
    real = config_module.TrialConfig.from_flat.__func__

    def counting(cls, flat):
        calls.append(dict(flat))
        return real(cls, flat)

    monkeypatch.setattr(config_module.TrialConfig, "from_flat", classmethod(counting))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = SearchRun.start(
        uri, "quick", "s", tags={"tuneddml.space": "quick"}, params={"space": "quick"}, searched=["loss", "loss.lambda"]
    )
    run.use_outbox(tmp_path / "search")
    callback = MlflowCallback(run)
    trial = _trial("t1", "3_loss=supcon,loss.lambda=0.5", loss="supcon", epochs=2, dataset="glyphs-tiny")
    trial.config["loss.lambda"] = 0.5
    callback.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        record = {"epoch": epoch, "map_at_r": 0.1 * epoch, "loss/total": 1.0 / epoch, "time/train_s": 0.5}
        record.update({"diverged": 0, "node_id": "n", "pid": 7, "timestamp": 3, "time_total_s": 9.0})
        record.update({"system/cpu_percent": 50.0 * epoch, "system/rss_mb": 400.0, "data_digest": "abc123"})
        callback.on_trial_result(0, [trial], trial, record)
        trial.last_result = record
    callback.on_trial_result(0, [trial], trial, record)  # a resumed trial's repeat: kept once
    callback.on_trial_complete(0, [trial], trial)
    assert run.sender.flush(timeout=60) == 0
    assert len(calls) == 1  # one validation for the trial's events

    client = MlflowClient(uri)
    child = client.get_run(callback.run_ids["t1"])
    assert child.info.run_name == "t03 supcon lambda=0.50"
    assert child.data.tags["mlflow.parentRunId"] == run.parent_run_id
    assert child.data.tags["tuneddml.status"] == "finished" and child.info.status == "FINISHED"
    assert child.data.tags["tuneddml.epochs"] == "2"
    assert child.data.params["loss"] == "supcon" and "loss.temperature" in child.data.params
    history = client.get_metric_history(child.info.run_id, "map_at_r")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.1), (2, 0.2)]
    cpu = client.get_metric_history(child.info.run_id, "system/cpu_percent")
    assert [(m.step, m.value) for m in cpu] == [(1, 50.0), (2, 100.0)]
    metrics = child.data.metrics
    assert not [k for k in metrics if k.startswith("final/")]  # the last per-epoch value says it
    assert {"epoch", "diverged"}.isdisjoint(metrics)  # bookkeeping: tags, not charts
    assert {"pid", "timestamp", "time_total_s"}.isdisjoint(metrics)  # Ray's own keys stay out
    assert math.isclose(metrics["loss/total"], 0.5)
    (data,) = child.inputs.dataset_inputs
    assert (data.dataset.name, data.dataset.digest) == ("glyphs-tiny fold 0/4", "abc123")
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "val fold 0/4"
    experiment = client.get_experiment(run.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_failed_trial_keeps_its_reason_and_its_whole_traceback_after_rays_file_is_gone(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = SearchRun.start(uri, "quick", "s", tags={}, params={}, searched=["loss"])
    run.use_outbox(tmp_path / "search")
    callback = MlflowCallback(run)
    error_file = tmp_path / "session" / "error.txt"
    error_file.parent.mkdir()
    traceback = "Failure # 1\nTraceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom\n"
    error_file.write_text(traceback)
    trial = _trial("t9", "1_loss=supcon", loss="supcon", epochs=2, dataset="glyphs-tiny")
    trial.error_file = str(error_file)
    trial.get_pickled_error = lambda: None
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_error(0, [trial], trial)
    error_file.unlink()  # Ray's session folder goes; the outbox holds the text
    assert run.sender.flush(timeout=60) == 0
    client = MlflowClient(uri)
    child = client.get_run(callback.run_ids["t9"])
    assert child.info.status == "FAILED" and child.data.tags["tuneddml.error"] == "ValueError: boom"
    folder = client.download_artifacts(child.info.run_id, "error.txt", str(tmp_path / "back"))
    assert open(folder).read() == traceback
