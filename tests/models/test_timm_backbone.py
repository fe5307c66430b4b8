"""backbone=timm with weights from where a user keeps them: a state-dict file, a folder written by
timm's save_for_hf, the Hugging Face cache (a timm name with pretrained=true, an hf-hub: name);
offline and not cached, a quick ConfigError. Tiny timm test models, offline, no download."""

from __future__ import annotations

import time

import pytest
import torch

from tests.models.helpers import fill_cache, same_weights
from tuneddml.config import TrialConfig, split_backbone_params
from tuneddml.errors import ConfigError
from tuneddml.models import BACKBONES, build_model, check_backbone

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

MEAN, STD = (0.25, 0.35, 0.45), (0.2, 0.3, 0.4)  # neither ImageNet's nor the test models' 0.5


def _net(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs).eval()


def _build(params, shape=(3, 32, 32)):
    return BACKBONES.build("timm", params, field="backbone", item_shape=shape).eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_state_dict_file_is_loaded_whole(hub, tmp_path, suffix):
    saved = _net("test_resnet", num_classes=0).state_dict()
    path = tmp_path / f"w{suffix}"
    torch.save(saved, path) if suffix == ".pth" else safetensors_torch.save_file(saved, path)
    net = _build({"model": "test_resnet", "weights": str(path)}, shape=(1, 32, 32))  # grey images
    same_weights(saved, net.net.state_dict())
    x = torch.rand(2, 1, 32, 32)
    assert net(x).shape == (2, net.out_features)
    # grey repeated to 3 channels, normalised with the model's config (test_resnet: 0.5, 0.5)
    expected = net.net((x.expand(-1, 3, -1, -1) - 0.5) / 0.5)
    assert torch.allclose(net(x), expected, atol=1e-6)
    assert net.mean == (0.5, 0.5, 0.5) and net.input_size == 160


def test_a_save_for_hf_folder_brings_weights_and_preprocessing(hub, tmp_path):
    source = _net("test_vit", num_classes=0, dynamic_img_size=True)
    timm.models.save_for_hf(source, tmp_path / "vit", safe_serialization=True, data_config={"mean": MEAN, "std": STD})
    config = TrialConfig.from_flat({"backbone": "timm", "backbone.model": "test_vit", "backbone.weights": str(tmp_path / "vit")})
    model = build_model(config.backbone, split_backbone_params(config.backbone_params)[0], item_shape=(3, 32, 32), embedding_size=8).eval()
    net = model.backbone
    same_weights(source.state_dict(), net.net.state_dict())
    assert net.mean == MEAN and net.std == STD
    x = torch.rand(2, 3, 32, 32)  # test_vit's native size is 160: its position embedding is interpolated
    expected = source((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    assert torch.allclose(net(x), expected, atol=1e-5)
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 8)


def test_a_folder_of_another_model_is_refused(hub, tmp_path):
    timm.models.save_for_hf(_net("test_vit", num_classes=0), tmp_path / "vit", safe_serialization=True)
    with pytest.raises(ConfigError, match="test_vit") as err:
        _build({"model": "test_resnet", "weights": str(tmp_path / "vit")})
    assert err.value.field == "backbone.weights"


def test_pretrained_takes_timm_weights_from_the_hub_cache(hub, tmp_path):
    source = _net("test_vit")  # the hub's checkpoint holds the classifier too
    safetensors_torch.save_file(source.state_dict(), tmp_path / "model.safetensors")
    fill_cache(hub, "timm/test_vit.r160_in1k", {"model.safetensors": tmp_path / "model.safetensors"})
    net = _build({"model": "test_vit.r160_in1k", "pretrained": True})
    same_weights(source.state_dict(), net.net.state_dict(), skip=("head.",))
    assert net.mean == tuple(timm.models.get_pretrained_cfg("test_vit.r160_in1k").mean)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, net.out_features)


def test_an_hf_hub_name_comes_from_the_cache_with_its_config(hub, tmp_path):
    source = _net("test_resnet", num_classes=0)
    timm.models.save_for_hf(source, tmp_path / "r", safe_serialization=True, data_config={"mean": MEAN, "std": STD})
    files = {n: tmp_path / "r" / n for n in ("config.json", "model.safetensors")}
    fill_cache(hub, "someone/tiny-resnet", files)
    net = _build({"model": "hf-hub:someone/tiny-resnet", "pretrained": True})
    same_weights(source.state_dict(), net.net.state_dict())
    assert net.mean == MEAN and net.std == STD
    random = _build({"model": "hf-hub:someone/tiny-resnet", "pretrained": False})
    assert random.mean == MEAN
    pairs = zip(random.net.state_dict().values(), net.net.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize(
    "params",
    [
        {"model": "test_resnet.r160_in1k", "pretrained": True},
        {"model": "test_vit", "pretrained": True},  # its default tag
        {"model": "hf-hub:someone/not-cached", "pretrained": True},
        {"model": "hf-hub:someone/not-cached", "pretrained": False},  # its architecture is in the hub too
    ],
)
def test_offline_and_not_cached_is_a_quick_config_error(hub, params):
    start = time.perf_counter()
    for attempt in (lambda: _build(params), lambda: check_backbone("timm", params)):
        with pytest.raises(ConfigError) as err:
            attempt()
        assert err.value.field == "backbone.model" and err.value.value == params["model"]
        assert "offline" in str(err.value) and "hf download" in str(err.value)
        assert "backbone.weights" in str(err.value)
    assert time.perf_counter() - start < 5


def test_a_checkpoint_that_does_not_fit_is_a_config_error(hub, tmp_path):
    torch.save(_net("test_efficientnet", num_classes=0).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="a state dict for test_resnet") as err:
        _build({"model": "test_resnet", "weights": str(tmp_path / "other.pth")})
    assert err.value.field == "backbone.weights"
    with pytest.raises(ConfigError) as err:
        check_backbone("timm", {"model": "test_resnet", "weights": str(tmp_path / "missing.pth")})
    assert err.value.field == "backbone.weights"
    with pytest.raises(ConfigError) as err:
        _build({"model": "no_such_model"})
    assert err.value.field == "backbone.model"


@pytest.mark.parametrize("name", ["test_maxvit", "test_vit_relpos", "test_convnext"])
def test_models_of_a_fixed_size_are_built_for_the_images(hub, name):
    net = _build({"model": name}, shape=(1, 64, 64))  # native 160: MaxViT and relpos ViTs need img_size
    assert net(torch.rand(2, 1, 64, 64)).shape == (2, net.out_features)
