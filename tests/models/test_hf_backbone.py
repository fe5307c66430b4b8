"""backbone=hf: tiny DINOv2, ViT, ResNet and CLIP models saved with save_pretrained, loaded from the
folder and from a Hugging Face cache laid out as huggingface_hub does, offline. The weights, the
pixel statistics and the pooling must be the saved model's; not cached offline is a quick error."""

from __future__ import annotations

import json
import time

import pytest
import torch

from tests.models.helpers import fill_cache, same_weights
from tuneddml.config import TrialConfig, split_backbone_params
from tuneddml.errors import ConfigError
from tuneddml.models import BACKBONES, build_model, check_backbone

transformers = pytest.importorskip("transformers")

MEAN, STD = [0.3, 0.4, 0.6], [0.15, 0.25, 0.35]
VIT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)


def _tiny(family: str):
    """A seeded tiny model of ``family`` and the class that loads it."""
    torch.manual_seed(0)
    t = transformers
    if family == "dinov2":
        return t.Dinov2Model(t.Dinov2Config(**VIT)), t.Dinov2Model
    if family == "vit":
        return t.ViTModel(t.ViTConfig(**VIT)), t.ViTModel
    if family == "resnet":
        config = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        return t.ResNetModel(config), t.ResNetModel
    text = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if family == "clip":  # a whole CLIP model: its vision tower is taken
        return t.CLIPModel(t.CLIPConfig(vision_config=VIT, text_config=text, projection_dim=16)), t.CLIPVisionModel
    return t.CLIPVisionModel(t.CLIPVisionConfig(**VIT)), t.CLIPVisionModel


def _save(model, folder, processor: dict | None = None):
    model.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def _reference(cls, folder):
    return cls.from_pretrained(str(folder), dtype=torch.float32).eval()


def _normalised(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _build(model, shape=(3, 32, 32), **params):
    return BACKBONES.build("hf", {"model": str(model), **params}, field="backbone", item_shape=shape).eval()


@pytest.mark.parametrize("family", ["dinov2", "vit", "resnet", "clip", "clip_vision"])
def test_a_saved_folder_brings_weights_and_preprocessing(hub, tmp_path, family):
    model, cls = _tiny(family)
    folder = _save(model, tmp_path / family, {"image_mean": MEAN, "image_std": STD, "size": {"height": 40, "width": 40}})
    config = TrialConfig.from_flat({"backbone": "hf", "backbone.model": str(folder)})
    embedder = build_model(config.backbone, split_backbone_params(config.backbone_params)[0], item_shape=(3, 32, 32), embedding_size=8).eval()
    net = embedder.backbone
    reference = _reference(cls, folder)
    same_weights(reference.state_dict(), net.net.state_dict(), skip=("pooler.",) if family == "vit" else ())
    assert net.mean == tuple(MEAN) and net.std == tuple(STD) and net.input_size == 40
    x = torch.rand(2, 3, 32, 32)
    kwargs = {"interpolate_pos_encoding": True} if family in ("vit", "clip", "clip_vision") else {}
    out = reference(pixel_values=_normalised(x, MEAN, STD), **kwargs)
    # the family's default pooling: the class token for DINOv2 and ViT, the pooled output otherwise
    expected = out.last_hidden_state[:, 0] if family in ("dinov2", "vit") else out.pooler_output.flatten(1)
    assert torch.allclose(net(x), expected, atol=1e-5)
    width = 16 if family == "resnet" else 32
    assert net.out_features == width and embedder(torch.rand(2, 3, 48, 48)).shape == (2, 8)  # another size
    assert embedder(torch.rand(2, 1, 32, 32)).shape == (2, 8)  # grey images, repeated to 3 channels


def test_a_hub_id_comes_from_the_cache(hub, tmp_path):
    model, cls = _tiny("dinov2")
    folder = _save(model, tmp_path / "d", {"image_mean": MEAN, "image_std": STD})
    fill_cache(hub, "someone/tiny-dinov2", {p.name: p for p in folder.iterdir()})
    net = _build("someone/tiny-dinov2", pooling="mean")
    same_weights(_reference(cls, folder).state_dict(), net.net.state_dict())
    assert net.mean == tuple(MEAN)
    x = torch.rand(2, 3, 32, 32)
    hidden = _reference(cls, folder)(pixel_values=_normalised(x, MEAN, STD)).last_hidden_state
    assert torch.allclose(net(x), hidden[:, 1:].mean(1), atol=1e-5)
    check_backbone("hf", {"model": "someone/tiny-dinov2"})  # cached: no error


def test_without_a_preprocessor_config_the_family_defaults_apply(hub, tmp_path):
    clip = _build(_save(_tiny("clip_vision")[0], tmp_path / "c"))
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    resnet = _build(_save(_tiny("resnet")[0], tmp_path / "r"))
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.std == (0.229, 0.224, 0.225)


def test_offline_and_not_cached_is_a_quick_config_error(hub):
    start = time.perf_counter()
    for attempt in (lambda: _build("facebook/dinov2-small"), lambda: check_backbone("hf", {})):
        with pytest.raises(ConfigError) as err:
            attempt()
        assert err.value.field == "backbone.model" and err.value.value == "facebook/dinov2-small"
        assert "offline" in str(err.value) and "hf download facebook/dinov2-small" in str(err.value)
    assert time.perf_counter() - start < 5


def test_bad_poolings_and_incomplete_checkpoints_are_config_errors(hub, tmp_path):
    resnet = _save(_tiny("resnet")[0], tmp_path / "r")
    with pytest.raises(ConfigError) as err:
        _build(resnet, pooling="cls")  # a feature map has no class token
    assert err.value.field == "backbone.pooling"
    torch.manual_seed(0)
    no_pooler = _save(transformers.ViTModel(transformers.ViTConfig(**VIT), add_pooling_layer=False), tmp_path / "v")
    _build(no_pooler)  # cls: the pooler is not needed
    with pytest.raises(ConfigError, match="missing") as err:
        _build(no_pooler, pooling="pooler")  # it would be random
    assert err.value.field == "backbone.model"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        _build(tmp_path / "empty")
    assert err.value.field == "backbone.model"
    with pytest.raises(ConfigError):
        _build(resnet, shape=(20,))  # vectors
