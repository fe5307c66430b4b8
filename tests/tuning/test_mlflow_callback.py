"""The Ray-to-MLflow callback, driven with stand-in trials (no Ray cluster): child runs, epoch
records, final values, and each trial's config validated once."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from tuneddml.tracking import SearchRun
from tuneddml.tuning.mlflow_callback import MlflowCallback


def _trial(trial_id: str, **config):
    return SimpleNamespace(
        trial_id=trial_id, config=config, last_result=None, error_file=None, checkpoint=None
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
    run = SearchRun.start(uri, "quick", "s", tags={"tuneddml.space": "quick"}, params={"space": "quick"})
    run.use_outbox(tmp_path / "search")
    callback = MlflowCallback(run)
    trial = _trial("t1", loss="supcon", epochs=2, dataset="glyphs-tiny")
    callback.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        record = {"epoch": epoch, "map_at_r": 0.1 * epoch, "loss/total": 1.0 / epoch, "time/train_s": 0.5}
        record.update({"diverged": 0, "node_id": "n", "pid": 7, "timestamp": 3, "time_total_s": 9.0})
        callback.on_trial_result(0, [trial], trial, record)
        trial.last_result = record
    callback.on_trial_result(0, [trial], trial, record)  # a resumed trial's repeat: kept once
    callback.on_trial_complete(0, [trial], trial)
    assert run.sender.flush(timeout=60) == 0
    assert len(calls) == 1  # one validation for the trial's events

    client = MlflowClient(uri)
    child = client.get_run(callback.run_ids["t1"])
    assert child.data.tags["tuneddml.status"] == "finished" and child.info.status == "FINISHED"
    assert child.data.params["loss"] == "supcon" and "loss.temperature" in child.data.params
    history = client.get_metric_history(child.info.run_id, "map_at_r")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.1), (2, 0.2)]
    metrics = child.data.metrics
    assert metrics["final/map_at_r"] == pytest.approx(0.2) and "final/loss/total" not in metrics
    assert {"pid", "timestamp", "time_total_s"}.isdisjoint(metrics)  # Ray's own keys stay out
    assert math.isclose(metrics["loss/total"], 0.5)
