"""Backbones trained from scratch: a small CNN that trains on a CPU in minutes and an MLP for
feature vectors. They take their inputs as they come (no normalisation: ``mean``, ``std`` and
``input_size`` are None); the pretrained ones are in :mod:`~tuneddml.models.timm_backbone` and
:mod:`~tuneddml.models.hf_backbone`."""

from __future__ import annotations

import torch
from torch import nn

from tuneddml.errors import ConfigError
from tuneddml.models.embedder import BACKBONES


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@BACKBONES.register("small_cnn", ranges={"width": "[4, 512]", "depth": "[1, 5]"}, runtime=("item_shape",))
class SmallCNN(nn.Module):
    """A VGG-style CNN: ``depth`` stages of two 3x3 conv-BN-ReLU and a 2x2 max-pool, channels
    doubling from ``width``, then global average pooling. Sized for 32x32 glyphs on a CPU."""

    mean = std = input_size = None  # inputs as they come

    def __init__(self, *, item_shape: tuple[int, ...], width: int = 16, depth: int = 3) -> None:
        super().__init__()
        if len(item_shape) != 3:
            raise ConfigError("backbone", "small_cnn", "an image backbone for image data; 'mlp' for vectors")
        channels = item_shape[0]
        layers: list[nn.Module] = []
        for stage in range(depth):
            c_out = width * 2**stage
            layers += _conv_block(channels, c_out) + _conv_block(c_out, c_out) + [nn.MaxPool2d(2)]
            channels = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@BACKBONES.register("mlp", ranges={"hidden": "[1, 65536]", "layers": "[0, 8]"}, runtime=("item_shape",))
class MLP(nn.Module):
    """For feature-vector data (e.g. a Parquet table of precomputed features): ``layers`` hidden
    layers of ``hidden`` units with ReLU (0 layers: the identity, so the head is a linear map)."""

    mean = std = input_size = None

    def __init__(self, *, item_shape: tuple[int, ...], hidden: int = 512, layers: int = 1) -> None:
        super().__init__()
        if len(item_shape) != 1:
            raise ConfigError("backbone", "mlp", "'mlp' for vector data; an image backbone such as small_cnn")
        width = item_shape[0]
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.net = nn.Sequential(*blocks)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
