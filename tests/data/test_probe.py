"""The dataset a search's check loads before Ray starts: only what is cheap to load."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tuneddml.data import probe
from tuneddml.errors import ConfigError


def test_a_glyph_dataset_that_needs_rendering_is_not_built(tmp_path):
    assert probe.probe_dataset("glyphs", {}, root=str(tmp_path), image_size=32) is None
    assert list(tmp_path.iterdir()) == []  # nothing rendered, no cache written


def test_image_folders_are_indexed_and_a_sample_decoded(tmp_path):
    rng = np.random.default_rng(0)
    for c in "abcd":
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    dataset = probe.probe_dataset("imagefolder", {}, root=str(tmp_path), image_size=16)
    probe.check_sample(dataset.train)
    (tmp_path / "a" / "1.png").write_bytes(b"garbage")  # the index does not open images ...
    dataset = probe.probe_dataset("imagefolder", {}, root=str(tmp_path), image_size=16)
    with pytest.raises(ConfigError, match=r"1\.png"):  # ... the sample decodes them
        probe.check_sample(dataset.train)
        probe.check_sample(dataset.test)


def test_a_large_parquet_table_is_left_to_the_trial(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": [0, 1] * 4, "vector": [[0.0, 1.0]] * 8}), path)
    assert probe.probe_dataset("parquet", {"vector_column": "vector"}, root=str(path), image_size=16) is not None
    monkeypatch.setattr(probe, "LARGE_TABLE", 10)
    assert probe.probe_dataset("parquet", {"vector_column": "vector"}, root=str(path), image_size=16) is None
