"""Online (HF_HUB_OFFLINE unset), with the hub played by a stand-in for ``hf_hub_download`` (no
network): a cached model never asks the hub; a missing one is fetched, file by file, into the
cache the environment names, and loaded from there; a file the hub lacks is skipped for the next."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models.helpers import fill_cache, same_weights
from tuneddml.models import BACKBONES

huggingface_hub = pytest.importorskip("huggingface_hub")


class FakeHub:
    """``hf_hub_download`` over local files: writes what it serves into the cache, as the real one."""

    def __init__(self, repos: dict[str, dict[str, Path]]) -> None:
        self.repos = repos
        self.calls: list[tuple[str, str]] = []

    def __call__(self, repo_id, filename, *, revision=None, cache_dir=None, **_):
        self.calls.append((repo_id, filename))
        files = self.repos.get(repo_id, {})
        if filename not in files:
            if files:  # the repository exists: the real one notes the missing file in the cache
                snapshot = fill_cache(Path(cache_dir), repo_id, {})
                marker = snapshot.parents[1] / ".no_exist" / snapshot.name / filename
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(fill_cache(Path(cache_dir), repo_id, {filename: files[filename]}) / filename)


@pytest.fixture()
def online(hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fake = FakeHub({})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    return fake


def _no_network(*args, **kwargs):
    raise AssertionError("the hub was asked for a cached file")


def test_a_missing_timm_checkpoint_is_downloaded_and_a_cached_one_is_not(online, hub, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    source = timm.create_model("test_resnet")
    safetensors_torch.save_file(source.state_dict(), tmp_path / "model.safetensors")
    online.repos["timm/test_resnet.r160_in1k"] = {"model.safetensors": tmp_path / "model.safetensors"}
    params = {"model": "test_resnet.r160_in1k", "pretrained": True}
    net = BACKBONES.build("timm", params, item_shape=(3, 32, 32))
    assert online.calls == [("timm/test_resnet.r160_in1k", "model.safetensors")]
    same_weights(source.state_dict(), net.net.state_dict(), skip=("fc.",))
    assert any((hub / "models--timm--test_resnet.r160_in1k" / "snapshots").iterdir())
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", _no_network)
    again = BACKBONES.build("timm", params, item_shape=(3, 32, 32))  # from the cache now
    same_weights(source.state_dict(), again.net.state_dict(), skip=("fc.",))


def test_a_missing_hf_model_is_downloaded_with_its_preprocessor(online, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=16, intermediate_size=20, num_hidden_layers=1,
                                    num_attention_heads=2, image_size=32, patch_size=8)
    source = transformers.ViTModel(config, add_pooling_layer=False)
    source.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text('{"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]}')
    online.repos["someone/vit"] = {p.name: p for p in (tmp_path / "vit").iterdir()}
    net = BACKBONES.build("hf", {"model": "someone/vit"}, item_shape=(3, 32, 32))
    # pytorch_model.bin is not asked for: model.safetensors came first
    assert [f for _, f in online.calls] == ["config.json", "model.safetensors", "preprocessor_config.json"]
    same_weights(source.state_dict(), net.net.state_dict())
    assert net.mean == (0.1, 0.2, 0.3) and net.std == (1.0, 2.0, 3.0)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    assert BACKBONES.build("hf", {"model": "someone/vit"}, item_shape=(3, 32, 32)).mean == (0.1, 0.2, 0.3)


def test_a_file_the_hub_lacks_is_asked_for_once(online, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    transformers.ResNetModel(config).save_pretrained(tmp_path / "r")  # no preprocessor_config.json
    online.repos["someone/resnet"] = {p.name: p for p in (tmp_path / "r").iterdir()}
    net = BACKBONES.build("hf", {"model": "someone/resnet"}, item_shape=(3, 32, 32))
    assert [f for _, f in online.calls] == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert net.mean == (0.485, 0.456, 0.406)  # ResNet's default: ImageNet's
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    BACKBONES.build("hf", {"model": "someone/resnet"}, item_shape=(3, 32, 32))
