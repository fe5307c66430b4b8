"""The contract every loss keeps.

A loss is an ``nn.Module`` whose ``forward(embeddings, labels)`` returns a dict of named terms
plus ``total``, the weighted sum ``sum_t weights()[t] * terms[t]``. The searcher, MLflow and the
plots all see the terms by name. Learnable state (proxies, ``beta``, term weights) lives in the
loss's own parameters; the trainer gives them their own learning rate (``proxy_lr``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class BaseLoss(nn.Module):
    """Base class of all losses: named terms, their weights, and the total."""

    #: names of the terms ``forward`` returns, besides ``total``
    term_names: ClassVar[tuple[str, ...]] = ()
    #: the trainer L2-normalises embeddings before the loss unless this is False
    #: (probabilistic losses read certainty from the embedding norm)
    expects_normalized: ClassVar[bool] = True
    #: what kind of miner output the loss can use ("triplets", "pairs"); empty: takes no miner
    miner_outputs: ClassVar[tuple[str, ...]] = ()
    #: miner built when the trial says ``miner=default`` (None: no miner)
    default_miner: ClassVar[str | None] = None

    def weights(self) -> dict[str, float]:
        """Weight of each term in ``total`` (e.g. ``{"pos": lam, "ent": 1 - lam}``)."""
        return {name: 1.0 for name in self.term_names}

    def combine(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add ``total`` = weighted sum of ``terms`` and return the dict."""
        weights = self.weights()
        total = sum(weights[name] * terms[name] for name in self.term_names)
        out = dict(terms)
        out["total"] = total if isinstance(total, torch.Tensor) else torch.as_tensor(total)
        return out

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, context: Any) -> None:
        """Hook called by the trainer before each epoch (CCP re-initialises proxies here).

        ``context`` is a :class:`tuneddml.training.loop.EpochContext` giving access to the model
        and a function that embeds training samples.
        """
