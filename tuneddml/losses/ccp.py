"""Chance-constrained proxies (CCP-DML; Gurbuz, Can & Alatan, "Deep Metric Learning with Chance
Constraints", 2022): a proxy loss whose proxies are re-initialised every few epochs to the
embeddings of chosen training samples."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss, Family


def farthest_point_picks(points: torch.Tensor, k: int) -> list[int]:
    """Greedy k-centre selection (Gonzalez, 1985): start from the point nearest the mean, then
    repeatedly add the point farthest from those already picked. The picked set's covering radius
    ``max_x min_j |x - x_j|`` is at most twice the smallest possible with ``k`` centres. Returns
    ``min(k, len(points))`` distinct row indices."""
    k = min(k, len(points))
    if k == 0:
        return []
    center = points.mean(dim=0, keepdim=True)
    picks = [int(torch.cdist(points, center).squeeze(1).argmin())]
    nearest = torch.cdist(points, points[picks[0]][None]).squeeze(1)
    for _ in range(k - 1):
        nxt = int(nearest.argmax())
        picks.append(nxt)
        nearest = torch.minimum(nearest, torch.cdist(points, points[nxt][None]).squeeze(1))
    return picks


@LOSSES.register(
    "ccp",
    ranges={"lam": "[0, 1]", "every": "[1, 1000]", "proxies_per_class": "[1, 100]", "pool": "[1, 100000]"},
    runtime=("num_classes", "embedding_size"),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "base": {"choice": ["proxy_anchor", "softtriple", "normsoftmax", "multi_proxy_anchor", "proxy_nca"]},
        "proxies_per_class": {"choice": [4, 1, 2, 8]},
        "every": {"choice": [1, 2, 3]},  # start at 1: with 3 short epochs, every=3 never re-initialises
        "pool": {"choice": [64, 32, 128]},
    },
)
class ChanceConstrainedProxies(BaseLoss):
    """Any proxy loss ``base``, with its proxies periodically re-initialised to sample embeddings.

    Gurbuz et al. read proxy-based DML as a feasibility problem under chance constraints: each
    sample should lie within a ball around one of its class's proxies, and the worst case of a
    proxy loss is governed by the radius of the smallest such balls covering the class's samples.
    Smaller covering radii, hence several proxies per class, help. They solve it by iterative
    projections: train the proxy loss for a while, then re-initialise the proxies with the
    embeddings of deliberately chosen samples, and repeat.

    Schedule: before epochs ``1 + every``, ``1 + 2 every``, ... (after each ``every`` epochs of
    training) the proxies are re-initialised; epoch 1 starts from the base loss's own proxies.

    Choice rule (this implementation's reading of the paper's idea): for each class ``c``, embed
    (in eval mode, normalised) up to ``pool`` of its training samples, drawn at random, seeded by
    the trial's seed and the epoch; pick ``K = proxies_per_class`` of them by greedy k-centre
    selection (:func:`farthest_point_picks`), the classic 2-approximation of the minimum covering
    radius the chance constraints ask for; proxy ``c*K + j`` becomes the ``j``-th pick's
    embedding, rescaled to that proxy's previous norm (so the optimiser's step size relative to
    the proxy is unchanged). A class with fewer than ``K`` samples keeps its remaining proxies.

    ``base`` must be a proxy loss with ``proxies`` of shape ``(C * K, d)`` (class ``c`` owning rows
    ``c*K .. c*K + K-1``) and the parameters ``proxies_per_class`` and ``lambda``. Terms and
    weights are the base loss's; ``lambda`` is passed to it.

    Parameters: ``base`` (one of the proxy losses, default ``proxy_anchor``); ``lambda`` in [0, 1]
    (0.5); ``every`` epochs in [1, 1000] (3); ``proxies_per_class`` in [1, 100] (4); ``pool``
    samples per class embedded for the choice, in [1, 100000] (64). The base loss's other
    parameters keep their defaults. The optimiser's moment estimates for the proxies are not
    reset at a re-initialisation (the loss does not own the optimiser).

    Timing matters: the embeddings of a barely trained network sit in one narrow cone, and proxies
    moved there raise every negative similarity (on ``glyphs-tiny``, re-initialising Proxy-Anchor's
    proxies after one short epoch raised its loss and gained nothing, while SoftTriple gained);
    choose ``every`` so that the network has trained before the first re-initialisation.
    """

    family: ClassVar[Family] = "wrapper"
    term_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        base: Literal[
            "proxy_anchor", "proxy_nca", "multi_proxy_anchor", "softtriple", "normsoftmax", "vmf_proxies"
        ] = "proxy_anchor",
        lam: float = 0.5,
        every: int = 3,
        proxies_per_class: int = 4,
        pool: int = 64,
    ) -> None:
        super().__init__()
        entry = LOSSES.get(base, "loss.base")
        for needed in ("proxies_per_class", "lambda"):
            if entry.param(needed) is None:
                raise ConfigError("loss.base", base, f"a proxy loss with a {needed!r} parameter")
        self.base = LOSSES.build(
            base,
            {"proxies_per_class": proxies_per_class, "lambda": lam},
            field="loss",
            num_classes=num_classes,
            embedding_size=embedding_size,
        )
        if not isinstance(getattr(self.base, "proxies", None), torch.nn.Parameter):
            raise ConfigError("loss.base", base, "a proxy loss with a 'proxies' parameter")
        self.term_names = self.base.term_names  # type: ignore[misc]
        self.balance = self.base.balance  # type: ignore[misc]  # lambda is the base loss's
        self.expects_normalized = self.base.expects_normalized  # type: ignore[misc]
        self.lam = lam
        self.num_classes = num_classes
        self.every = every
        self.proxies_per_class = proxies_per_class
        self.pool = pool
        self.reinitialisations = 0

    def weights(self) -> dict[str, float]:
        return self.base.weights()

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if self.base.uses_indices:  # no proxy base does (ccp's uses_indices stays False)
            return self.base(embeddings, labels, indices=indices)
        return self.base(embeddings, labels)

    def on_epoch_start(self, epoch: int, context: Any) -> None:
        self.base.on_epoch_start(epoch, context)
        if epoch > 1 and (epoch - 1) % self.every == 0:
            self.reinitialise(context, seed=(torch.initial_seed() % 2**32, epoch))

    @torch.no_grad()
    def reinitialise(self, context: Any, seed: Any) -> None:
        """Set each class's proxies to the embeddings of its greedy k-centre picks (see above)."""
        rng = np.random.default_rng(seed)
        labels = np.asarray(context.train_labels)
        k = self.proxies_per_class
        members = [np.flatnonzero(labels == c) for c in range(self.num_classes)]
        chosen = [rng.choice(m, size=min(self.pool, len(m)), replace=False) for m in members]
        flat = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
        if len(flat) == 0:
            return
        embedded = context.embed_train(flat)
        proxies = self.base.proxies
        start = 0
        for c, idx in enumerate(chosen):
            points = embedded[start : start + len(idx)].to(proxies.device, proxies.dtype)
            start += len(idx)
            for j, pick in enumerate(farthest_point_picks(points, k)):
                row = c * k + j
                proxies[row] = points[pick] / points[pick].norm().clamp_min(1e-12) * proxies[row].norm()
        self.reinitialisations += 1
