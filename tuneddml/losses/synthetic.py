"""Synthetic classes in a proxy loss: the hook an embedding augmenter that makes new classes
(``EmbeddingAugmenter.makes_classes``, e.g. ``class_generation``) uses.

A proxy loss with :class:`SyntheticClasses` owns ``proxies`` (``(C * K, d)``, class ``c`` owning
rows ``c*K .. c*K + K-1``), ``num_classes`` (``C``) and ``proxies_per_class`` (``K``). For one
forward, an augmenter may hand it

- the proxies of ``M`` synthetic classes (:meth:`~SyntheticClasses.add_classes`): labels
  ``C .. C+M-1`` of that forward are scored against them, exactly as real classes against their
  own proxies (for Proxy-Anchor they join the anchors, for Proxy-NCA and the normalised softmax
  the classes of the softmax); and
- extra named terms (the augmenter's own objective), returned beside the loss's terms and added
  to ``total`` with their weights, so that the trainer reports and optimises them.

Both are consumed by the next forward. Without them the loss is exactly what it was. Inside
:meth:`~SyntheticClasses.frozen_proxies` every proxy (staged ones included) is used detached:
the loss then scores embeddings without training the proxies.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from tuneddml.errors import ConfigError


class SyntheticClasses:
    """Mixin of proxy losses that can score synthetic classes; see the module docstring."""

    proxies: torch.nn.Parameter
    num_classes: int
    proxies_per_class: int

    def class_proxies(self) -> torch.Tensor:
        """``(C, K, d)``: each class's proxies, as trained (not normalised, with their gradient)."""
        return self.proxies.view(self.num_classes, self.proxies_per_class, -1)

    def add_classes(
        self,
        proxies: torch.Tensor | None,
        terms: Mapping[str, torch.Tensor] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        """For the next forward only: classes ``C .. C+M-1`` have ``proxies`` (``(M, K, d)``;
        None: no new class), and ``terms`` are added to its output and to ``total`` with
        ``weights`` (1 where not given)."""
        if proxies is not None and tuple(proxies.shape[1:]) != tuple(self.class_proxies().shape[1:]):
            raise ValueError(f"synthetic proxies of shape {tuple(proxies.shape)}: expected (M, K, d)")
        self.__dict__["_staged"] = (proxies, dict(terms or {}), dict(weights or {}))

    @contextmanager
    def frozen_proxies(self) -> Iterator[None]:
        """Forwards inside use every proxy detached (no gradient reaches them)."""
        self.__dict__["_frozen"] = True
        try:
            yield
        finally:
            self.__dict__["_frozen"] = False

    def proxies_in_use(self) -> tuple[torch.Tensor, int]:
        """``(proxies, classes)`` for this forward: ``(C * K, d)`` and ``C``, or with the staged
        synthetic classes appended, ``((C + M) * K, d)`` and ``C + M``."""
        staged = self.__dict__.get("_staged")
        proxies = self.proxies
        extra = None if staged is None else staged[0]
        if extra is not None:
            proxies = torch.cat([proxies, extra.reshape(-1, proxies.shape[1]).to(proxies.dtype)])
        if self.__dict__.get("_frozen", False):
            proxies = proxies.detach()
        return proxies, len(proxies) // self.proxies_per_class

    def with_added_terms(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``out`` (the loss's terms and ``total``) with the staged terms added; clears the staging."""
        staged = self.__dict__.pop("_staged", None)
        if staged is None or not staged[1]:
            return out
        _, terms, weights = staged
        out = dict(out)
        total = out["total"]
        for name, value in terms.items():
            if name in out:
                raise ValueError(f"added term {name!r} is already a term of the loss")
            out[name] = value.to(total.dtype)
            total = total + weights.get(name, 1.0) * out[name]
        out["total"] = total
        return out


def synthetic_class_losses() -> list[str]:
    """The registered losses that can take synthetic classes."""
    from tuneddml.losses import LOSSES

    return [n for n in LOSSES.names() if _takes(LOSSES.get(n).factory)]


def _takes(factory: Any) -> bool:
    return isinstance(factory, type) and issubclass(factory, SyntheticClasses)


def check_synthetic_classes(loss_name: str, loss: Any, aug_name: str, augmenter: Any) -> None:
    """ConfigError unless ``loss`` can take the new classes ``augmenter`` makes (if it makes any)."""
    if getattr(augmenter, "makes_classes", False) and not isinstance(loss, SyntheticClasses):
        choices = ", ".join(synthetic_class_losses())
        raise ConfigError(
            "loss", loss_name, f"one of {choices}: embedding_aug={aug_name} needs proxies for new classes"
        )
