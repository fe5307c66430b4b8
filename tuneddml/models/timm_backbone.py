"""The ``timm`` backbone: any timm model by name, random, pretrained from the Hugging Face hub
cache, or from a local file or folder (see :mod:`tuneddml.models._hub` for the cache rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from tuneddml.errors import ConfigError
from tuneddml.models._hub import (
    WEIGHT_FILES,
    PixelNormalised,
    first_lines,
    hub_file,
    hub_folder,
    image_channels,
    offline,
    read_json,
    whole_doc,
)
from tuneddml.models.embedder import BACKBONES

HF_HUB = "hf-hub:"
INSTEAD = "set backbone.weights to a local state-dict file or folder"
WEIGHTS_EXPECTED = "a state-dict file (.pth, .pt, .safetensors) or a timm.models.save_for_hf folder"


class TimmBackbone(PixelNormalised):
    """Any timm model, without its classifier. model: a timm name (resnet50; with a weights tag,
    vit_small_patch14_dinov2.lvd142m) or hf-hub:org/name for a timm model on the Hugging Face hub.
    pretrained: true loads the weights timm names for the model, false starts from random weights.
    weights: a local state-dict file (.pth, .pt, .safetensors) or a folder written by timm's
    save_for_hf (config.json with model.safetensors or pytorch_model.bin), loaded instead; empty:
    none. Hub weights are read from the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub); only what it lacks is downloaded, and only online: with
    HF_HUB_OFFLINE=1 a model that is not cached is a configuration error at once (fill the cache on
    a machine online, or set weights). Images in [0, 1] are normalised inside the model with the
    mean and std of its config (grey images repeated to 3 channels); any image size works (ViTs
    interpolate their position embeddings, models of a fixed size such as MaxViT are built for the
    trial's)."""

    def __init__(
        self, *, item_shape: tuple[int, ...], model: str = "resnet18", pretrained: bool = False, weights: str = ""
    ) -> None:
        super().__init__()
        channels = image_channels(item_shape, "timm")
        import timm
        from timm.data import resolve_model_data_config

        name, kwargs, state_file = locate(model, pretrained, weights)  # type: ignore[misc]
        field, value = ("backbone.weights", weights) if weights else ("backbone.model", model)
        try:
            self.net = _create(timm, name, kwargs, (item_shape[1], item_shape[2]))
        except (RuntimeError, OSError, ValueError, KeyError) as exc:  # a checkpoint that does not fit
            raise ConfigError(field, value, f"weights for {model} ({first_lines(exc)})") from None
        if state_file is not None:
            load_state_file(self.net, state_file, weights, model)
        data = resolve_model_data_config(self.net)
        model_channels = int(data["input_size"][0])
        if channels not in (1, model_channels):
            raise ConfigError("backbone.model", model, f"a model for {channels}-channel images")
        self.set_pixels(data["mean"], data["std"], int(data["input_size"][-2]), model_channels)
        self.out_features = int(self.net.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))

    @staticmethod
    def check(model: str = "resnet18", pretrained: bool = False, weights: str = "") -> None:
        """Before a search: a ConfigError for weights the trials will not find (no download)."""
        locate(model, pretrained, weights, download=False)


