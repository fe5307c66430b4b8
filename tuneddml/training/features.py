"""Cached-feature trials (``features=cached``): the frozen backbone's features, computed once.

With ``backbone.freeze=true`` only the head (and the loss's own parameters) train, so what the
backbone makes of each item never changes during a trial, nor between the trials of a search that
share the data and the backbone. A cached-feature trial builds its dataset and its model exactly
as a full trial does (same seed, same random draws: the same initial head), then
:func:`use_cached_features`:

1. gets the features of the dataset's ``train``, ``test`` and ``test_gallery`` parts from the
   feature cache (:mod:`tuneddml.data.feature_cache`, folder :func:`cache_folder`), computing a part
   the first time any trial asks for it: the backbone alone, in eval mode, in float32, without
   gradients, ``eval_batch_size`` items at a time through the trial's input pipeline
   (:class:`~tuneddml.data.loader.InputPipeline`), so the preprocessing is the full trial's;
2. makes a :class:`~tuneddml.data.base.Dataset` of those feature items (augmentation ``"none"``) and
   splits it with :func:`~tuneddml.data.splits.make_split` as the full trial split its images (the
   split reads only the labels: the same items in every part);
3. replaces the model's backbone by :class:`CachedBackbone` (an identity with the same
   ``out_features``), keeping the head's weights.

Everything else (losses, miners, samplers, embedding augmenters, evaluation, checkpoints) is the
full trial's, so a cached trial gives the metrics of a full trial with ``backbone.freeze=true
augment=false`` and the same seed (to float rounding: the backbone sees other batch sizes).

With ``feature_views=V > 0`` the cache also holds V augmented draws of the training items (view
``v``: one pass over the training part in order, :data:`VIEW_BATCH` items at a time, through the
dataset's training augmentation seeded by ``v`` alone, so every trial of a search shares them), and epoch ``e`` trains on view
``(e - 1) % V`` (:func:`select_epoch_view`); queries and gallery always use the evaluation view.

A key (:func:`key_parts`) holds everything the features depend on and nothing else: the dataset
(name, parameters, image and resize size, a fingerprint of the part's content, not its folder),
the part, the view, the backbone (name, its own parameters, a digest of its weights and buffers,
its preprocessing). Changing the backbone's weights (another checkpoint, ``pretrained``) changes the
key; ``backbone.lr``, ``backbone.freeze_bn`` and the trial's seed do not.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tuneddml.config import TrialConfig, split_backbone_params

#: the environment variable naming the cache folder when the trial's ``feature_cache`` is None
CACHE_ENV = "TUNEDDML_FEATURE_CACHE"
DEFAULT_CACHE = "~/.cache/tuneddml/features"
#: the dataset parts that are cached (each present part)
PARTS = ("train", "test", "test_gallery")
#: the view of the evaluation (and of augment=false training)
EVAL_VIEW = -1
#: the seed of the augmented views' crops of file-backed items (with the view as the epoch)
VIEW_SEED = 0
#: items per batch of an augmented view: fixed, so a view's random draws do not depend on any
#: trial setting (a batch's augmentation and a file's crop depend on its place in the batches)
VIEW_BATCH = 256

_fingerprints: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def cache_folder(config: TrialConfig) -> Path:
    """The trial's ``feature_cache``, else ``$TUNEDDML_FEATURE_CACHE``, else ``~/.cache/tuneddml/features``."""
    folder = config.feature_cache or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(folder).expanduser()


