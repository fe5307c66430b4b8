"""A dataset loaded for a check before a search starts, as cheaply as it can be.

:func:`probe_dataset` builds what a trial would build, without the costly part: a loader that
checks every image file (``verify``) reads only its index and the check is left to
:func:`check_sample`, which decodes a few images; a glyph dataset whose render cache is not there
yet (seconds to build) is not built at all (``None``). The trial itself checks everything again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tuneddml.data import DATASETS
from tuneddml.data.base import Dataset, ItemSet
from tuneddml.data.fonts import default_cache_dir

#: glyph datasets that take seconds to render when not cached (glyphs-tiny renders in under one)
_SLOW_RENDERS = ("glyphs", "glyphs-xl")
SAMPLE = 8  # images decoded per part
LARGE_TABLE = 256 * 2**20  # bytes of Parquet above which the check does not read the table


def probe_dataset(name: str, params: Mapping[str, Any], *, root: str | None, image_size: int) -> Dataset | None:
    """The dataset a trial with these settings loads, or None where loading it is not cheap."""
    if name in _SLOW_RENDERS:
        cache = Path(root).expanduser() if root else default_cache_dir()
        if not any(cache.glob(f"{name}-*.npz")):
            return None
    if name == "parquet" and _table_bytes(params, root) > LARGE_TABLE:
        return None  # a table of encoded images is read whole: the trial reads it, not the check
    entry = DATASETS.available(name, "dataset")
    checked = dict(params)
    if entry.param("verify") is not None and checked.get("verify", True):
        checked["verify"] = False  # check_sample decodes a sample instead of opening every file
    return DATASETS.build(name, checked, field="dataset", root=root, image_size=image_size)


def check_sample(items: ItemSet, count: int = SAMPLE) -> None:
    """Decode ``count`` items spread over ``items`` (first, last, between): a ConfigError naming
    the file if one is missing or unreadable."""
    n = len(items)
    if n:
        items.load(np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64)))


def _table_bytes(params: Mapping[str, Any], root: str | None) -> int:
    """The size on disk of a parquet dataset's file or folder (0 where the path is not there: the
    loader then says what is wrong)."""
    path, base = params.get("path"), Path(str(root)).expanduser() if root else None
    source = Path(str(path)).expanduser() if path else base
    if source is None:
        return 0
    if path and base is not None and not source.is_absolute():
        source = base / source
    if source.is_file():
        return source.stat().st_size
    return sum(p.stat().st_size for p in source.rglob("*.parquet")) if source.is_dir() else 0