def locate(
    model: str, pretrained: bool, weights: str, download: bool = True
) -> tuple[str, dict[str, Any], Path | None] | None:
    """What to build and from where: (the name for ``timm.create_model``, its keyword arguments, a
    state-dict file to load after). None only when ``download`` is off and a download is due."""
    path = Path(weights).expanduser() if weights else None
    if path is not None and not path.exists():
        raise ConfigError("backbone.weights", weights, WEIGHTS_EXPECTED)
    if model.startswith(HF_HUB):
        if path is not None and path.is_dir():
            raise ConfigError(
                "backbone.weights", weights, f"a state-dict file for {model} (a folder brings its own model: set backbone.model "
                "to the timm name in its config.json)"
            )
        folder = hub_folder(
            model[len(HF_HUB):],
            weights=WEIGHT_FILES if pretrained and path is None else None,
            field="backbone.model",
            value=model,
            instead=INSTEAD,
            download=download,
        )
        if folder is None:
            return None
        return f"local-dir:{folder}", {"pretrained": pretrained and path is None}, path
    import timm

    if not timm.is_model(model):
        raise ConfigError(
            "backbone.model", model, "a name from timm.list_models() (with a tag: timm.list_pretrained()) or hf-hub:org/name"
        )
    if path is not None and path.is_dir():
        return f"local-dir:{_check_folder(path, model, weights)}", {"pretrained": True}, None
    if path is not None:
        return model, {}, path
    if not pretrained:
        return model, {}, None
    file = _pretrained_file(timm, model, download)
    if file is None:
        return None if not download else (model, {"pretrained": True}, None)
    return model, {"pretrained": True, "pretrained_cfg_overlay": {"file": file}}, None


def _check_folder(path: Path, model: str, weights: str) -> Path:
    if not (path / "config.json").is_file():
        raise ConfigError("backbone.weights", weights, WEIGHTS_EXPECTED)
    arch = str(read_json(path / "config.json").get("architecture", ""))
    if arch.split(".")[0] != model.split(".")[0]:
        raise ConfigError(
            "backbone.weights", weights, f"a folder saved from {model} (its config.json names {arch!r}: set backbone.model={arch})"
        )
    return path


def _pretrained_file(timm: Any, model: str, download: bool) -> str | None:
    """The cached file of the weights timm names for ``model``; None: timm downloads them itself."""
    try:
        cfg = timm.models.get_pretrained_cfg(model, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(
            "backbone.model", model, "a timm model with pretrained weights (timm.list_pretrained()), or pretrained=false"
        )
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(WEIGHT_FILES)
        return hub_file(cfg.hf_hub_id, names, field="backbone.model", value=model, instead=INSTEAD, download=download)
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
    if target.is_file():
        return str(target)
    if offline():
        raise ConfigError(
            "backbone.model",
            model,
            f"its weights in the torch hub cache ({target}) while offline: run once online, copy the file "
            f"from {cfg.url} there, or {INSTEAD}",
        )
    return None


def _create(timm: Any, name: str, kwargs: dict[str, Any], size: tuple[int, int]) -> torch.nn.Module:
    """``timm.create_model`` without a classifier, for images of ``size``: ViTs with
    ``dynamic_img_size`` (any size); models of a fixed size that cannot (MaxViT, CoAtNet, ViTs with
    relative positions) built for ``size`` (timm resamples pretrained position tables); CNNs as they are."""
    for extra in ({"dynamic_img_size": True}, {"img_size": size}):
        try:
            return timm.create_model(name, num_classes=0, **extra, **kwargs)
        except TypeError as exc:  # the model takes no such argument
            if next(iter(extra)) not in str(exc):
                raise
    return timm.create_model(name, num_classes=0, **kwargs)


def load_state_file(net: torch.nn.Module, path: Path, weights: str, model: str) -> None:
    """Load a state dict (a classifier's keys may be extra); every weight of ``net`` must be in it."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path))
    except Exception as exc:  # pickle, safetensors and zip errors alike
        raise ConfigError("backbone.weights", weights, f"a readable state dict ({first_lines(exc)})") from None
    try:
        missing, _unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not match
        raise ConfigError("backbone.weights", weights, f"a state dict for {model} ({first_lines(exc)})") from None
    if missing:
        raise ConfigError("backbone.weights", weights, f"a state dict for {model} (missing {missing[:3]})")


# registered after the class: the catalog shows its whole docstring (every parameter, the cache rule)
BACKBONES.register("timm", runtime=("item_shape",), requires=("timm",), summary=whole_doc(TimmBackbone))(
    TimmBackbone
)
