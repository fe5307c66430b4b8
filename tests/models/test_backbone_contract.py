"""The backbone contract, over the registry: a backbone built for its kind of items (images or
vectors) returns ``[B, out_features]``; given the other kind it refuses with a ConfigError."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.models import BACKBONES, build_model

SHAPES = {"image": (1, 32, 32), "vector": (20,)}


def _names():
    return [
        pytest.param(n, marks=pytest.mark.skipif(
            n == "timm" and importlib.util.find_spec("timm") is None, reason="timm is not installed"
        ))
        for n in BACKBONES.names()
    ]


@pytest.mark.parametrize("name", _names())
def test_every_backbone_embeds_its_kind_of_items(name):
    built = {}
    for kind, shape in SHAPES.items():
        try:
            built[kind] = BACKBONES.build(name, {}, item_shape=shape)
        except ConfigError as err:
            assert err.field.startswith("backbone")
    assert len(built) == 1, f"{name} should take exactly one kind of item"
    ((kind, net),) = built.items()
    net.eval()
    x = torch.rand(3, *SHAPES[kind])
    assert net(x).shape == (3, int(net.out_features))
    model = build_model(name, {}, item_shape=SHAPES[kind], embedding_size=8).eval()
    assert model(x).shape == (3, 8)
