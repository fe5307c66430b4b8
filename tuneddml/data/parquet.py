"""Users' own data as a Parquet table (read with pyarrow): a label column plus either encoded image
bytes or feature vectors.

- ``image_column``: binary cells (JPEG/PNG/... bytes), or structs with a ``bytes`` field (the
  Hugging Face ``Image`` feature); decoded at load time like image files.
- ``vector_column``: ``list<float>`` cells of one length ``D``; items of kind ``"vector"``
  (``[N, D]`` float32), for training an embedding head on precomputed features.

Give one of the two, or neither when the table has exactly one column of either kind. With
``split_column`` the rows say their part (``train``/``test``, or ``train``/``query``/``gallery``
for a query-gallery protocol); without it the classes are split 50/50, seeded by ``split_seed``.
``path`` may be a file or a folder of Parquet files; relative to ``root`` if ``root`` is given,
and ``root`` itself if ``path`` is empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from tuneddml.data import DATASETS, RUNTIME
from tuneddml.data.base import ArrayItems, Dataset, ItemSet
from tuneddml.data.files import FileItems, check_images
from tuneddml.data.splits import class_halves, remap_labels
from tuneddml.errors import ConfigError

SPLIT_VALUES = ("train", "test", "query", "gallery")


@DATASETS.register("parquet", ranges={"image_size": "[8, 1024]", "split_seed": "[0, 4294967295]"}, runtime=RUNTIME)
def load_parquet(
    *,
    root: str | None = None,
    image_size: int = 224,
    path: str | None = None,
    label_column: str = "label",
    image_column: str | None = None,
    vector_column: str | None = None,
    split_column: str | None = None,
    split_seed: int = 0,
    verify: bool = True,
    augmentation: Literal["natural", "glyph", "none"] = "natural",
) -> Dataset:
    """A Parquet table of (label, image bytes) or (label, feature vector) rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = _source(root, path)
    try:
        schema = pq.read_schema(source) if source.is_file() else pq.ParquetDataset(source).schema
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise ConfigError("dataset.path", str(source), f"a readable Parquet file or folder ({exc})") from None
    names = list(schema.names)
    for field, column in (
        ("label_column", label_column),
        ("image_column", image_column),
        ("vector_column", vector_column),
        ("split_column", split_column),
    ):
        if column is not None and column not in names:
            raise ConfigError(f"dataset.{field}", column, f"a column of {source.name}: {', '.join(names)}")
    if image_column is not None and vector_column is not None:
        raise ConfigError(
            "dataset.vector_column", vector_column, "unset when image_column is set (one or the other)"
        )
    if image_column is None and vector_column is None:
        image_column, vector_column = _guess_column(schema, source, exclude={label_column, split_column})
    content = image_column or vector_column
    assert content is not None
    wanted = [c for c in (label_column, content, split_column) if c is not None]
    try:
        table = pq.read_table(source, columns=wanted)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise ConfigError("dataset.path", str(source), f"a readable Parquet file or folder ({exc})") from None
    labels_raw = _column(table, label_column, "label_column")
    labels = remap_labels(
        np.asarray(labels_raw, dtype=object).astype(str) if _is_text(labels_raw) else labels_raw
    )
    parts = _parts(table, labels, split_column, split_seed)
    made: dict[str, ItemSet] = {}
    if image_column is not None:
        blobs = _image_cells(table, image_column)
        if verify:
            check_images(blobs, root=source, layout="a Parquet table of images", field="dataset.image_column")
        for part, index in parts.items():
            cells = [blobs[i] for i in index]
            made[part] = FileItems(
                cells, remap_labels(labels[index]), image_size, field="dataset.image_column"
            )
    else:
        matrix = _vectors(table, vector_column)  # type: ignore[arg-type]
        for part, index in parts.items():
            made[part] = ArrayItems(matrix[index], remap_labels(labels[index]))
        augmentation = "none"
    if "gallery" in parts:  # queries and gallery share one label space
        both = remap_labels(np.concatenate([labels[parts["test"]], labels[parts["gallery"]]]))
        made["test"].labels = both[: len(parts["test"])]
        made["gallery"].labels = both[len(parts["test"]) :]
    info: dict[str, object] = {
        "path": str(source),
        "rows": table.num_rows,
        "content": f"image bytes in {image_column!r}" if image_column else f"vectors in {vector_column!r}",
        **{f"num_{part}_items": len(index) for part, index in parts.items()},
        **{f"num_{part}_classes": len(np.unique(labels[index])) for part, index in parts.items()},
    }
    return Dataset(
        name="parquet",
        train=made["train"],
        test=made["test"],
        test_gallery=made.get("gallery"),
        augmentation=augmentation,
        info=info,
    )


