"""Training augmentation of loaded batches, and decoding images from files (torch + Pillow only).

:func:`augment` works on a whole float batch ``[B, C, H, W]`` at once: each sample gets its own
random affine map, applied with ``F.affine_grid`` / ``F.grid_sample`` (bilinear). The map takes
output coordinates ``u`` in ``[-1, 1]^2`` to input coordinates ``A u + t``.

- ``"glyph"``: a light random affine map: rotation in +-10 degrees, scale in [0.9, 1.1], shift up
  to 10 % of the half-width on each axis; outside the image is black (the glyphs' background).
  No flips: a mirrored character is often another character (b/d, p/q).
- ``"natural"``: random resized crop (area 16-100 % of the image, aspect ratio 3/4-4/3, the usual
  DML recipe) plus a horizontal flip with probability 1/2.
- ``"none"``: the batch unchanged.

The views of a file-backed image (:class:`tuneddml.data.files.FileItems`), made per image with
Pillow (the usual DML recipe, at ``resize = resize_size(S) = round(S * 256 / 224)`` for the trial's
``image_size`` S):

- evaluation (:func:`eval_view`): decode (JPEG: at a reduced DCT scale still at least ``resize``,
  Pillow's ``draft``), resize the shorter side to ``resize``, centre crop ``S x S``;
- training (:func:`train_view`): the same decode and resize, then a random resized crop
  (:func:`crop_box`: area a fraction in ``CROP_AREA`` of the resized image's, aspect ratio in
  ``CROP_RATIO``, in pixels) scaled to ``S x S``, and a horizontal flip with probability 1/2. Its
  five random numbers come from the caller's generator, so a sample's crop does not depend on
  which process decodes it (see :mod:`tuneddml.data.loader`). This replaces ``"natural"``
  :func:`augment` for file-backed sets; in-memory sets keep :func:`augment` on batches.

Both give uint8 ``[S, S, 3]`` arrays; :func:`decode_image` is the evaluation view as floats.
"""

from __future__ import annotations

import io
import math
import os
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tuneddml.errors import ConfigError

AUGMENTATIONS = ("glyph", "natural", "none")
GLYPH_ROTATION_DEG = 10.0
GLYPH_SCALE = (0.9, 1.1)
GLYPH_SHIFT = 0.1
CROP_AREA = (0.16, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def augment(
    batch: torch.Tensor, kind: Literal["glyph", "natural", "none"], generator: torch.Generator
) -> torch.Tensor:
    """Randomly transformed copy of ``batch`` (``[B, C, H, W]`` floats); ``generator`` makes it repeatable."""
    if kind not in AUGMENTATIONS:
        raise ConfigError("augmentation", kind, AUGMENTATIONS)
    if batch.dim() != 4:
        raise ValueError(f"augment expects a [B, C, H, W] batch, got shape {tuple(batch.shape)}")
    if kind == "none" or len(batch) == 0:
        return batch
    theta = _glyph_maps(len(batch), generator) if kind == "glyph" else _crop_maps(len(batch), generator)
    theta = theta.to(device=batch.device, dtype=batch.dtype if batch.is_floating_point() else torch.float32)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    padding = "zeros" if kind == "glyph" else "border"
    return F.grid_sample(
        batch.to(theta.dtype), grid, mode="bilinear", padding_mode=padding, align_corners=False
    )


def _glyph_maps(n: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    angle = (2 * u[:, 0] - 1) * math.radians(GLYPH_ROTATION_DEG)
    scale = GLYPH_SCALE[0] + (GLYPH_SCALE[1] - GLYPH_SCALE[0]) * u[:, 1]
    shift = (2 * u[:, 2:] - 1) * GLYPH_SHIFT
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # sampling grid: inverse zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    return theta.float()


def _crop_maps(n: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    area = CROP_AREA[0] + (CROP_AREA[1] - CROP_AREA[0]) * u[:, 0]
    log_ratio = math.log(CROP_RATIO[0]) + (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])) * u[:, 1]
    ratio = torch.exp(log_ratio)
    # width and height of the crop as fractions of the image's, clipped to the image
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - width)
    cy = (2 * u[:, 3] - 1) * (1 - height)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(torch.float64)
    zero = torch.zeros_like(width)
    theta = torch.stack([torch.stack([width * flip, zero, cx], 1), torch.stack([zero, height, cy], 1)], 1)
    return theta.float()


