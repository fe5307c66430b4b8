"""What the pretrained backbones share: where their weights come from and how they normalise pixels.

Weights named by a Hugging Face hub id are read from the hub cache (``HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), looked up there first, without the network.
Only a file the cache lacks is downloaded, and only when the machine is not marked offline
(``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``); offline, a missing file is a
:class:`~tuneddml.errors.ConfigError` that says what to do, raised at once (no network attempt).
The environment is read at each call, not when ``huggingface_hub`` is imported.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneddml.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: a checkpoint's weights, in the order timm and transformers prefer them
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """Whether the machine is marked offline (the hub's and transformers' own variables)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cache_dir() -> str:
    """The hub cache, resolved as huggingface_hub resolves it, from the environment of now."""
    if path := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.path.expanduser(path)
    if home := os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(home), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(os.path.expanduser(xdg), "huggingface", "hub")


def split_revision(repo: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); without ``@`` the revision is None (main)."""
    name, at, revision = repo.partition("@")
    return name, (revision if at else None)


def not_cached(field: str, value: Any, repo: str, instead: str) -> ConfigError:
    return ConfigError(
        field,
        value,
        f"weights in the Hugging Face cache {cache_dir()}, which lacks {repo} while the machine is offline "
        f"(HF_HUB_OFFLINE=1): run once on a machine online, or pre-fill the cache "
        f"(hf download {repo}, the huggingface_hub command), or {instead}",
    )


def cached_file(repo: str, filenames: Sequence[str]) -> str | None:
    """The first of ``filenames`` that the cache holds for ``repo`` (``org/name[@rev]``), else None."""
    from huggingface_hub import try_to_load_from_cache

    name, revision = split_revision(repo)
    for filename in filenames:
        path = try_to_load_from_cache(name, filename, cache_dir=cache_dir(), revision=revision)
        if isinstance(path, str):  # not None, nor the cache's "known not to exist" marker
            return path
    return None


def known_missing(repo: str, filename: str) -> bool:
    """Whether the cache records that the hub has no such file (huggingface_hub's ``.no_exist``)."""
    from huggingface_hub import try_to_load_from_cache

    name, revision = split_revision(repo)
    found = try_to_load_from_cache(name, filename, cache_dir=cache_dir(), revision=revision)
    return found is not None and not isinstance(found, str)


def hub_file(
    repo: str, filenames: Sequence[str], *, field: str, value: Any, instead: str, download: bool = True
) -> str | None:
    """The first of ``filenames`` in the cache; else, online, the first the hub has, downloaded into
    the cache. Offline and not cached: a ConfigError. ``download=False`` (a check before a search)
    returns None where a download would be needed."""
    if path := cached_file(repo, filenames):
        return path
    if offline():
        raise not_cached(field, value, repo, instead)
    if not download:
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    name, revision = split_revision(repo)
    for filename in filenames:
        try:
            return hf_hub_download(name, filename, revision=revision, cache_dir=cache_dir())
        except LocalEntryNotFoundError as exc:  # no connection: the hub could not be asked
            raise ConfigError(field, value, f"a reachable Hugging Face hub, or {instead} ({exc})") from None
        except EntryNotFoundError:
            continue
        except OSError as exc:  # no such repository, a gated one, an HTTP error
            raise ConfigError(field, value, f"a Hugging Face hub repository ({exc})") from None
    raise ConfigError(field, value, f"a hub repository holding one of {', '.join(filenames)}")


def hub_folder(
    repo: str,
    *,
    weights: Sequence[str] | None,
    field: str,
    value: Any,
    instead: str,
    optional: Sequence[str] = (),
    download: bool = True,
) -> Path | None:
    """The cache's snapshot folder of ``repo`` holding its ``config.json``, one of ``weights`` (with
    the shards a ``*.index.json`` names) and, where the hub has them, the ``optional`` files."""
    config = hub_file(repo, ["config.json"], field=field, value=value, instead=instead, download=download)
    if weights:
        alternatives = [*weights, *(f"{w}.index.json" for w in weights)]
        found = hub_file(repo, alternatives, field=field, value=value, instead=instead, download=download)
        if found and found.endswith(".index.json"):
            for shard in sorted(set(json.loads(Path(found).read_text())["weight_map"].values())):
                hub_file(repo, [shard], field=field, value=value, instead=instead, download=download)
    for filename in optional:
        if cached_file(repo, [filename]) is None and not known_missing(repo, filename) and not offline() and download:
            try:
                hub_file(repo, [filename], field=field, value=value, instead=instead)
            except ConfigError:
                pass  # the hub has no such file: the caller's default applies
    return Path(config).parent if config else None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError("backbone.model", str(path), f"a readable JSON file ({exc})") from None
    return data if isinstance(data, dict) else {}


def image_channels(item_shape: tuple[int, ...], name: str) -> int:
    """The channels of image items, refusing vectors and images of other than 1 or 3 channels."""
    if len(item_shape) != 3:
        raise ConfigError("backbone", name, "an image backbone for image data; 'mlp' for vectors")
    if item_shape[0] not in (1, 3):
        raise ConfigError("backbone", name, f"images of 1 or 3 channels for a pretrained backbone (not {item_shape[0]})")
    return item_shape[0]


class PixelNormalised(nn.Module):
    """A backbone whose inputs, floats in [0, 1], are normalised inside ``forward`` with its own
    ``mean`` and ``std`` (grey images repeated to the model's channels first). ``input_size`` is its
    native side length in pixels; other sizes work too."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: int | None = None

    def set_pixels(
        self, mean: Sequence[float] | float, std: Sequence[float] | float, input_size: int | None, channels: int
    ) -> None:
        mean = (float(mean),) if isinstance(mean, (int, float)) else mean  # a processor's single value
        std = (float(std),) if isinstance(std, (int, float)) else std
        if len(mean) != channels:  # one value for all channels, or RGB statistics of a grey model: their mean
            mean = (sum(mean) / len(mean),) * channels
        if len(std) != channels:
            std = (sum(std) / len(std),) * channels
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_size = int(input_size) if input_size else None
        self.channels = channels
        # not persistent: checkpoints hold only weights, the values come from the model's config
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.pixel_mean) / self.pixel_std


def size_of(value: Any) -> int | None:
    """A side length from a config's size: an int, ``(C, H, W)``/``(H, W)``, or a processor's dict."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value:
        return int(value[-2] if len(value) >= 2 else value[0])
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if isinstance(value.get(key), int):
                return int(value[key])
    return None


def first_lines(exc: BaseException) -> str:
    """An exception's message in one line (its first two lines: torch's load errors start vaguely)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(exc).__name__


def whole_doc(cls: type) -> str:
    """A class's docstring on one line: the catalog's summary of a backbone whose every sentence
    matters (its parameters, where weights come from)."""
    return " ".join((inspect.getdoc(cls) or "").split())
