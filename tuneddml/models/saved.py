"""The ``saved`` backbone: the backbone of an earlier tuneddml trial, with the weights it trained.

Two kinds of file hold such a backbone: a search's ``weights/<trial_id>.pt`` (the Embedder's
weights-only state dict, ``backbone.*`` and ``head.*`` keys, ``fold<i>.`` before them for a
cross-validated trial) with its sidecar ``weights/<trial_id>.json`` (the trial's flat config:
which backbone, with which parameters), or a trial's checkpoint (``trainer.pt``, a
``Trainer.save`` file, whose ``config`` says the same). Both are read weights-only (no code
runs); this module reads them itself, since the models layer sits below the config and the
training layers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneddml.errors import ConfigError
from tuneddml.models._hub import first_lines, whole_doc
from tuneddml.models.embedder import BACKBONES

NAME = "saved"
FIELD = "backbone.path"
EXPECTED = (
    "a weights file a search saved (weights/<trial_id>.pt with its <trial_id>.json beside it) "
    "or a trial's checkpoint file (trainer.pt)"
)
#: the saved weights replace whatever an inner backbone would load for itself
NO_PRETRAINED = {"pretrained": False, "weights": ""}


class SavedBackbone(nn.Module):
    """The backbone of an earlier tuneddml trial, with the weights it trained; the embedding head
    is new. path: a search's weights/<trial_id>.pt with its <trial_id>.json beside it (the
    trial's settings, written with the weights), or a trial's checkpoint file (trainer.pt). fold:
    which fold model of a cross-validated trial's weights (0 for other weights). The architecture
    (backbone and its parameters) comes from the file's settings, the weights of its backbone.*
    keys are loaded strictly; its normalisation (mean, std, input_size) is the inner backbone's.
    The items must be of the kind it was trained on, with the same channel count (a backbone
    trained on 1-channel glyphs refuses 3-channel images, naming both); other image sizes work
    where the backbone pools globally (small_cnn, timm CNNs). A saved backbone of a saved
    backbone is refused: point path at the file the inner one names."""

    def __init__(self, *, item_shape: tuple[int, ...], path: str = "", fold: int = 0) -> None:
        super().__init__()
        saved = read_saved(path, fold)
        trained = trained_items(saved.weights)
        kind = "image" if len(item_shape) == 3 else "vector"
        if trained is not None and trained[0] != kind:
            raise ConfigError(
                FIELD,
                path,
                f"{_items(trained)} as it was trained on (item_shape {tuple(item_shape)}: {kind}s)",
            )
        try:
            self.net = BACKBONES.build(saved.backbone, saved.params, field="backbone", item_shape=item_shape)
        except ConfigError as err:
            raise ConfigError(FIELD, path, f"items its {saved.backbone} backbone takes ({err})") from None
        try:
            self.net.load_state_dict(saved.weights, strict=True)
        except RuntimeError as exc:
            if trained is not None and "size mismatch" in str(exc) and trained[1] != item_shape[0]:
                raise ConfigError(
                    FIELD,
                    path,
                    f"{_items(trained)} as it was trained on (item_shape {tuple(item_shape)} has "
                    f"{item_shape[0]}{' channels' if kind == 'image' else ' dimensions'})",
                ) from None
            raise ConfigError(
                FIELD, path, f"weights of its {saved.backbone} backbone ({first_lines(exc)})"
            ) from None
        self.out_features = int(self.net.out_features)  # type: ignore[arg-type]
        self.mean = getattr(self.net, "mean", None)
        self.std = getattr(self.net, "std", None)
        self.input_size = getattr(self.net, "input_size", None)
        self.source, self.inner = str(saved.path), saved.backbone  # where from, for a reader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def check(path: str = "", fold: int = 0) -> None:
        """Before a search: a ConfigError for a file that is missing, unreadable, without its
        architecture, of a saved backbone, without the fold, or naming a backbone whose own weights
        the trials would not find. Reads the file; builds nothing."""
        saved = read_saved(path, fold)
        check = getattr(BACKBONES.get(saved.backbone).factory, "check", None)
        if check is not None:
            check(**BACKBONES.validate(saved.backbone, saved.params, "backbone"))


class Saved:
    """What a saved file holds: the inner ``backbone``'s name, its own ``params`` and the
    ``weights`` of the backbone (the ``backbone.`` prefix taken off)."""

    def __init__(
        self, path: Path, backbone: str, params: dict[str, Any], weights: dict[str, torch.Tensor]
    ) -> None:
        self.path, self.backbone, self.params, self.weights = path, backbone, params, weights


def read_saved(path: str, fold: int = 0) -> Saved:
    """Read ``path`` (see :class:`SavedBackbone`) weights-only: the architecture and the backbone's
    weights of fold model ``fold``. ConfigError (``backbone.path`` or ``backbone.fold``) for anything
    that would not build."""
    if not path:
        raise ConfigError(FIELD, path, EXPECTED)
    file = Path(path).expanduser()
    if file.suffix == ".json":  # the sidecar named: its weights beside it
        file = file.with_suffix(".pt")
    if not file.is_file():
        raise ConfigError(FIELD, path, EXPECTED + ": no such file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and truncation errors alike; a pickled class refused
        raise ConfigError(FIELD, path, f"{EXPECTED}, readable weights-only ({first_lines(exc)})") from None
    if not isinstance(state, Mapping):
        raise ConfigError(FIELD, path, EXPECTED + f": it holds a {type(state).__name__}")
    if "config" in state and ("model" in state or "folds" in state):  # a trainer checkpoint
        config = state["config"]
        folds = state.get("folds")
        if folds:
            model = _fold(folds, fold, path)
        else:
            _single(fold, path)
            model = state.get("model")
        if not isinstance(model, Mapping):
            raise ConfigError(FIELD, path, EXPECTED + ": a checkpoint without model weights")
    else:
        config = _sidecar(file, path)
        model = _weights_of_fold(state, fold, path)
    backbone, params = architecture(config, path)
    prefix = "backbone."
    weights = {k[len(prefix) :]: v for k, v in model.items() if isinstance(k, str) and k.startswith(prefix)}
    if not weights:
        cached = isinstance(config, Mapping) and config.get("features") == "cached"
        why = (
            "a features=cached trial trains only the head, so its file holds no backbone: use that trial's own backbone"
            if cached
            else "its weights have no backbone.* keys"
        )
        raise ConfigError(FIELD, path, f"{EXPECTED}: {why}")
    return Saved(file, backbone, params, weights)


def architecture(config: Any, path: str) -> tuple[str, dict[str, Any]]:
    """The inner backbone's name and its own parameters from a trial's flat config: the settings
    every backbone takes (lr, freeze_bn, ...) and whatever the backbone does not accept dropped, a
    pretrained download or weights file switched off (the saved weights replace them)."""
    if not isinstance(config, Mapping) or not isinstance(config.get("backbone"), str):
        raise ConfigError(FIELD, path, EXPECTED + ": its settings name no backbone")
    name = config["backbone"]
    if name == NAME:
        inner = config.get("backbone.path")
        raise ConfigError(
            FIELD,
            path,
            f"weights of a backbone other than {NAME} (these were trained on {NAME} from {inner!r}: a saved "
            "backbone of a saved backbone is refused)",
        )
    if name not in BACKBONES:
        raise ConfigError(
            FIELD,
            path,
            f"weights of a registered backbone (its settings name {name!r}; one of {', '.join(BACKBONES.names())})",
        )
    entry = BACKBONES.get(name)
    own = {p.name for p in entry.params}
    params = {
        k[len("backbone.") :]: v
        for k, v in config.items()
        if k.startswith("backbone.") and k[len("backbone.") :] in own
    }
    params.update({k: v for k, v in NO_PRETRAINED.items() if k in own})
    try:
        BACKBONES.validate(name, params, "backbone")
    except ConfigError as err:
        raise ConfigError(FIELD, path, f"settings its {name} backbone accepts ({err})") from None
    return name, params


def trained_items(weights: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """The items the weights were trained on, from their first layer: ("image", channels) for a
    4-d weight, ("vector", dimensions) for a 2-d one; None for a backbone without such a weight."""
    for value in weights.values():
        if isinstance(value, torch.Tensor) and value.ndim in (2, 4) and value.is_floating_point():
            return ("image" if value.ndim == 4 else "vector"), int(value.shape[1])
    return None


def _items(trained: tuple[str, int]) -> str:
    kind, size = trained
    return f"{size}-channel images" if kind == "image" else f"{size}-dimensional vectors"


def _sidecar(file: Path, path: str) -> Any:
    side = file.with_suffix(".json")
    if not side.is_file():
        raise ConfigError(
            FIELD,
            path,
            EXPECTED + f": {side.name}, the weights' architecture, is missing beside it (weights saved "
            "before issue 14 have none: use the trial's checkpoint file)",
        )
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            FIELD, path, f"{EXPECTED}: {side.name} readable JSON ({first_lines(exc)})"
        ) from None


def _weights_of_fold(state: Mapping[str, Any], fold: int, path: str) -> dict[str, Any]:
    """A weights file's one model: the ``fold<fold>.`` keys of a cross-validated trial's."""
    folds = sorted({int(k.split(".", 1)[0][4:]) for k in state if _is_fold_key(k)})
    if not folds:
        _single(fold, path)
        return dict(state)
    if fold not in folds:
        raise ConfigError("backbone.fold", fold, f"a fold of the saved weights: {', '.join(map(str, folds))}")
    prefix = f"fold{fold}."
    return {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def _is_fold_key(key: Any) -> bool:
    head = key.split(".", 1)[0] if isinstance(key, str) else ""
    return head.startswith("fold") and head[4:].isdigit() and "." in key


def _fold(folds: Any, fold: int, path: str) -> Any:
    if not isinstance(folds, list):
        raise ConfigError(FIELD, path, EXPECTED + ": a checkpoint whose fold models are not a list")
    if not 0 <= fold < len(folds):
        raise ConfigError(
            "backbone.fold", fold, f"a fold of the checkpoint's {len(folds)} fold models: 0..{len(folds) - 1}"
        )
    entry = folds[fold]
    return entry.get("model") if isinstance(entry, Mapping) else None


def _single(fold: int, path: str) -> None:
    if fold != 0:
        raise ConfigError(
            "backbone.fold", fold, "0: the saved weights are one model's, not a cross-validated trial's"
        )


# registered after the class: the catalog shows its whole docstring
BACKBONES.register(
    NAME, ranges={"fold": "[0, inf)"}, runtime=("item_shape",), summary=whole_doc(SavedBackbone)
)(SavedBackbone)
