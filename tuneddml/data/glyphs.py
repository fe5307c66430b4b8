"""The built-in datasets: Unicode characters rendered from installed fonts (no download needed).

A class is a character (homoglyphs merged), an image is that character in one font: grayscale,
white ink on black, ``[N, 1, S, S]`` uint8 (see :mod:`tuneddml.data.glyph_render` for the
rendering and the merging, :mod:`tuneddml.data.fonts` for the fonts). The classes are split 50/50
by a seeded permutation into class-disjoint train and test parts.

- ``glyphs``: the TrueType fonts matplotlib ships (DejaVu, STIXGeneral; Computer Modern for
  A-Z, a-z, 0-9 only), characters in at least ``min_fonts`` of them: about 2,260 classes.
- ``glyphs-tiny``: A-Z, a-z, 0-9 in the same fonts (62 classes, 22 fonts), for tests.
- ``glyphs-xl``: every TrueType/OpenType font (collections included) found in matplotlib and in
  ``font_dirs`` (``/usr/share/fonts`` by default); its size depends on what is installed. With
  ``matplotlib_fonts=false`` only ``font_dirs``: glyphs in fonts ``glyphs`` never saw.

Rendering takes seconds; the result is cached as an ``.npz`` in ``root`` (default
``$TUNEDDML_CACHE`` or ``~/.cache/tuneddml``), named by a hash of the font files' contents and
the settings, and written through a temporary file and a rename, so a killed process never
leaves half a cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from tuneddml.data import DATASETS, RUNTIME
from tuneddml.data.base import ArrayItems, Dataset
from tuneddml.data.fonts import (
    ALNUM,
    SYSTEM_FONT_DIR,
    default_cache_dir,
    font_files,
    matplotlib_font_dir,
    read_faces,
)
from tuneddml.data.glyph_render import (
    ANALYSIS_SIZE,
    BASELINE_FRACTION,
    EM_FRACTION,
    MERGE_THRESHOLD,
    GlyphSet,
    build_glyph_set,
)
from tuneddml.data.splits import class_halves
from tuneddml.errors import ConfigError

#: bump when the rendering or merging changes, so old caches are not reused
PIPELINE_VERSION = 1
_RANGES = {"image_size": "[8, 512]", "min_fonts": "[1, 10000]", "split_seed": "[0, 4294967295]"}


@DATASETS.register("glyphs", ranges=_RANGES, runtime=RUNTIME)
def load_glyphs(
    *, root: str | None = None, image_size: int = 32, min_fonts: int = 10, split_seed: int = 0
) -> Dataset:
    """Unicode characters in matplotlib's fonts, one class per character (about 2,260 classes)."""
    return _load("glyphs", [matplotlib_font_dir()], None, root, image_size, min_fonts, split_seed)


@DATASETS.register("glyphs-tiny", ranges=_RANGES, runtime=RUNTIME)
def load_glyphs_tiny(
    *, root: str | None = None, image_size: int = 32, min_fonts: int = 10, split_seed: int = 0
) -> Dataset:
    """A-Z, a-z, 0-9 in matplotlib's fonts: 62 classes of 22 images; renders in well under a second."""
    return _load("glyphs-tiny", [matplotlib_font_dir()], ALNUM, root, image_size, min_fonts, split_seed)


@DATASETS.register("glyphs-xl", ranges=_RANGES, runtime=RUNTIME)
def load_glyphs_xl(
    *,
    root: str | None = None,
    image_size: int = 32,
    min_fonts: int = 10,
    split_seed: int = 0,
    font_dirs: str = SYSTEM_FONT_DIR,
    matplotlib_fonts: bool = True,
) -> Dataset:
    """Every font in ``font_dirs`` (folders separated by ``os.pathsep``) and, unless
    ``matplotlib_fonts`` is false, in matplotlib: with it false, a glyph dataset that shares no font
    with ``glyphs`` (a second dataset to check a default or a searcher on)."""
    own = [Path(d) for d in font_dirs.split(os.pathsep) if d]
    dirs = [matplotlib_font_dir(), *own] if matplotlib_fonts else own
    return _load("glyphs-xl", dirs, None, root, image_size, min_fonts, split_seed)


