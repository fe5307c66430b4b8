"""ROADMAP (Ramzi, Thome, Rambour, Audebert & Bitot, "Robust and Decomposable Average Precision
for Image Retrieval", NeurIPS 2021): a smooth rank approximation that upper-bounds the AP loss,
plus a decomposability term so that mini-batch AP tracks dataset AP."""

from __future__ import annotations

from typing import ClassVar

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import pair_masks, reduce, similarity, zero_like_graph


def upper_step(t: torch.Tensor, tau: float, rho: float, delta: float) -> torch.Tensor:
    """ROADMAP's surrogate ``H^-`` of the Heaviside step for negatives (``t = s_j - s_k``):

    - ``sigmoid(t / tau)`` for ``t <= 0``;
    - ``sigmoid(t / tau) + 0.5`` for ``0 < t <= delta``;
    - ``rho (t - delta) + sigmoid(delta / tau) + 0.5`` for ``t > delta``.

    ``H^-(t) >= H(t)`` everywhere (``>= 0`` below zero, ``>= 1`` above), so the smooth rank it
    gives is never below the true rank; the linear part keeps a gradient of ``rho`` for every
    negative ranked above a positive, however far above (a sigmoid would saturate there).
    """
    sig = torch.sigmoid(t / tau)
    linear = rho * (t - delta) + torch.sigmoid(t.new_tensor(delta / tau)) + 0.5
    return torch.where(t <= 0, sig, torch.where(t <= delta, sig + 0.5, linear))


def smooth_ap(
    s: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tau: float, rho: float, delta: float
) -> torch.Tensor:
    """Per-query smooth AP ``AP_s(i)`` (``nan`` for a query without positives).

    ``s`` is ``(n, m)`` query-to-gallery similarity, ``pos``/``neg`` ``(n, m)`` boolean masks of
    each query's positives and negatives in the gallery. For a positive ``k`` of query ``i``:

    - ``rank+(k) = 1 + sum_{j in P(i), j != k} H(s_ij - s_ik)`` (the exact step, without
      gradient, as in ROADMAP: a smoothed ``rank+`` would push well-ranked positives down);
    - ``rank-_s(k) = sum_{j in N(i)} H^-(s_ij - s_ik)`` (:func:`upper_step`);
    - ``AP_s(i) = 1/|P(i)| sum_{k in P(i)} rank+(k) / (rank+(k) + rank-_s(k))``.
    """
    diff = s[:, None, :] - s[:, :, None]  # diff[i, k, j] = s_ij - s_ik
    m = s.shape[1]
    not_self = ~torch.eye(m, dtype=torch.bool, device=s.device)
    above = (diff >= 0) & pos[:, None, :] & not_self[None]
    rank_pos = 1.0 + above.to(s.dtype).sum(dim=2)
    rank_neg = (upper_step(diff, tau, rho, delta) * neg[:, None, :]).sum(dim=2)
    precision = rank_pos / (rank_pos + rank_neg)
    count = pos.sum(dim=1)
    return (precision * pos).sum(dim=1) / count


@LOSSES.register(
    "roadmap",
    ranges={
        "lam": "[0, 1]",
        "tau": "(0, inf)",
        "rho": "[0, inf)",
        "delta": "[0, 1]",
        "pos_margin": "[-1, 1]",
        "neg_margin": "[-1, 1]",
    },
    search={
        "lambda": {"uniform": [0.0, 1.0], "start": 0.5},
        "pos_margin": {"uniform": [0.7, 1.0], "start": 0.9},
        "neg_margin": {"uniform": [0.3, 0.8], "start": 0.6},
        "tau": {"loguniform": [0.001, 0.1], "start": 0.01},
        "rho": {"loguniform": [1, 1000], "start": 100},
        "delta": {"uniform": [0.0, 0.2], "start": 0.05},
    },
)
class RoadmapLoss(BaseLoss):
    """ROADMAP: smooth-rank AP loss plus the decomposability term.

    Each sample of the batch is a query against the rest of the batch (itself excluded).

    - ``ap`` = ``1 - mean_i AP_s(i)`` over the queries with at least one positive, ``AP_s`` the
      smooth AP of :func:`smooth_ap` (SupAP in the paper). Since ``H^- >= H``, ``AP_s <= AP``:
      ``ap`` upper-bounds the true ``1 - mAP`` of the batch.
    - ``dec`` = ``mean_{P} [pos_margin - s_ij]+ + mean_{N} [s_ij - neg_margin]+``: the
      decomposability (calibration) term, a contrastive loss with absolute thresholds on the
      similarity. AP is not decomposable over batches (the mean of batch APs is not the dataset
      AP); pushing every positive above ``pos_margin`` and every negative below ``neg_margin``
      makes the scores comparable across batches. Each mean is over the pairs with a non-zero
      value, as pytorch-metric-learning's ``ContrastiveLoss`` that the authors' code uses.

    ``total = 2 (1 - lambda) * ap + 2 lambda * dec``: ``lambda`` is the paper's weight of the
    decomposability term, ``L = (1 - lambda) L_AP + lambda L_DG``, times 2 so that ``lambda = 0.5``
    gives the released configuration (both weights 1).

    Parameters (defaults from the paper / released configuration): ``lambda`` in [0, 1] (0.5);
    ``tau`` > 0 (0.01), the sigmoid temperature; ``rho`` >= 0 (100), the slope of ``H^-`` above
    ``delta``; ``delta`` in [0, 1] (0.05); ``pos_margin`` (0.9) and ``neg_margin`` (0.6) in
    [-1, 1], the decomposability thresholds (``beta`` and ``alpha`` in the paper). The released
    code shifts the linear part of ``H^-`` by a constant (its ``offset``); here it is continuous
    at ``delta``, as written in the paper.

    Follows: Ramzi et al. 2021, SupAP plus the decomposability loss, the latter as
    pytorch-metric-learning's ``ContrastiveLoss`` that the authors' code uses (tested). As published.
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("ap", "dec")
    balance: ClassVar[Balance | None] = Balance(
        "dec", "ap", "the decomposability term: positives above pos_margin, negatives below neg_margin", "the smooth-rank AP term"
    )

    def __init__(
        self,
        *,
        lam: float = 0.5,
        tau: float = 0.01,
        rho: float = 100.0,
        delta: float = 0.05,
        pos_margin: float = 0.9,
        neg_margin: float = 0.6,
    ) -> None:
        super().__init__()
        self.lam = lam
        self.tau = tau
        self.rho = rho
        self.delta = delta
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        s = similarity(embeddings)
        pos, neg = pair_masks(labels)
        queries = pos.any(dim=1)
        if bool(queries.any()):
            ap = (
                1.0 - smooth_ap(s[queries], pos[queries], neg[queries], self.tau, self.rho, self.delta).mean()
            )
        else:
            ap = zero_like_graph(embeddings)
        dec = reduce(torch.relu(self.pos_margin - s), pos, "active") + reduce(
            torch.relu(s - self.neg_margin), neg, "active"
        )
        return self.combine({"ap": ap, "dec": dec})