class CachedBackbone(nn.Module):
    """What replaces the backbone of a cached-feature trial: its features come in, unchanged."""

    mean = std = input_size = None

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = int(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def weights_digest(backbone: nn.Module) -> str:
    """The sha256 of the backbone's state_dict: each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def preprocessing(backbone: nn.Module) -> dict[str, Any]:
    """The backbone's own input normalisation (``mean``, ``std``, ``input_size``; None where absent)."""
    out: dict[str, Any] = {}
    for name in ("mean", "std", "input_size"):
        value = getattr(backbone, name, None)
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        elif isinstance(value, (tuple, list)):
            value = [float(v) for v in value]
        out[name] = value
    return out


def fingerprint(items: Any) -> str:
    """:func:`~tuneddml.data.feature_cache.items_fingerprint`, once per item set (fold models share it)."""
    from tuneddml.data.feature_cache import items_fingerprint

    try:
        return _fingerprints[items]
    except (KeyError, TypeError):
        pass
    value = items_fingerprint(items)
    try:
        _fingerprints[items] = value
    except TypeError:  # not weakly referable: computed each time
        pass
    return value


def key_parts(
    config: TrialConfig, backbone: nn.Module, part: str, items: Any, view: int, augmentation: str
) -> dict[str, Any]:
    """What the features of ``items`` (dataset part ``part``, view ``view``) depend on."""
    own, _ = split_backbone_params(config.backbone_params)
    return {
        "dataset": config.dataset,
        "dataset_params": dict(config.dataset_params),
        "image_size": config.image_size,
        "resize_size": config.resize_size,
        "items": fingerprint(items),
        "part": part,
        "view": view,
        "augmentation": augmentation if view != EVAL_VIEW else "none",
        "backbone": config.backbone,
        "backbone_params": own,
        "weights": weights_digest(backbone),
        "preprocessing": preprocessing(backbone),
    }


@torch.no_grad()
def embed_part(
    config: TrialConfig, backbone: nn.Module, items: Any, device: torch.device, view: int, augmentation: str
) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's float32 features ``[N, F]`` of every item, in order, with their labels: the
    evaluation view ``eval_batch_size`` items at a time, an augmented view :data:`VIEW_BATCH`."""
    from tuneddml.data.loader import InputPipeline

    was_training = backbone.training
    backbone.eval()
    pipeline = InputPipeline(
        {"train": items},  # the training path reads "train"; eval finds the items by identity
        augmentation=augmentation if view != EVAL_VIEW else "none",
        seed=VIEW_SEED,
        device=device,
        workers=config.workers,
        threads=config.threads,
    )
    order = np.arange(len(items))
    size = config.eval_batch_size
    out = []
    try:
        if view == EVAL_VIEW:
            batches: Any = pipeline.eval(items, order, size)
        else:
            chunks = (order[start : start + VIEW_BATCH] for start in range(0, len(order), VIEW_BATCH))
            generator = torch.Generator().manual_seed(view)
            batches = (x for _, x in pipeline.train(chunks, view + 1, generator))
        for x in batches:
            out.append(backbone(x).float().cpu())
    finally:
        pipeline.close()
        backbone.train(was_training)
    width = int(backbone.out_features)  # type: ignore[arg-type]
    features = torch.cat(out).numpy() if out else np.zeros((0, width), dtype=np.float32)
    return np.ascontiguousarray(features, dtype=np.float32), np.asarray(items.labels, dtype=np.int64)


def part_features(
    config: TrialConfig,
    backbone: nn.Module,
    part: str,
    items: Any,
    device: torch.device,
    *,
    view: int = EVAL_VIEW,
    augmentation: str = "none",
) -> Any:
    """The cached :class:`~tuneddml.data.feature_cache.FeatureItems` of one part and view, built once."""
    from tuneddml.data.feature_cache import cached, feature_key, read_features
    from tuneddml.data.files import FileItems

    if config.resize_size is not None and isinstance(items, FileItems):
        items = items.resized(config.resize_size)  # as the full trial's TrialData.resized
    parts = key_parts(config, backbone, part, items, view, augmentation)
    key = feature_key(parts)
    path = cached(
        cache_folder(config),
        key,
        lambda: embed_part(config, backbone, items, device, view, augmentation),
        parts=parts,
    )
    return read_features(path, key)


def cached_dataset(config: TrialConfig, dataset: Any, backbone: nn.Module, device: torch.device) -> Any:
    """``dataset`` with every part replaced by its cached features (augmentation ``"none"``); the
    training part carries ``feature_views`` augmented views. The global random state is left as
    it was (the trial's later draws are the full trial's)."""
    from tuneddml.data.base import Dataset

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        got = {
            part: part_features(config, backbone, part, getattr(dataset, part), device)
            for part in PARTS
            if getattr(dataset, part) is not None
        }
        views = [
            part_features(config, backbone, "train", dataset.train, device, view=v, augmentation=dataset.augmentation)
            for v in range(config.feature_views)
        ]
    train = got["train"].with_views(views) if views else got["train"]
    return Dataset(
        name=dataset.name,
        train=train,
        test=got["test"],
        test_gallery=got.get("test_gallery"),
        augmentation="none",
        info=dict(dataset.info),
    )


def use_cached_features(trainer: Any, dataset: Any) -> None:
    """Turn a freshly built :class:`~tuneddml.training.Trainer` into a cached-feature trial: its
    data split from ``dataset``'s cached features, its backbone an identity (the head kept).
    Sets ``trainer.feature_dataset`` (what a cross-validated trial's test split is made of)."""
    from tuneddml.data.splits import make_split

    config = trainer.config
    backbone = trainer.model.backbone
    features = cached_dataset(config, dataset, backbone, trainer.device)
    data = make_split(features, split=config.split, num_folds=config.num_folds, fold=config.fold, seed=config.fold_seed)
    if not np.array_equal(data.train.labels, trainer.data.train.labels):
        raise RuntimeError("cached features: the training items differ from the dataset's")  # a stale cache entry
    trainer.data = data
    trainer.feature_dataset = features
    trainer.model.backbone = CachedBackbone(backbone.out_features).to(trainer.device)


def select_epoch_view(trainer: Any, epoch: int) -> None:
    """With ``feature_views=V``: epoch ``epoch`` (1-based) trains on view ``(epoch - 1) % V``."""
    views = trainer.config.feature_views
    if trainer.config.features == "cached" and views:
        trainer.data.train.select_view((epoch - 1) % views)
