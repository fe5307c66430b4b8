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

:func:`decode_image` is the evaluation-time decode of file-backed sets: RGB, shorter side resized
to ``size``, centre crop ``size x size``, floats in [0, 1].
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


def decode_image(source: str | os.PathLike[str] | bytes, size: int) -> torch.Tensor:
    """``[3, size, size]`` float tensor in [0, 1]: RGB, shorter side resized, centre-cropped.

    Raises ``OSError`` (or ``SyntaxError``/``ValueError`` from Pillow) on an unreadable image.
    """
    opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    with opened as image:
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size
        image = image.convert("RGB")
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        image = image.resize(
            (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
        )
        array = np.asarray(image)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
