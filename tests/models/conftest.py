"""Fixtures for the pretrained backbones: an offline machine with an empty Hugging Face cache of
its own."""

from __future__ import annotations

import pytest


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An offline machine whose hub cache (and torch hub folder) is an empty folder of the test's."""
    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return cache

