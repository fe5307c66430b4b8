"""Distance-weighted sampling of negatives (Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in
Deep Embedding Learning", ICCV 2017)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from tuneddml.errors import ConfigError
from tuneddml.sampling import MINERS
from tuneddml.sampling.base import Miner


def log_inverse_density(distance: torch.Tensor, dim: int) -> torch.Tensor:
    """``log q(d)^-1`` for the distance ``d`` between two points drawn uniformly on the unit sphere
    ``S^{dim-1}`` (Wu et al., sec. 4)::

        q(d) ∝ d^(dim-2) (1 - d^2 / 4)^((dim-3)/2),   0 < d <= 2

    up to an additive constant. ``d`` must lie in (0, 2); the caller clips it.
    """
    return (2.0 - dim) * torch.log(distance) - (dim - 3.0) / 2.0 * torch.log(1.0 - distance.pow(2) / 4.0)


@MINERS.register("distance_weighted", ranges={"cutoff": "(0, 2)", "nonzero_loss_cutoff": "(0, 2]"})
class DistanceWeightedMiner(Miner):
    """Samples one negative per (anchor, positive) pair, with probability inversely proportional
    to how common its distance is on the hypersphere; returns triplets ``(a, p, n)``.

    On the unit sphere of a high dimension ``dim``, random pairs concentrate at distance
    ``sqrt(2)``; uniform sampling therefore sees almost only such negatives, and hard-negative
    mining only the noisiest ones. Wu et al. instead draw a negative ``n`` of anchor ``a`` with

        P(n | a) ∝ q(max(D_an, cutoff))^-1   if D_an < nonzero_loss_cutoff, else 0

    (``q`` in :func:`log_inverse_density`), which spreads the samples over all distances. The
    clip at ``cutoff`` (0.5 in the paper) bounds the weights, the paper's ``min(lambda, q^-1)``;
    negatives beyond ``nonzero_loss_cutoff`` (1.4 = the margin loss's ``beta + margin``) would
    give a zero loss and are not drawn. An anchor with no negative under that cutoff draws its
    negative uniformly among all its negatives, as the paper's code does.

    Every ordered positive pair ``(a, p)`` of the batch forms one triplet, so a P x K batch
    gives ``P K (K-1)`` triplets. Sampling uses torch's global generator, seeded by the trial.
    Distances are those of the L2-normalised embeddings.

    Follows: Wu et al. 2017, distance-weighted sampling (inverse-density weights, clipped at ``cutoff``), with the paper's
    code's fallback to a uniform negative. As published.
    """

    output: ClassVar[str] = "triplets"

    def __init__(self, *, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4) -> None:
        if cutoff >= nonzero_loss_cutoff:
            raise ConfigError(
                "miner.cutoff", cutoff, f"a value below miner.nonzero_loss_cutoff={nonzero_loss_cutoff}"
            )
        self.cutoff = cutoff
        self.nonzero_loss_cutoff = nonzero_loss_cutoff

    @torch.no_grad()
    def probabilities(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(n, n)`` matrix: row ``a`` is the distribution negatives of anchor ``a`` are drawn
        from (all zero for an anchor without negatives)."""
        e = F.normalize(embeddings.detach(), dim=1)
        dist = torch.cdist(e, e)
        neg = labels[:, None] != labels[None, :]
        eligible = neg & (dist < self.nonzero_loss_cutoff)
        # keep 1 - d^2/4 > 0 for antipodal points (they are only drawn if nonzero_loss_cutoff = 2)
        clipped = dist.clamp(min=self.cutoff, max=2.0 - 1e-6)
        log_w = log_inverse_density(clipped, e.shape[1]).masked_fill(~eligible, float("-inf"))
        probs = torch.softmax(log_w, dim=1)
        fallback = neg & ~eligible.any(dim=1, keepdim=True)
        uniform = fallback / fallback.sum(dim=1, keepdim=True).clamp_min(1)
        return torch.where(eligible.any(dim=1, keepdim=True), probs, uniform.to(probs.dtype))

    @torch.no_grad()
    def __call__(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = self.probabilities(embeddings, labels)
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        has_neg = probs.sum(dim=1) > 0
        a, p = torch.nonzero(same & has_neg[:, None], as_tuple=True)
        if len(a) == 0:
            empty = labels.new_zeros(0, dtype=torch.long)
            return empty, empty.clone(), empty.clone()
        n = torch.multinomial(probs[a], 1).squeeze(1)
        return a, p, n
