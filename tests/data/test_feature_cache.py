"""The feature cache's storage: keys, fingerprints, Arrow IPC files, memory maps, built once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from tuneddml.data.base import ArrayItems
from tuneddml.data.feature_cache import (
    FORMAT_VERSION,
    FeatureItems,
    cached,
    feature_key,
    items_fingerprint,
    key_parts_of,
    read_features,
    write_features,
)
from tuneddml.data.files import FileItems

REPO = Path(__file__).resolve().parents[2]


def _features(n=10, f=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, f)).astype(np.float32), np.arange(n, dtype=np.int64) % 3


def test_key_is_canonical_and_changes_with_each_part():
    parts = {"dataset": "glyphs", "image_size": 16, "view": -1, "params": {"a": 1, "b": [1, 2]}}
    key = feature_key(parts)
    assert len(key) == 64 and int(key, 16) >= 0
    assert feature_key(dict(reversed(list(parts.items())))) == key  # key order does not matter
    assert feature_key({**parts, "params": {"b": (1, 2), "a": np.int64(1)}}) == key  # numpy, tuples: JSON's
    for change in ({"image_size": 17}, {"view": 0}, {"params": {"a": 1, "b": [2, 1]}}, {"extra": None}):
        assert feature_key({**parts, **change}) != key, change
    assert FORMAT_VERSION >= 1
    with pytest.raises(TypeError):
        feature_key({"x": object()})


def test_array_fingerprint_reads_labels_and_bytes():
    data = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    base = items_fingerprint(ArrayItems(data, np.array([0, 1])))
    assert items_fingerprint(ArrayItems(data.copy(), np.array([0, 1]))) == base
    assert items_fingerprint(ArrayItems(data, np.array([1, 0]))) != base
    changed = data.copy()
    changed[1, 0, 3, 3] += 1
    assert items_fingerprint(ArrayItems(changed, np.array([0, 1]))) != base


def _image_folder(root: Path) -> list[Path]:
    paths = []
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            path = root / cls / f"{i}.png"
            Image.fromarray(np.full((8, 8, 3), 40 * i + (cls == "b") * 100, np.uint8)).save(path)
            paths.append(path)
    return paths


def test_file_fingerprint_ignores_where_the_data_is_mounted(tmp_path):
    paths = _image_folder(tmp_path / "one" / "data")
    labels = np.array([0, 0, 1, 1])
    base = items_fingerprint(FileItems(paths, labels, 8))
    shutil.copytree(tmp_path / "one" / "data", tmp_path / "elsewhere" / "mount")  # copy2: keeps mtimes
    moved = [tmp_path / "elsewhere" / "mount" / p.parent.name / p.name for p in paths]
    assert items_fingerprint(FileItems(moved, labels, 8)) == base
    assert items_fingerprint(FileItems(paths, labels, 16)) != base  # another image size
    assert items_fingerprint(FileItems(paths[::-1], labels, 8)) != base  # other files in the rows
    stat = os.stat(moved[0])
    os.utime(moved[0], (stat.st_atime, stat.st_mtime + 10))  # a changed file
    assert items_fingerprint(FileItems(moved, labels, 8)) != base
    stored = FileItems([p.read_bytes() for p in paths], labels, 8)  # images stored as bytes in a table
    assert items_fingerprint(stored) == items_fingerprint(FileItems([p.read_bytes() for p in moved], labels, 8))
    assert items_fingerprint(stored) != items_fingerprint(FileItems([p.read_bytes() for p in paths[::-1]], labels, 8))


def test_file_round_trip_is_memory_mapped_and_zero_copy(tmp_path):
    features, labels = _features()
    path = tmp_path / "k.arrow"
    write_features(path, features, labels, key="k", parts={"part": "train"})
    items = read_features(path, "k")
    np.testing.assert_array_equal(items.features, features)
    np.testing.assert_array_equal(items.labels, labels)
    assert items.kind == "vector" and items.item_shape == (4,) and len(items) == 10
    assert items.key == "k" and items.path == path and key_parts_of(path) == {"part": "train"}
    # the features are a view over the mapped file, not a copy
    assert not items.features.flags.owndata and not items.features.flags.writeable
    _, source = items._keep
    assert isinstance(source, pa.MemoryMappedFile)
    source.seek(0)
    mapped = source.read_buffer()  # the whole map, zero-copy
    start = items.features.ctypes.data
    assert mapped.size == os.path.getsize(path)
    assert mapped.address <= start and start + items.features.nbytes <= mapped.address + mapped.size
    with pytest.raises(ValueError, match="holds key"):
        read_features(path, "another")


def test_feature_items_keep_the_item_set_protocol_with_views():
    features, labels = _features()
    items = FeatureItems(features, labels)
    batch = items.load(np.array([3, 1]))
    assert batch.dtype == torch.float32 and torch.equal(batch, torch.from_numpy(features[[3, 1]]))
    sub = items.subset(np.array([5, 2, 7]))
    assert sub.features is features  # a view: new rows, the same array
    np.testing.assert_array_equal(sub.labels, labels[[5, 2, 7]])
    np.testing.assert_array_equal(sub.load(np.array([1])).numpy(), features[[2]])
    view = FeatureItems(features + 1, labels)
    both = items.with_views([view]).subset(np.array([4, 6]))
    np.testing.assert_array_equal(both.load(np.array([0])).numpy(), features[[4]])
    both.select_view(0)
    np.testing.assert_array_equal(both.load(np.array([0])).numpy(), features[[4]] + 1)
    assert both.subset(np.array([1])).view == 0
    both.select_view(-1)
    np.testing.assert_array_equal(both.load(np.array([1])).numpy(), features[[6]])
    with pytest.raises(ValueError):
        both.select_view(1)
    with pytest.raises(ValueError):
        items.with_views([FeatureItems(features, labels[::-1].copy())])


def _counting_build(counter: Path, seed=0):
    def build():
        with open(counter, "a") as f:
            f.write("built\n")
        return _features(seed=seed)

    return build


def test_cached_builds_once_and_rebuilds_a_corrupt_file(tmp_path):
    counter = tmp_path / "count"
    folder = tmp_path / "cache"
    path = cached(folder, "abc", _counting_build(counter), parts={"p": 1})
    assert path == folder / "abc.arrow" and counter.read_text().count("built") == 1
    assert cached(folder, "abc", _counting_build(counter)) == path
    assert counter.read_text().count("built") == 1
    np.testing.assert_array_equal(read_features(path).features, _features()[0])
    assert not list(folder.glob("*.tmp.*"))  # no temporary file left

    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])  # truncated
    assert cached(folder, "abc", _counting_build(counter)) == path
    assert counter.read_text().count("built") == 2
    np.testing.assert_array_equal(read_features(path, "abc").features, _features()[0])

    path.write_bytes(b"not an arrow file at all")
    cached(folder, "abc", _counting_build(counter))
    assert counter.read_text().count("built") == 3 and len(read_features(path, "abc")) == 10

    write_features(path, *_features(seed=1), key="other")  # another key's file under this name
    cached(folder, "abc", _counting_build(counter))
    assert counter.read_text().count("built") == 4 and read_features(path).key == "abc"


def test_an_unwritable_cache_folder_names_the_setting(tmp_path):
    from tuneddml.errors import ConfigError

    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(ConfigError) as info:
        cached(tmp_path / "file" / "cache", "abc", _counting_build(tmp_path / "count"))
    assert info.value.field == "feature_cache" and "write" in str(info.value)
    assert not (tmp_path / "count").exists()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from tuneddml.data.feature_cache import cached, read_features

    folder, counter, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

    def build():
        with open(counter, "a") as f:
            f.write("built\\n")
        time.sleep(0.5)  # the other process asks meanwhile
        rng = np.random.default_rng(7)
        return rng.standard_normal((50, 8)).astype(np.float32), np.arange(50) % 5

    while time.time() < start:
        time.sleep(0.01)
    path = cached(folder, "shared", build)
    sys.stdout.write(read_features(path, "shared").features.tobytes().hex())
    """
)


def test_two_processes_asking_at_once_build_one_file(tmp_path):
    import time

    counter = tmp_path / "count"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = str(time.time() + 1.5)  # both start, then ask at the same moment
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path / "cache"), str(counter), start],
            stdout=subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert counter.read_text().count("built") == 1
    assert outs[0] == outs[1] and len(outs[0]) == 50 * 8 * 4 * 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["shared.arrow", "shared.lock"]