def _source(root: str | None, path: str | None) -> Path:
    if not path and not root:
        raise ConfigError("dataset.path", path, "a Parquet file or folder (or set data_root to one)")
    source = Path(path).expanduser() if path else Path(str(root)).expanduser()
    if path and root and not source.is_absolute():
        source = Path(root).expanduser() / source
    if not source.exists():
        raise ConfigError(
            "dataset.path" if path else "data_root", str(source), "an existing Parquet file or folder"
        )
    return source


def _guess_column(schema: Any, source: Path, exclude: set[str | None]) -> tuple[str | None, str | None]:
    images = [f.name for f in schema if f.name not in exclude and _is_image_type(f.type)]
    vectors = [f.name for f in schema if f.name not in exclude and _is_vector_type(f.type)]
    if len(images) + len(vectors) != 1:
        found = ", ".join(images + vectors) or "none"
        raise ConfigError(
            "dataset.image_column",
            None,
            f"the name of the image or vector column of {source.name} (candidates: {found})",
        )
    return (images[0], None) if images else (None, vectors[0])


def _is_image_type(t: Any) -> bool:
    import pyarrow.types as pt

    if pt.is_binary(t) or pt.is_large_binary(t):
        return True
    return pt.is_struct(t) and t.get_field_index("bytes") >= 0


def _is_vector_type(t: Any) -> bool:
    import pyarrow.types as pt

    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        return pt.is_floating(t.value_type) or pt.is_integer(t.value_type)
    return False


def _column(table: Any, name: str, field: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise ConfigError(f"dataset.{field}", name, "a column without missing values")
    return column.to_numpy()


def _is_text(values: np.ndarray) -> bool:
    return values.dtype.kind in "OUS"


def _image_cells(table: Any, name: str) -> list[bytes]:
    import pyarrow.types as pt

    column = table.column(name).combine_chunks()
    if pt.is_struct(column.type):
        column = column.field("bytes")
    if not _is_image_type(column.type) or column.null_count:
        raise ConfigError(
            "dataset.image_column", name, "a column of encoded image bytes without missing values"
        )
    return column.to_pylist()


def _vectors(table: Any, name: str) -> np.ndarray:
    import pyarrow.compute as pc

    column = table.column(name).combine_chunks()
    if not _is_vector_type(column.type) or column.null_count:
        raise ConfigError("dataset.vector_column", name, "a column of numeric lists without missing values")
    lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))
    if len(lengths) == 0 or lengths.min() != lengths.max() or lengths[0] == 0:
        raise ConfigError("dataset.vector_column", name, "vectors that all have the same, non-zero length")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isfinite(values).all():
        raise ConfigError("dataset.vector_column", name, "finite numbers (found NaN or inf)")
    return values.reshape(len(lengths), int(lengths[0]))


def _parts(table: Any, labels: np.ndarray, split_column: str | None, seed: int) -> dict[str, np.ndarray]:
    if split_column is None:
        train_classes, _ = class_halves(int(labels.max()) + 1, seed)
        is_train = np.isin(labels, train_classes)
        parts = {"train": np.flatnonzero(is_train), "test": np.flatnonzero(~is_train)}
    else:
        values = np.asarray(_column(table, split_column, "split_column"), dtype=object).astype(str)
        bad = sorted(set(values) - set(SPLIT_VALUES))
        if bad:
            raise ConfigError("dataset.split_column", bad[0], SPLIT_VALUES)
        if "test" in values and "query" in values:
            raise ConfigError("dataset.split_column", "test", "either test, or query and gallery (not both)")
        parts = {part: np.flatnonzero(values == part) for part in SPLIT_VALUES if (values == part).any()}
        if "query" in parts:
            parts["test"] = parts.pop("query")
    for part in ("train", "test"):
        if len(parts.get(part, ())) == 0:
            raise ConfigError(
                "dataset.split_column" if split_column else "dataset.label_column",
                split_column or "label",
                f"rows of at least 2 classes, some for {part}",
            )
    return parts
