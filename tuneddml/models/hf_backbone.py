"""The ``hf`` backbone: a Hugging Face transformers vision model (DINOv2, ViT, ResNet, CLIP's
vision tower) by hub id or local folder, with its weights (see :mod:`tuneddml.models._hub` for the
cache rules)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from tuneddml.errors import ConfigError
from tuneddml.models._hub import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WEIGHT_FILES,
    PixelNormalised,
    first_lines,
    hub_folder,
    image_channels,
    read_json,
    size_of,
    whole_doc,
)
from tuneddml.models.embedder import BACKBONES

PROCESSOR = "preprocessor_config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


class Family:
    """What a model type needs: its transformers class, its default pooling (what its papers use
    for retrieval), the poolings it has, the pixel statistics its image processor defaults to."""

    def __init__(self, cls: str, pooling: str, mean: tuple[float, ...], std: tuple[float, ...], tokens: bool) -> None:
        self.cls, self.pooling, self.mean, self.std, self.tokens = cls, pooling, mean, std, tokens
        self.poolings = ("cls", "mean", "pooler") if tokens else ("mean", "pooler")


#: config.json's model_type -> its family
FAMILIES = {
    "dinov2": Family("Dinov2Model", "cls", IMAGENET_MEAN, IMAGENET_STD, tokens=True),
    "vit": Family("ViTModel", "cls", HALF, HALF, tokens=True),
    "resnet": Family("ResNetModel", "pooler", IMAGENET_MEAN, IMAGENET_STD, tokens=False),
    "clip": Family("CLIPVisionModel", "pooler", CLIP_MEAN, CLIP_STD, tokens=True),
    "clip_vision_model": Family("CLIPVisionModel", "pooler", CLIP_MEAN, CLIP_STD, tokens=True),
}
INSTEAD = "set backbone.model to a local folder written by save_pretrained"


class HFBackbone(PixelNormalised):
    """A Hugging Face transformers vision model with its weights: DINOv2, ViT, ResNet or CLIP (its
    vision tower). model: a hub id (facebook/dinov2-small, google/vit-base-patch16-224-in21k,
    microsoft/resnet-50, openai/clip-vit-base-patch32) or a local folder written by save_pretrained
    (config.json with model.safetensors or pytorch_model.bin). Hub models are read from the Hugging
    Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub); only what it lacks
    is downloaded, and only online: with HF_HUB_OFFLINE=1 a model that is not cached is a
    configuration error at once (fill the cache on a machine online, or name a local folder).
    pooling: cls (the class token), mean (of the patch tokens or the feature map), pooler (the
    model's pooled output) or auto: cls for DINOv2 and ViT, pooler for ResNet and CLIP. Images in
    [0, 1] are normalised inside the model with the image_mean and image_std of its
    preprocessor_config.json, else its family's (ImageNet's for DINOv2 and ResNet, 0.5 for ViT,
    CLIP's for CLIP); grey images are repeated to 3 channels; any image size works."""

    def __init__(
        self,
        *,
        item_shape: tuple[int, ...],
        model: str = "facebook/dinov2-small",
        pooling: Literal["auto", "cls", "mean", "pooler"] = "auto",
    ) -> None:
        super().__init__()
        channels = image_channels(item_shape, "hf")
        folder = locate(model)
        assert folder is not None
        family, config = _family(folder, model)
        model_channels = int(config.get("num_channels", 3))
        if channels not in (1, model_channels):
            raise ConfigError("backbone.model", model, f"a model for {channels}-channel images")
        self.pooling = _pooling(family, pooling, model)
        self.tokens = family.tokens
        self.net = _load(family, folder, model, add_pooling_layer=self.pooling == "pooler")
        processor = read_json(folder / PROCESSOR) if (folder / PROCESSOR).is_file() else {}
        mean = processor.get("image_mean") or family.mean
        std = processor.get("image_std") or family.std
        crop = processor.get("crop_size") if processor.get("do_center_crop", True) else None
        size = size_of(crop) or size_of(processor.get("size")) or size_of(config.get("image_size")) or 224
        self.set_pixels(mean, std, size, model_channels)
        net_config = self.net.config
        self.out_features = int(net_config.hidden_sizes[-1] if family.cls == "ResNetModel" else net_config.hidden_size)
        # ViT and CLIP interpolate their position embeddings for other sizes only when asked
        self._forward_kwargs = {"interpolate_pos_encoding": True} if family.cls in ("ViTModel", "CLIPVisionModel") else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(pixel_values=self.normalise(x), **self._forward_kwargs)
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if not self.tokens:  # a feature map [B, C, H, W]
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(dim=1)

    @staticmethod
    def check(model: str = "facebook/dinov2-small", pooling: str = "auto") -> None:
        """Before a search: a ConfigError for a model the trials will not find (no download)."""
        folder = locate(model, download=False)
        if folder is not None:
            _pooling(_family(folder, model)[0], pooling, model)


def locate(model: str, download: bool = True) -> Path | None:
    """The folder holding the model: ``model`` itself, or its snapshot in the hub cache (fetched
    into it online). None only when ``download`` is off and a download is due."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("backbone.model", model, "a folder written by save_pretrained (with config.json)")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ConfigError("backbone.model", model, "an existing local folder or a hub id such as facebook/dinov2-small")
    return hub_folder(
        model, weights=WEIGHT_FILES, field="backbone.model", value=model, instead=INSTEAD, optional=(PROCESSOR,),
        download=download,
    )


def _family(folder: Path, model: str) -> tuple[Family, dict[str, Any]]:
    config = read_json(folder / "config.json")
    kind = config.get("model_type")
    if kind not in FAMILIES:
        raise ConfigError(
            "backbone.model", model, f"a vision model of type {', '.join(FAMILIES)} (config.json has model_type {kind!r})"
        )
    if kind == "clip":  # the vision tower's own config
        config = dict(config.get("vision_config") or {})
    return FAMILIES[kind], config


def _pooling(family: Family, pooling: str, model: str) -> str:
    chosen = family.pooling if pooling == "auto" else pooling
    if chosen not in family.poolings:
        raise ConfigError("backbone.pooling", pooling, f"one of auto, {', '.join(family.poolings)} for {model}")
    return chosen


def _load(family: Family, folder: Path, model: str, *, add_pooling_layer: bool) -> torch.nn.Module:
    """The model with its weights, every one of them from the checkpoint (a weight left at random,
    such as a ViT pooler the checkpoint lacks, is an error), in float32."""
    import transformers

    cls = getattr(transformers, family.cls)
    kwargs: dict[str, Any] = {"add_pooling_layer": add_pooling_layer} if family.cls == "ViTModel" else {}
    with _quiet(transformers):
        try:
            net, info = cls.from_pretrained(
                str(folder), local_files_only=True, dtype=torch.float32, output_loading_info=True, **kwargs
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError("backbone.model", model, f"a loadable {family.cls} ({first_lines(exc)})") from None
    missing = sorted(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        raise ConfigError(
            "backbone.model", model, f"a checkpoint holding every weight of {family.cls} (missing {(missing or mismatched)[:3]})"
        )
    return net


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No load report or progress bar per trial (unexpected keys, a CLIP text tower's, are fine)."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


# registered after the class: the catalog shows its whole docstring (every parameter, the cache rule)
BACKBONES.register("hf", runtime=("item_shape",), requires=("transformers",), summary=whole_doc(HFBackbone))(
    HFBackbone
)
