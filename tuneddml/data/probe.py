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


def probe_dataset(name: str, params: Mapping[str, Any], *, root: str | None, image_size: int) -> Dataset | None:
    """The dataset a trial with these settings loads, or None where loading it is not cheap."""
    if name in _SLOW_RENDERS:
        cache = Path(root).expanduser() if root else default_cache_dir()
        if not any(cache.glob(f"{name}-*.npz")):
            return None
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
