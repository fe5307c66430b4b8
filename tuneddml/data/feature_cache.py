"""Cached feature vectors of a dataset part: content keys, Arrow IPC files, built once.

A cached-feature trial (``features=cached``, :mod:`tuneddml.training.features`) trains only the
head of a frozen backbone, so the backbone's features of every item can be computed once and
shared by every trial of a search, on every node that mounts the cache folder. This module holds
the storage side and knows nothing of models:

- :func:`feature_key`: the sha256 of the canonical JSON of the key parts (what the features
  depend on) and :data:`FORMAT_VERSION`; :func:`items_fingerprint`: a digest of an item set's
  content (labels and pixels for items in memory; relative paths, sizes and mtimes for files,
  not the folder they are mounted at).
- One Arrow IPC file per key, ``<key>.arrow``: columns ``label`` (int64) and ``feature``
  (``fixed_size_list<float32>[F]``), one record batch, the key and its parts as JSON in the
  schema's metadata. :func:`read_features` memory-maps it: the features are a zero-copy numpy view
  ``[N, F]`` of the mapped file, and :class:`FeatureItems` reads batches from it.
- :func:`cached`: the file, built by the caller's ``build`` at most once however many processes or
  nodes ask at the same time (an exclusive ``fcntl.flock`` on ``<key>.lock``, the file checked again
  once the lock is held, written to ``<key>.arrow.tmp.<pid>`` and renamed): a reader never sees half
  a file, and a corrupt or unreadable file is built again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tuneddml.data.base import ArrayItems
from tuneddml.data.files import FileItems
from tuneddml.errors import ConfigError

#: changes whenever the file layout or the meaning of the key parts changes: old files are not read
FORMAT_VERSION = 1
#: schema metadata keys
KEY_META = b"tuneddml.key"
PARTS_META = b"tuneddml.key_parts"


def _plain(value: Any) -> Any:
    """JSON's types for numpy scalars and arrays, tuples and paths; anything else is refused."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"feature key: a {type(value).__name__} is not a JSON value")


def canonical_json(parts: Mapping[str, Any]) -> str:
    """``parts`` as JSON with sorted keys and no spaces: equal parts, equal text."""
    return json.dumps(dict(parts), sort_keys=True, separators=(",", ":"), default=_plain)


def feature_key(parts: Mapping[str, Any]) -> str:
    """The sha256 hex digest of :data:`FORMAT_VERSION` and the canonical JSON of ``parts``."""
    text = canonical_json({"format": FORMAT_VERSION, "parts": dict(parts)})
    return hashlib.sha256(text.encode()).hexdigest()


