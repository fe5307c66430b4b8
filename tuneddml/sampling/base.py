"""The contracts of the sampling axis: batch samplers, in-batch miners, embedding augmenters.

- A :class:`BatchSampler` says which training items form each batch of an epoch. Samplers that
  build batches from the model's embeddings (class representatives, hierarchical super-groups)
  read them in :meth:`~BatchSampler.observe` and keep what they learnt in their
  :meth:`~BatchSampler.state_dict`; both are no-ops here, so the trainer calls them on every
  sampler. A sampler whose method adds a term to the loss (class representatives: the
  projection's proximal term) returns it from :meth:`~BatchSampler.regulariser` (none here).
- A :class:`Miner` picks the triplets or pairs of a batch a loss looks at, on L2-normalised
  embeddings (cosine similarity ``s_ij``); it returns index tensors, never gradients, of the kind
  it declares in :attr:`Miner.output`: ``"triplets"`` ``(anchor, positive, negative)`` or
  ``"pairs"`` ``(a1, p, a2, n)`` (positive pairs ``(a1, p)``, negative pairs ``(a2, n)``). A loss
  declares which kinds it can use (``BaseLoss.miner_outputs``).
- An :class:`EmbeddingAugmenter` sits between the model and the loss during training only:
  ``aug(embeddings, labels) -> (embeddings, labels)``, the real rows first, synthetic ones (with
  their labels) after; like a loss it has an ``on_epoch_start`` hook (a no-op here). Synthetic
  rows carry labels of the batch, unless the augmenter declares ``makes_classes``: then they may
  carry new labels ``>= num_classes``, whose proxies it hands the loss (the trial's loss must be
  one of :mod:`tuneddml.losses.synthetic`'s, checked before training). Before training the
  trainer hands every augmenter the trial's loss (``attach_loss``, a no-op here).

The registries in :mod:`tuneddml.sampling` refuse, at import, a component that is not one of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # type only: the loss interface owns the epoch context
    from tuneddml.losses.base import EpochContext

MINER_OUTPUTS: tuple[str, ...] = ("triplets", "pairs")


class BatchSampler:
    """Yields the index arrays of one epoch's batches.

    ``check`` runs before training and raises :class:`~tuneddml.errors.ConfigError` when the
    batch size, the sampler's parameters and the data's class sizes cannot work together.
    """

    def check(self, labels: np.ndarray, batch_size: int) -> None:
        """Raise ConfigError if the sampler cannot make batches of ``batch_size`` from ``labels``."""

    def num_batches(self, labels: np.ndarray, batch_size: int) -> int:
        return max(1, len(labels) // batch_size)

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def observe(self, indices: np.ndarray, embeddings: torch.Tensor) -> None:
        """The L2-normalised embeddings (no gradient) of a training batch, after the forward pass."""

    def regulariser(
        self, model: nn.Module, indices: np.ndarray, embeddings: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The sampler's own loss terms for this training step, already weighted (none here).

        Called by the trainer after the loss with the model, the batch's ``indices`` and the
        embeddings the loss saw (the batch's rows first); the trainer reports each term beside
        the loss's and adds their sum to ``total``. Names differ from the loss's and ``total``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the sampler learnt (saved with the trial's checkpoint); empty for most."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class Miner:
    """Picks the triplets or pairs of a batch: ``miner(embeddings, labels)`` -> index tensors."""

    #: ``"triplets"`` or ``"pairs"`` (see the module docstring)
    output: ClassVar[str]

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


class EmbeddingAugmenter(nn.Module):
    """Adds synthetic embeddings (and their labels) to a training batch; see the module docstring."""

    #: True: synthetic rows may belong to new classes (labels >= num_classes; see the module docstring)
    makes_classes: ClassVar[bool] = False

    def attach_loss(self, loss: nn.Module) -> None:
        """The trial's loss, handed over once before training (kept by augmenters that use it)."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, context: EpochContext) -> None:
        """Hook called by the trainer before each epoch (IAA re-estimates its class statistics)."""


def _subclass_of(base: type, kind: str) -> Any:
    def contract(name: str, factory: Any) -> None:
        if not (isinstance(factory, type) and issubclass(factory, base)):
            raise ValueError(f"{kind} {name}: a {kind} is a {base.__name__} subclass")
        if base is Miner and getattr(factory, "output", None) not in MINER_OUTPUTS:
            raise ValueError(f"miner {name}: declare output = one of {', '.join(MINER_OUTPUTS)}")

    return contract


check_sampler_class = _subclass_of(BatchSampler, "sampler")
check_miner_class = _subclass_of(Miner, "miner")
check_augmenter_class = _subclass_of(EmbeddingAugmenter, "embedding_aug")
