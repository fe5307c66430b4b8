from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tuneddml.data.transforms import augment, decode_image
from tuneddml.errors import ConfigError


def _glyph_batch() -> torch.Tensor:
    x = torch.zeros(6, 1, 32, 32)
    x[:, :, 10:22, 14:18] = 1.0  # a bar in the middle, like a glyph's stroke
    x[3, :, 8:12, 8:24] = 1.0
    return x


def _natural_batch() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(5, 3, 24, 24, generator=gen)


@pytest.mark.parametrize("kind", ["glyph", "natural"])
def test_shape_dtype_and_range_are_kept(kind):
    x = _glyph_batch() if kind == "glyph" else _natural_batch()
    y = augment(x, kind, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6
    assert not torch.equal(y, x)


@pytest.mark.parametrize("kind", ["glyph", "natural"])
def test_same_seed_same_result(kind):
    x = _glyph_batch() if kind == "glyph" else _natural_batch()
    a = augment(x, kind, torch.Generator().manual_seed(7))
    b = augment(x, kind, torch.Generator().manual_seed(7))
    c = augment(x, kind, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_each_sample_gets_its_own_transform():
    x = _glyph_batch()[:1].repeat(4, 1, 1, 1)
    y = augment(x, "glyph", torch.Generator().manual_seed(0))
    assert not torch.equal(y[0], y[1]) and not torch.equal(y[2], y[3])


def test_none_is_the_identity():
    x = _natural_batch()
    assert augment(x, "none", torch.Generator().manual_seed(0)) is x


def test_glyph_augmentation_is_light_and_keeps_a_black_background():
    x = _glyph_batch()
    y = augment(x, "glyph", torch.Generator().manual_seed(3))
    ink_ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ((ink_ratio > 0.7) & (ink_ratio < 1.3)).all()  # scale within +-10 %: area within about +-21 %
    assert float(y[:, :, :3, :].abs().max()) == 0.0  # the top rows stay background
    # the ink's centre moves by at most a few pixels
    cols = torch.arange(32.0)
    cx_x = (x.sum((1, 2)) * cols).sum(1) / x.sum((1, 2, 3))
    cx_y = (y.sum((1, 2)) * cols).sum(1) / y.sum((1, 2, 3))
    assert float((cx_x - cx_y).abs().max()) < 4.0


def test_natural_crop_of_a_constant_image_is_constant_and_flips_happen():
    const = torch.full((8, 3, 16, 16), 0.25)
    assert torch.allclose(augment(const, "natural", torch.Generator().manual_seed(0)), const)
    ramp = torch.linspace(0, 1, 16).expand(64, 3, 16, 16).contiguous()  # brighter to the right
    y = augment(ramp, "natural", torch.Generator().manual_seed(0))
    slope = y[:, 0, 8, -1] - y[:, 0, 8, 0]
    flipped = (slope < 0).float().mean()
    assert 0.25 < float(flipped) < 0.75


def test_bad_kind_and_bad_shape():
    with pytest.raises(ConfigError) as err:
        augment(_natural_batch(), "mirror", torch.Generator())  # type: ignore[arg-type]
    assert err.value.field == "augmentation"
    with pytest.raises(ValueError):
        augment(torch.zeros(3, 8, 8), "glyph", torch.Generator())


def test_decode_resizes_the_shorter_side_and_centre_crops(tmp_path):
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)  # 60 wide, 20 high
    pixels[:, :20] = (255, 0, 0)  # left third red
    pixels[:, 20:40] = (0, 255, 0)  # middle third green
    pixels[:, 40:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 10)
    assert out.shape == (3, 10, 10) and out.dtype == torch.float32
    # only the green centre remains (the filter blends in a little of its neighbours at the edges)
    assert torch.allclose(out[1, :, 1:-1], torch.ones(10, 8), atol=0.02) and float(out[1].min()) > 0.8
    assert float(out[0, :, 1:-1].max()) < 0.02 and float(out[2, :, 1:-1].max()) < 0.02


def test_decode_makes_grayscale_rgb_and_reads_bytes():
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40), 128, dtype=np.uint8)).save(buffer, "JPEG")
    out = decode_image(buffer.getvalue(), 16)
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, 128 / 255), atol=0.03)
    with pytest.raises(OSError):
        decode_image(b"not an image", 16)
