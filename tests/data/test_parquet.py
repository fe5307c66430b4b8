from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tuneddml.data import DATASETS
from tuneddml.errors import ConfigError


def png_bytes(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((10, 14, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def vector_table(tmp_path, split=None):
    rng = np.random.default_rng(0)
    labels = [f"class-{i % 6}" for i in range(24)]
    vectors = rng.normal(size=(24, 5)).astype(np.float32)
    columns = {"label": labels, "features": pa.array(list(vectors), type=pa.list_(pa.float32()))}
    if split is not None:
        columns["part"] = split
    path = tmp_path / "vectors.parquet"
    pq.write_table(pa.table(columns), path)
    return path, labels, vectors


def test_vectors_without_split_column(tmp_path):
    path, _, vectors = vector_table(tmp_path)
    data = DATASETS.build("parquet", {"path": str(path)})  # the vector column is found by its type
    assert data.train.kind == "vector" and data.train.item_shape == (5,)
    assert len(data.train) == 12 and len(data.test) == 12  # 6 classes: 3 + 3
    assert data.augmentation == "none"
    assert np.array_equal(np.unique(data.train.labels), [0, 1, 2])
    # every row keeps its own vector
    rows = {tuple(v) for v in vectors.tolist()}
    assert all(tuple(v) in rows for v in data.train.load(np.arange(12)).numpy().tolist())


def test_vectors_with_a_split_column_and_root(tmp_path):
    part = ["train" if i % 6 < 4 else "test" for i in range(24)]
    path, _, _ = vector_table(tmp_path, part)
    data = DATASETS.build(
        "parquet",
        {"path": path.name, "vector_column": "features", "split_column": "part"}, root=str(tmp_path),
    )
    assert len(data.train) == 16 and len(data.test) == 8
    assert data.info["num_train_classes"] == 4


def test_query_and_gallery_rows(tmp_path):
    part = ["train"] * 12 + ["query"] * 4 + ["gallery"] * 8  # rows 12.. are classes 0..5, 0..5
    path, _, _ = vector_table(tmp_path, part)
    data = DATASETS.build("parquet", {"path": str(path), "split_column": "part"})
    assert len(data.test) == 4 and len(data.test_gallery) == 8
    # one label space: the queries' classes 0..3 keep their numbers in the gallery
    assert data.test.labels.tolist() == [0, 1, 2, 3]
    assert data.test_gallery.labels.tolist() == [4, 5, 0, 1, 2, 3, 4, 5]


def test_image_bytes_and_hf_image_structs(tmp_path):
    blobs = [png_bytes(i) for i in range(8)]
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    pq.write_table(pa.table({"label": labels, "image": blobs}), tmp_path / "plain.parquet")
    structs = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)])
    pq.write_table(pa.table({"y": labels, "img": structs}), tmp_path / "hf.parquet")
    for name, params in (("plain.parquet", {}), ("hf.parquet", {"label_column": "y", "image_column": "img"})):
        data = DATASETS.build("parquet", {"path": str(tmp_path / name), **params}, image_size=8)
        assert data.train.kind == "image" and data.augmentation == "natural"
        batch = data.train.load(np.arange(len(data.train)))
        assert batch.shape == (4, 3, 8, 8) and 0 <= float(batch.min()) and float(batch.max()) <= 1


def test_bad_tables(tmp_path):
    with pytest.raises(ConfigError) as err:
        DATASETS.build("parquet", {"path": str(tmp_path / "none.parquet")})
    assert err.value.field == "dataset.path"
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError) as err:
        DATASETS.build("parquet", {"path": str(tmp_path / "junk.parquet")})
    assert err.value.field == "dataset.path"
    path, _, _ = vector_table(tmp_path)
    with pytest.raises(ConfigError) as err:
        DATASETS.build("parquet", {"path": str(path), "label_column": "class"})
    assert err.value.field == "dataset.label_column" and "features" in err.value.expected
    ragged = pa.table({"label": [0, 1, 2, 3], "v": pa.array([[1.0], [1.0, 2.0], [0.0], [3.0]])})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(ConfigError, match="same, non-zero length"):
        DATASETS.build("parquet", {"path": str(tmp_path / "ragged.parquet")})
    two = pa.table({"label": [0, 1], "a": [b"x", b"y"], "b": pa.array([[1.0], [2.0]])})
    pq.write_table(two, tmp_path / "two.parquet")
    with pytest.raises(ConfigError, match="candidates: a, b"):
        DATASETS.build("parquet", {"path": str(tmp_path / "two.parquet")})
    split = pa.table(
        {"label": [0, 1, 2, 3], "v": pa.array([[1.0]] * 4), "s": ["train", "test", "dev", "test"]}
    )
    pq.write_table(split, tmp_path / "split.parquet")
    with pytest.raises(ConfigError) as err:
        DATASETS.build("parquet", {"path": str(tmp_path / "split.parquet"), "split_column": "s"})
    assert err.value.field == "dataset.split_column" and err.value.value == "dev"


def test_unreadable_image_bytes_are_named(tmp_path):
    blobs = [png_bytes(i) for i in range(4)]
    blobs[2] = blobs[2][:20]
    pq.write_table(pa.table({"label": [0, 1, 2, 3], "image": blobs}), tmp_path / "t.parquet")
    with pytest.raises(ConfigError) as err:
        DATASETS.build("parquet", {"path": str(tmp_path / "t.parquet")})
    assert err.value.field == "dataset.image_column" and "row 2" in err.value.value
