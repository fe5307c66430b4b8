"""The backbone contract, over the registry: a backbone built for its kind of items (images or
vectors) returns ``[B, out_features]``; given the other kind it refuses with a ConfigError. Every
backbone says how it preprocesses (``mean``, ``std``, ``input_size``; None: inputs as they come)."""

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
            any(importlib.util.find_spec(m) is None for m in BACKBONES.get(n).requires),
            reason=f"{', '.join(BACKBONES.get(n).requires)} not installed",
        ))
        for n in BACKBONES.names()
    ]


def _params(name, folder):
    """{} but for hf, whose default names a hub model: a tiny local one instead; and saved, which
    needs a file: a small_cnn's weights with their architecture, as a search saves them."""
    if name == "saved":
        import json

        folder.mkdir(parents=True)
        model = build_model("small_cnn", {"width": 4, "depth": 1}, item_shape=SHAPES["image"], embedding_size=8)
        torch.save(model.state_dict(), folder / "t.pt")
        (folder / "t.json").write_text(json.dumps({"backbone": "small_cnn", "backbone.width": 4, "backbone.depth": 1}))
        return {"path": str(folder / "t.pt")}
    if name != "hf":
        return {}
    import transformers

    config = transformers.Dinov2Config(
        hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    transformers.Dinov2Model(config).save_pretrained(folder)
    return {"model": str(folder)}


@pytest.mark.parametrize("name", _names())
def test_every_backbone_embeds_its_kind_of_items(name, tmp_path):
    built = {}
    params = _params(name, tmp_path / "model")
    for kind, shape in SHAPES.items():
        try:
            built[kind] = BACKBONES.build(name, params, item_shape=shape)
        except ConfigError as err:
            assert err.field.startswith("backbone")
    assert len(built) == 1, f"{name} should take exactly one kind of item"
    ((kind, net),) = built.items()
    net.eval()
    x = torch.rand(3, *SHAPES[kind])
    assert net(x).shape == (3, int(net.out_features))
    for attr, kinds in (("mean", tuple), ("std", tuple), ("input_size", int)):
        assert getattr(net, attr) is None or isinstance(getattr(net, attr), kinds)
    model = build_model(name, params, item_shape=SHAPES[kind], embedding_size=8).eval()
    assert model(x).shape == (3, 8)