#: the side the shorter side of a file-backed image is resized to, per side of the crop
RESIZE_RATIO = 256 / 224


def resize_size(image_size: int) -> int:
    """The shorter side an image is resized to before its ``image_size`` crop (256 for 224)."""
    return round(image_size * RESIZE_RATIO)


def open_rgb(source: str | os.PathLike[str] | bytes, side: int) -> Image.Image:
    """The image as RGB, decoded (JPEG: at the smallest DCT scale whose sides are still >= ``side``).

    Raises ``OSError`` (or ``SyntaxError``/``ValueError`` from Pillow) on an unreadable image.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.draft("RGB", (side, side))
        return image.convert("RGB")


def shorter_side_to(image: Image.Image, side: int) -> Image.Image:
    """``image`` resized (bilinear) so that its shorter side is ``side``, the aspect ratio kept
    (the longer side rounded to the nearest pixel)."""
    width, height = image.size
    if width <= height:
        size = (side, max(1, round(height * side / width)))
    else:
        size = (max(1, round(width * side / height)), side)
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def eval_view(source: str | os.PathLike[str] | bytes, size: int, side: int | None = None) -> np.ndarray:
    """uint8 ``[size, size, 3]``: shorter side resized to ``side`` (default ``resize_size(size)``),
    centre crop (left ``(W - size) // 2``, top ``(H - size) // 2`` of the resized ``W x H``)."""
    side = side or resize_size(size)
    image = shorter_side_to(open_rgb(source, side), side)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def crop_box(width: int, height: int, u: np.ndarray) -> tuple[float, float, float, float]:
    """The random resized crop of a ``width x height`` image from four uniforms in [0, 1):
    ``(left, top, right, bottom)`` in pixels. Area ``a * W * H`` with ``a`` in ``CROP_AREA``
    (``u[0]``), aspect ratio ``r`` log-uniform in ``CROP_RATIO`` (``u[1]``): width
    ``min(W, sqrt(a W H r))``, height ``min(H, sqrt(a W H / r))``; position ``u[2]``, ``u[3]``."""
    area = (CROP_AREA[0] + (CROP_AREA[1] - CROP_AREA[0]) * u[0]) * width * height
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = math.exp(low + (high - low) * u[1])
    w = min(float(width), math.sqrt(area * ratio))
    h = min(float(height), math.sqrt(area / ratio))
    left, top = (width - w) * u[2], (height - h) * u[3]
    return (left, top, left + w, top + h)


def train_view(
    source: str | os.PathLike[str] | bytes, size: int, rng: np.random.Generator, side: int | None = None
) -> np.ndarray:
    """uint8 ``[size, size, 3]``: resized like :func:`eval_view`, then a random resized crop
    (:func:`crop_box`, from ``rng.random(5)[:4]``) scaled to ``size`` and flipped left-right when
    the fifth number is below 1/2."""
    side = side or resize_size(size)
    image = shorter_side_to(open_rgb(source, side), side)
    u = rng.random(5)
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=crop_box(*image.size, u))
    if u[4] < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def decode_image(source: str | os.PathLike[str] | bytes, size: int) -> torch.Tensor:
    """The evaluation view (:func:`eval_view`) as a ``[3, size, size]`` float tensor in [0, 1].

    Raises ``OSError`` (or ``SyntaxError``/``ValueError`` from Pillow) on an unreadable image.
    """
    return torch.from_numpy(eval_view(source, size).copy()).permute(2, 0, 1).float().div_(255.0)
