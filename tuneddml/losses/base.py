"""The contract every loss keeps.

A loss is an ``nn.Module`` whose ``forward(embeddings, labels)`` returns a dict of named terms
plus ``total``, the weighted sum ``sum_t weights()[t] * terms[t]``. The searcher, MLflow and the
plots all see the terms by name. Learnable state (proxies, ``beta``, term weights) lives in the
loss's own parameters; the trainer gives them their own learning rate (``proxy_lr``).

Every loss declares its :attr:`~BaseLoss.family` (``pair``, ``proxy`` or ``wrapper``: the one
source wrappers read to choose their members), and every loss with a ``lambda`` its
:class:`Balance`. Before each epoch the trainer calls ``on_epoch_start(epoch, context)`` with an
:class:`EpochContext`.

**Per-sample state.** A loss that keeps state per training sample (a bank of each sample's last
embedding, say) declares :attr:`BaseLoss.uses_indices` and takes ``forward(embeddings, labels,
indices)``: the trainer then passes each batch's training-set indices (:meth:`BaseLoss.batch_terms`),
a LongTensor aligned with the rows the loss gets; rows an embedding augmenter appended after the
real ones have index ``-1`` (no sample). Such a loss lists the runtime argument ``num_train`` (the
training set's size, ``0`` where the loss is built without data) to size its state, which it keeps
in buffers, so that it is saved and restored with the loss's ``state_dict``. Wrappers forward the
indices to the members that use them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

Family = Literal["pair", "proxy", "wrapper"]
FAMILIES: tuple[str, ...] = ("pair", "proxy", "wrapper")


@dataclass
class EpochContext:
    """What epoch hooks (``on_epoch_start`` of losses and embedding augmenters) may use."""

    epoch: int
    model: nn.Module
    train_labels: np.ndarray
    embed_train: Callable[[np.ndarray], torch.Tensor]  # indices -> normalised embeddings (no grad)
    device: torch.device
    #: the previous epoch's evaluation metrics on the validation classes ({} before the first
    #: evaluation, and in a split=test trial: the test classes never steer training)
    metrics: dict[str, float] = field(default_factory=dict)
    #: drops the optimiser's per-parameter state (Adam's moments, step count) of these parameters,
    #: e.g. after a loss moved them to new values; the default does nothing
    reset_optimizer_state: Callable[[Sequence[nn.Parameter]], None] = lambda params: None


@dataclass(frozen=True)
class Balance:
    """What a loss's ``lambda`` weighs, under one convention for every loss:

        total = scale * lambda * <first> + scale * (1 - lambda) * <second> + <other terms>

    with ``scale = 2``, so that ``lambda = 0.5`` is the loss's usual unweighted form and
    ``lambda > 0.5`` leans toward ``first``. ``first`` and ``second`` name a term, or a group of
    terms by a prefix ending in ``"."`` (``"pair."``: every term of the hybrid loss's pair member).
    ``first_means`` / ``second_means`` say in plain words what each side does.
    """

    first: str
    second: str
    first_means: str
    second_means: str
    scale: float = 2.0

    def side(self, term: str) -> str | None:
        """``"first"``, ``"second"`` or None: which side of the balance a term belongs to."""
        for name, group in (("first", self.first), ("second", self.second)):
            if term == group or (group.endswith(".") and term.startswith(group)):
                return name
        return None

    def weights(self, lam: float) -> dict[str, float]:
        """The two weights of single-term sides, by term name."""
        return {self.first: self.scale * lam, self.second: self.scale * (1.0 - lam)}

    def label(self) -> str:
        """One line for plots and the catalog, e.g. ``lambda: pos (pull positives ...) vs ent (...)``."""
        return f"lambda: {self.first.rstrip('.')} ({self.first_means}) vs {self.second.rstrip('.')} ({self.second_means})"

    def formula(self) -> str:
        s = f"{self.scale:g}"
        return f"total = {s} lambda * {self.first.rstrip('.')} + {s} (1 - lambda) * {self.second.rstrip('.')}"


class BaseLoss(nn.Module):
    """Base class of all losses: named terms, their weights, and the total."""

    #: ``"pair"``: compares the batch's samples with each other; ``"proxy"``: owns per-class
    #: vectors in the embedding space (proxies, centres, class weights); ``"wrapper"``: made of
    #: other losses (never a member of another wrapper). Every registered loss declares it.
    family: ClassVar[Family]
    #: names of the terms ``forward`` returns, besides ``total``
    term_names: ClassVar[tuple[str, ...]] = ()
    #: the trainer L2-normalises embeddings before the loss unless this is False
    #: (probabilistic losses read certainty from the embedding norm)
    expects_normalized: ClassVar[bool] = True
    #: what kind of miner output the loss can use ("triplets", "pairs"); empty: takes no miner
    miner_outputs: ClassVar[tuple[str, ...]] = ()
    #: miner built when the trial says ``miner=default`` (None: no miner)
    default_miner: ClassVar[str | None] = None
    #: what ``lambda`` weighs (every loss with a ``lambda`` parameter declares it; see
    #: :class:`Balance`); the weight of the balanced terms comes from it and ``self.lam``
    balance: ClassVar[Balance | None] = None
    lam: float = 0.5
    #: ``forward`` takes ``indices`` (the batch's training-set indices, -1 for synthetic rows) and
    #: the trainer passes them (see the module docstring); wrappers set it from their members
    uses_indices: ClassVar[bool] = False

    def weights(self) -> dict[str, float]:
        """Weight of each term in ``total``: the :attr:`balance` pair ``2 lambda`` and
        ``2 (1 - lambda)``, 1 for the other terms (losses with other weighted terms extend this)."""
        out = {name: 1.0 for name in self.term_names}
        if self.balance is not None:
            out.update(self.balance.weights(self.lam))
        return out

    def combine(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add ``total`` = weighted sum of ``terms`` and return the dict."""
        weights = self.weights()
        total = sum(weights[name] * terms[name] for name in self.term_names)
        out = dict(terms)
        out["total"] = total if isinstance(total, torch.Tensor) else torch.as_tensor(total)
        return out

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch_terms(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: Any
    ) -> dict[str, torch.Tensor]:
        """What the trainer calls for a training batch: ``self(embeddings, labels)``, with
        ``indices=`` :func:`row_indices` when the loss :attr:`uses_indices`. ``indices``: the
        training-set index of each real row (the first ``len(indices)`` rows)."""
        if not self.uses_indices:
            return self(embeddings, labels)
        return self(embeddings, labels, indices=row_indices(indices, len(labels), embeddings.device))

    def on_epoch_start(self, epoch: int, context: EpochContext) -> None:
        """Hook called by the trainer before each epoch (CCP re-initialises proxies here; LSD takes
        its teacher): the context gives the model and a function that embeds training samples."""


def row_indices(indices: Any, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(rows,)`` LongTensor: ``indices`` (the real rows' training-set indices) followed by ``-1``
    for each row an embedding augmenter appended after them."""
    real = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
    if len(real) > rows:
        raise ValueError(f"{len(real)} indices for {rows} rows")
    out = torch.full((rows,), -1, dtype=torch.long)
    out[: len(real)] = real
    return out.to(device)


def check_loss_class(name: str, factory: Any) -> None:
    """The registry's contract for losses: a :class:`BaseLoss` subclass that declares its family."""
    if not (isinstance(factory, type) and issubclass(factory, BaseLoss)):
        raise ValueError(f"loss {name}: a loss is a BaseLoss subclass")
    family = getattr(factory, "family", None)
    if family not in FAMILIES:
        raise ValueError(f"loss {name}: declare family = one of {', '.join(FAMILIES)} (got {family!r})")