def _load(
    variant: str,
    dirs: list[Path],
    chars: frozenset[int] | None,
    root: str | None,
    image_size: int,
    min_fonts: int,
    split_seed: int,
) -> Dataset:
    start = time.perf_counter()
    cache_dir = Path(root).expanduser() if root else default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError("data_root", str(cache_dir), "a folder for the glyph render cache")
    files = font_files(dirs)
    settings = {
        "variant": variant,
        "version": PIPELINE_VERSION,
        "image_size": image_size,
        "min_fonts": min_fonts,
        "chars": sorted(chars) if chars is not None else None,
        "analysis": [ANALYSIS_SIZE, EM_FRACTION, BASELINE_FRACTION, MERGE_THRESHOLD],
        "renderer": [Image.__version__, ImageFont.core.freetype2_version],
    }
    path = cache_dir / f"{variant}-{_cache_key(files, settings)[:20]}.npz"
    glyphs, meta = _read_cache(path)
    from_cache = glyphs is not None
    if glyphs is None:
        t0 = time.perf_counter()
        faces = read_faces(files, restrict=chars)
        glyphs = build_glyph_set(faces, image_size=image_size, min_fonts=min_fonts, chars=chars)
        meta = {"render_seconds": round(time.perf_counter() - t0, 3), "settings": settings}
        if len(glyphs.classes) >= 4:
            _write_cache(path, glyphs, meta)
    if len(glyphs.classes) < 4:
        raise ConfigError(
            "dataset.min_fonts",
            min_fonts,
            f"a value that leaves at least 4 classes ({variant} found {len(glyphs.fonts)} fonts "
            f"and {len(glyphs.classes)} classes)",
        )
    return _split(variant, glyphs, split_seed, meta, path, from_cache, time.perf_counter() - start)


def _split(
    variant: str,
    glyphs: GlyphSet,
    split_seed: int,
    meta: dict[str, object],
    path: Path,
    from_cache: bool,
    seconds: float,
) -> Dataset:
    num_classes = len(glyphs.classes)
    parts = class_halves(num_classes, split_seed)
    items = []
    for classes in parts:
        new_label = np.full(num_classes, -1, dtype=np.int64)
        new_label[classes] = np.arange(len(classes))
        index = np.flatnonzero(new_label[glyphs.labels] >= 0)
        items.append(ArrayItems(glyphs.images[index], new_label[glyphs.labels[index]]))
    info: dict[str, object] = {
        "num_classes": num_classes,
        "num_train_classes": len(parts[0]),
        "num_test_classes": len(parts[1]),
        "num_images": len(glyphs.labels),
        "num_fonts": len(glyphs.fonts),
        "fonts": list(glyphs.fonts),
        "homoglyph_pairs_merged": glyphs.merged_pairs,
        "render_seconds": meta.get("render_seconds"),
        "from_cache": from_cache,
        "load_seconds": round(seconds, 3),
        "cache": str(path) if path.exists() else None,
        "cache_bytes": path.stat().st_size if path.exists() else None,
        "train_classes": [glyphs.classes[c] for c in parts[0]],
        "test_classes": [glyphs.classes[c] for c in parts[1]],
    }
    return Dataset(name=variant, train=items[0], test=items[1], augmentation="glyph", info=info)


def _cache_key(files: list[Path], settings: dict[str, object]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for file in files:
        digest.update(file.name.encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _read_cache(path: Path) -> tuple[GlyphSet | None, dict[str, object]]:
    if not path.is_file():
        return None, {}
    try:
        with np.load(path, allow_pickle=False) as data:
            glyphs = GlyphSet(
                images=data["images"],
                labels=data["labels"].astype(np.int64),
                font_index=data["font_index"],
                codepoints=data["codepoints"],
                classes=[str(c) for c in data["classes"]],
                fonts=[str(f) for f in data["fonts"]],
                merged_pairs=int(data["merged_pairs"]),
            )
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None, {}  # unreadable (e.g. written by another version): render again
    return glyphs, meta


def _write_cache(path: Path, glyphs: GlyphSet, meta: dict[str, object]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False
        ) as tmp:
            try:
                np.savez_compressed(
                    tmp,
                    images=glyphs.images,
                    labels=glyphs.labels,
                    font_index=glyphs.font_index,
                    codepoints=glyphs.codepoints,
                    classes=np.array(glyphs.classes, dtype=str),
                    fonts=np.array(glyphs.fonts, dtype=str),
                    merged_pairs=np.int64(glyphs.merged_pairs),
                    meta=np.array(json.dumps(meta)),
                )
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                os.unlink(tmp.name)
                raise
        os.chmod(tmp.name, 0o644)  # a temporary file is private; the cache may be shared
        os.replace(tmp.name, path)  # atomic: readers see the old state or the whole new file
    except OSError as exc:
        warnings.warn(
            f"glyph cache not written to {path.parent} ({exc}); rendering again next time", stacklevel=3
        )