def items_fingerprint(items: Any) -> str:
    """A digest of an item set's content: its labels and

    - :class:`~tuneddml.data.base.ArrayItems`: the array's dtype, shape and bytes;
    - :class:`~tuneddml.data.files.FileItems`: each image's path relative to the items' common
      folder, with its size and whole-second mtime (or the bytes of an image stored in a table),
      and the image size: not the folder itself, so a node mounting the data elsewhere (or a copy
      keeping mtimes, ``cp -p``, ``rsync -a``) gets the same digest;
    - :class:`FeatureItems`: its file's key and rows.
    """
    digest = hashlib.sha256()
    labels = np.ascontiguousarray(np.asarray(items.labels, dtype=np.int64))
    digest.update(f"{type(items).__name__}:{len(labels)}:".encode())
    digest.update(labels.tobytes())
    if isinstance(items, ArrayItems):
        data = np.ascontiguousarray(items.data)
        digest.update(f"{data.dtype.str}:{data.shape}:".encode())
        digest.update(memoryview(data).cast("B"))
    elif isinstance(items, FileItems):
        digest.update(f"size={items.image_size}:resize={items.resize}:".encode())
        files = [str(p) for p in items.paths if not isinstance(p, bytes)]
        common = os.path.commonpath(files) if files else ""
        if len(files) == 1:
            common = os.path.dirname(files[0])
        for source in items.paths:
            if isinstance(source, bytes):
                digest.update(b"bytes:" + hashlib.sha256(source).digest())
                continue
            stat = os.stat(source)
            rel = os.path.relpath(str(source), common) if common else str(source)
            digest.update(f"file:{rel}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    elif isinstance(items, FeatureItems):
        digest.update(f"features:{items.key}:".encode())
        digest.update(np.ascontiguousarray(items.rows, dtype=np.int64).tobytes())
    else:
        raise TypeError(f"items_fingerprint: no fingerprint for {type(items).__name__} items")
    return digest.hexdigest()


class FeatureItems:
    """Feature vectors ``[N, F]`` (float32) with labels: an :class:`~tuneddml.data.base.ItemSet`
    of kind ``"vector"`` over (usually) a memory-mapped cache file.

    ``rows`` picks this set's items out of ``features`` (a subset is a view: new rows, the same
    arrays). ``views`` are other feature arrays of the same items in the same order (augmented
    draws of the training items); :meth:`select_view` chooses the one :meth:`load` reads (-1: the
    evaluation view, ``features``). ``key`` and ``path`` name the cache file (empty / None for
    arrays built in memory).
    """

    kind: Literal["image", "vector"] = "vector"

    def __init__(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        rows: np.ndarray | None = None,
        views: Sequence[np.ndarray] = (),
        key: str = "",
        path: Path | None = None,
        keep: Any = None,
    ) -> None:
        if features.ndim != 2:
            raise ValueError(f"features must be [N, F], got shape {features.shape}")
        self.features = features
        self.rows = np.arange(len(features), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.rows):
            raise ValueError(f"{len(self.rows)} items but {len(self.labels)} labels")
        for view in views:
            if view.shape != features.shape:
                raise ValueError(f"a view of shape {view.shape} for features of shape {features.shape}")
        self.views = list(views)
        self.view = -1
        self.key = key
        self.path = path
        self._keep = keep  # the Arrow table the arrays view: alive as long as they are

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (int(self.features.shape[1]),)

    def select_view(self, view: int) -> None:
        """Read view ``view`` from now on (0..len(views)-1), or the evaluation view (-1)."""
        if not -1 <= view < len(self.views):
            raise ValueError(f"view {view} of {len(self.views)} views")
        self.view = view

    def load(self, indices: np.ndarray) -> torch.Tensor:
        source = self.features if self.view < 0 else self.views[self.view]
        rows = self.rows[np.asarray(indices, dtype=np.int64).reshape(-1)]
        return torch.from_numpy(np.ascontiguousarray(source[rows], dtype=np.float32))

    def subset(self, indices: np.ndarray) -> FeatureItems:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = FeatureItems(
            self.features,
            self.labels[indices],
            rows=self.rows[indices],
            views=self.views,
            key=self.key,
            path=self.path,
            keep=self._keep,
        )
        out.view = self.view
        return out

    def with_views(self, views: Sequence[FeatureItems]) -> FeatureItems:
        """These items with the training views ``views`` (each the same items, in the same order:
        whole files, as these items are)."""
        for view in views:
            if len(view) != len(self) or not np.array_equal(view.labels, self.labels):
                raise ValueError("a view of other items (labels differ)")
        return FeatureItems(
            self.features,
            self.labels,
            rows=self.rows,
            views=[v.features for v in views],  # whole files, as these items' own
            key=self.key,
            path=self.path,
            keep=(self._keep, [v._keep for v in views]),
        )


def write_features(
    path: str | Path, features: np.ndarray, labels: np.ndarray, *, key: str = "", parts: Mapping[str, Any] | None = None
) -> None:
    """``features`` ``[N, F]`` and ``labels`` ``[N]`` as one Arrow IPC file (one record batch)."""
    import pyarrow as pa

    features = np.ascontiguousarray(features, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} for {len(labels)} labels")
    width = int(features.shape[1])
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), type=pa.float32()), width)
    schema = pa.schema(
        [pa.field("label", pa.int64()), pa.field("feature", pa.list_(pa.float32(), width))],
        metadata={KEY_META: key.encode(), PARTS_META: canonical_json(parts or {}).encode()},
    )
    batch = pa.record_batch([pa.array(labels, type=pa.int64()), column], schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)


