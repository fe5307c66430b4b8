from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuneddml.data import DATASETS
from tuneddml.data.fonts import font_files, matplotlib_font_dir, read_faces


@pytest.fixture(scope="session")
def glyph_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One render cache for the whole session, so glyphs-tiny is rendered once."""
    return tmp_path_factory.mktemp("glyph-cache")


@pytest.fixture(scope="session")
def tiny_cold(glyph_cache: Path) -> tuple[object, float]:
    """glyphs-tiny rendered into the empty session cache, with the time it took."""
    start = time.perf_counter()
    dataset = DATASETS.build("glyphs-tiny", {}, root=str(glyph_cache))
    return dataset, time.perf_counter() - start


@pytest.fixture(scope="session")
def tiny(tiny_cold: tuple[object, float]) -> object:
    return tiny_cold[0]


@pytest.fixture(scope="session")
def mpl_faces() -> list:
    return read_faces(font_files([matplotlib_font_dir()]))


def _write_image(path: Path, seed: int = 0, size: tuple[int, int] = (24, 18), mode: str = "RGB") -> Path:
    """A small random image; the format follows the suffix (.jpg, .png, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = (rng.random((size[1], size[0], channels)) * 255).astype(np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    return _write_image
