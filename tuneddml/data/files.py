"""Images read from disk (or from encoded bytes) at load time, and checks of a dataset's files.

:class:`FileItems` keeps only the paths (or the encoded bytes, for images stored in a table) and
decodes an image when it is read: :meth:`FileItems.view` gives one image's evaluation or training
view (:mod:`tuneddml.data.transforms`), :meth:`FileItems.load` a batch of evaluation views (the
trainer reads them through :mod:`tuneddml.data.loader`, in worker processes). Loaders call
:func:`check_images` first, so that a missing or unreadable image stops the trial with a
:class:`~tuneddml.errors.ConfigError` naming the file before any training starts.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from tuneddml.data.transforms import eval_view, train_view
from tuneddml.errors import ConfigError

Source = str | os.PathLike[str] | bytes
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class FileItems:
    """Images given by path (or encoded bytes), decoded when read; ``S`` = ``image_size``.

    ``field`` names the configuration field blamed if an image turns out unreadable at load time.
    """

    kind: Literal["image", "vector"] = "image"

    def __init__(
        self,
        paths: Sequence[Source],
        labels: np.ndarray,
        image_size: int,
        *,
        field: str = "data_root",
        resize: int | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} images but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = image_size
        self.resize = resize  # the shorter side before the crop; None: resize_size(image_size)
        self.field = field

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def view(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Item ``index`` as uint8 ``[S, S, 3]``: the evaluation view, or with ``rng`` the training
        view (random resized crop and flip). An unreadable image is a ConfigError naming it."""
        source = self.paths[int(index)]
        try:
            if rng is None:
                return eval_view(source, self.image_size, self.resize)
            return train_view(source, self.image_size, rng, self.resize)
        except _DECODE_ERRORS as exc:
            raise ConfigError(
                self.field, _describe(source, int(index)), f"a readable image ({_reason(exc, source)})"
            ) from None

    def load(self, indices: np.ndarray) -> torch.Tensor:
        """Evaluation views, RGB ``[B, 3, S, S]`` floats in [0, 1]."""
        views = [self.view(int(i)) for i in np.asarray(indices).reshape(-1)]
        if not views:
            return torch.empty(0, *self.item_shape)
        return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float().div_(255.0)

    def subset(self, indices: np.ndarray) -> FileItems:
        indices = np.asarray(indices).reshape(-1)
        return FileItems(
            [self.paths[int(i)] for i in indices],
            self.labels[indices],
            self.image_size,
            field=self.field,
            resize=self.resize,
        )

    def resized(self, side: int | None) -> FileItems:
        """These items resized to ``side`` before the crop (None: ``resize_size(image_size)``)."""
        return FileItems(self.paths, self.labels, self.image_size, field=self.field, resize=side)


def _describe(source: Source, index: int) -> str:
    return f"image bytes of row {index}" if isinstance(source, bytes) else str(source)


def _reason(exc: Exception, source: Source) -> str:
    """Pillow's message without the path it repeats (the error names the file already)."""
    text = str(exc)
    if not isinstance(source, bytes):
        text = text.replace(f" '{source}'", "").replace(str(source), "").strip()
    return text or type(exc).__name__


def _verify(source: Source) -> str | None:
    """None if Pillow can parse the image's header (and, for PNG, its chunks), else the reason."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.verify()
    except FileNotFoundError:
        return "missing"
    except _DECODE_ERRORS as exc:
        return f"unreadable ({_reason(exc, source)})"
    return None


def check_images(
    sources: Sequence[Source], *, root: str | Path, layout: str, field: str = "data_root"
) -> None:
    """Fail before training if an image is missing or unreadable.

    A missing file gives ``ConfigError(field, root, layout + "; missing image: <path>")`` (the folder
    is not in the layout); an unreadable one ``ConfigError(field, <the file>, "a readable image")``.
    Cheap per image (Pillow reads the header; ``verify`` checks PNG chunks without decoding), and
    run in threads since it is mostly waiting for the disk.
    """
    if not sources:
        return
    with ThreadPoolExecutor(max_workers=min(8, len(sources))) as pool:
        for i, problem in enumerate(pool.map(_verify, sources, chunksize=64)):
            if problem == "missing":
                raise ConfigError(field, str(root), f"{layout}; missing image: {sources[i]!s}")
            if problem is not None:
                raise ConfigError(field, _describe(sources[i], i), f"a readable image file; {problem}")


def require_dir(root: str | None, expected: str, field: str = "data_root") -> Path:
    """``root`` as a folder, or ``ConfigError(field, root, expected)`` if it is not one."""
    if root is None or not str(root).strip():
        raise ConfigError(field, root, expected)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(field, str(root), expected)
    return path


def require_file(path: Path, root: Path, expected: str, field: str = "data_root") -> Path:
    """``path`` if it is a file, else ``ConfigError`` naming the folder and the missing file."""
    if not path.is_file():
        raise ConfigError(field, str(root), f"{expected}; missing file: {path}")
    return path