def read_features(path: str | Path, key: str | None = None) -> FeatureItems:
    """The file's items, memory-mapped: ``.features`` is a zero-copy view of the mapped file.

    ``key``: the key the file must hold (a ValueError otherwise). A file that is not such a file
    (truncated, foreign, another layout) raises OSError, ValueError or pyarrow's ArrowInvalid."""
    import pyarrow as pa

    path = Path(path)
    source = pa.memory_map(str(path), "r")
    table = pa.ipc.open_file(source).read_all()
    meta = table.schema.metadata or {}
    if key is not None and meta.get(KEY_META, b"").decode() != key:
        raise ValueError(f"{path}: holds key {meta.get(KEY_META, b'').decode()!r}, not {key!r}")
    feature = table.schema.field("feature").type
    if table.schema.field("label").type != pa.int64() or not pa.types.is_fixed_size_list(feature):
        raise ValueError(f"{path}: not a feature file (columns label int64, feature fixed_size_list)")
    if feature.value_type != pa.float32():
        raise ValueError(f"{path}: features of type {feature.value_type}, not float32")
    column = table.column("feature")
    width = feature.list_size
    if column.num_chunks == 1:
        flat = column.chunk(0).flatten().to_numpy(zero_copy_only=True)
    else:  # not what write_features writes: one copy
        flat = np.concatenate([chunk.flatten().to_numpy(zero_copy_only=True) for chunk in column.chunks])
    features = flat.reshape(-1, width) if len(flat) else np.zeros((0, width), dtype=np.float32)
    labels = table.column("label").to_numpy().astype(np.int64)  # a small copy the split may relabel
    if len(features) != len(labels):
        raise ValueError(f"{path}: {len(features)} features but {len(labels)} labels")
    return FeatureItems(features, labels, key=meta.get(KEY_META, b"").decode(), path=path, keep=(table, source))


def key_parts_of(path: str | Path) -> dict[str, Any]:
    """The key parts a feature file was written with (its schema's metadata)."""
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        meta = pa.ipc.open_file(source).schema.metadata or {}
    return json.loads(meta.get(PARTS_META, b"{}"))


def _readable(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        read_features(path, key)
    except Exception:  # truncated, corrupt or foreign: built again
        return False
    return True


def cached(
    folder: str | Path,
    key: str,
    build: Callable[[], tuple[np.ndarray, np.ndarray]],
    *,
    parts: Mapping[str, Any] | None = None,
) -> Path:
    """The path of ``<folder>/<key>.arrow``, built with ``build() -> (features [N, F], labels [N])``
    if it is missing or unreadable; ``parts`` (the key's parts) are stored in its metadata.

    Built once: concurrent callers (processes, nodes sharing the folder) wait on an exclusive lock
    of ``<key>.lock`` and find the file made by the first; the file is written under a temporary
    name and renamed, so it is whole or absent (the lock needs a filesystem with working
    ``flock``: local disks, NFSv4, Lustre and the like). A folder that cannot be made or written
    is a ConfigError naming ``feature_cache``."""
    folder = Path(folder).expanduser()
    path = folder / f"{key}.arrow"
    if _readable(path, key):
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{key}.lock", "a+")  # closed by the with below
    except OSError as exc:
        raise ConfigError("feature_cache", str(folder), f"a folder this process can write ({exc.strerror})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _readable(path, key):  # built by another caller while this one waited
                return path
            features, labels = build()
            tmp = folder / f"{key}.arrow.tmp.{os.getpid()}"
            try:
                write_features(tmp, features, labels, key=key, parts=parts)
                with open(tmp, "rb+") as written:
                    os.fsync(written.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
