"""Path settings given relative to where the search starts are made absolute before the trials
run in Ray's own folders."""

from __future__ import annotations

from tuneddml.tuning.request import absolute_paths


def test_relative_path_settings_become_absolute_and_others_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = absolute_paths(
        {"backbone.path": "w/t0.pt", "feature_cache": "cache", "data_root": "/abs/data", "epochs": 2, "loss": "x"}
    )
    assert out["backbone.path"] == str(tmp_path / "w" / "t0.pt")
    assert out["feature_cache"] == str(tmp_path / "cache")
    assert out["data_root"] == "/abs/data" and out["epochs"] == 2 and out["loss"] == "x"
    assert absolute_paths({"feature_cache": "s3://bucket/f"}) == {"feature_cache": "s3://bucket/f"}
    assert absolute_paths({}) == {}
