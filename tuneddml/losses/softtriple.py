"""SoftTriple loss (Qian, Shang, Sun, Hu, Li & Jin, "SoftTriple Loss: Deep Metric Learning Without
Triplet Sampling", ICCV 2019): a softmax over classes with K centres per class."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import class_similarity, init_proxies


def center_spread(proxies: torch.Tensor, proxies_per_class: int) -> torch.Tensor:
    """SoftTriple's regulariser: ``sum_c sum_{t < t'} |w_ct - w_ct'|`` over unit centres, with
    ``|w - w'| = sqrt(2 + 1e-5 - 2 w.w')`` (the ``1e-5`` keeps the gradient finite when two
    centres meet), divided by ``C K (K - 1)``. Zero for ``K = 1``."""
    k = proxies_per_class
    if k == 1:
        return proxies.sum() * 0.0
    w = F.normalize(proxies, dim=1).view(-1, k, proxies.shape[1])  # (C, K, d)
    gram = w @ w.transpose(1, 2)  # (C, K, K)
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=proxies.device), diagonal=1)
    dist = torch.sqrt(2.0 + 1e-5 - 2.0 * gram[:, upper])
    return dist.sum() / (w.shape[0] * k * (k - 1))


@LOSSES.register(
    "softtriple",
    ranges={
        "lam": "[0, 1]",
        "scale": "(0, inf)",
        "gamma": "(0, inf)",
        "margin": "[0, 1]",
        "tau": "[0, 10]",
        "proxies_per_class": "[1, 100]",
    },
    runtime=("num_classes", "embedding_size"),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "margin": {"uniform": [0.0, 0.05], "start": 0.01},
        "scale": {"uniform": [10, 40], "start": 20},
        "gamma": {"loguniform": [0.03, 0.3], "start": 0.1},
        "tau": {"uniform": [0.0, 0.4], "start": 0.2},
        "proxies_per_class": {"choice": [10, 5, 2]},
    },
)
class SoftTripleLoss(BaseLoss):
    """SoftTriple: cross-entropy over classes, each class a set of ``K`` centres.

    With ``s_ick`` the cosine similarity of ``e_i`` to centre ``k`` of class ``c``, the relaxed
    class similarity (Qian et al., eq. 8) is

        S_ic = sum_k softmax_k(s_ick / gamma) s_ick

    and the loss (eq. 10) is the cross-entropy of the logits
    ``z_ic = scale (S_ic - margin [c = y_i])`` (``scale`` = the paper's ``lambda``, ``margin`` =
    ``delta``), plus ``tau`` times the centre regulariser :func:`center_spread` (eq. 12), which
    lets redundant centres of a class merge. Terms:

    - ``pos`` = ``-mean_i z_{i y_i}`` (pull to the own class's centres);
    - ``ent`` = ``mean_i log sum_c exp(z_ic)`` (push from every class);
    - ``reg`` = :func:`center_spread` of the centres.

    ``total = 2 lambda pos + 2 (1 - lambda) ent + tau reg``; ``lambda = 0.5`` is SoftTriple
    (with ``tau = 0``, pytorch-metric-learning's ``SoftTripleLoss``).

    Centres: ``proxies``, an ``nn.Parameter`` of shape ``(C * K, d)`` (class ``c`` owns rows
    ``c*K .. c*K + K-1``), normalised when used, trained with ``proxy_lr``.

    Parameters (defaults from the paper): ``lambda`` in [0, 1] (0.5); ``scale`` in (0, inf) (20);
    ``gamma`` in (0, inf) (0.1); ``margin`` in [0, 1] (0.01); ``tau`` in [0, 10] (0.2);
    ``proxies_per_class`` ``K`` in [1, 100] (10).

    Follows: Qian et al. 2019, Eq. 10 and the centre regulariser of Eq. 12, as pytorch-metric-learning's
    ``SoftTripleLoss`` (tested). As published at ``lambda = 0.5``.
    """

    family: ClassVar[Family] = "proxy"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "ent", "reg")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "ent", "pull each sample toward its class's centres", "spread it from every class (log-sum-exp)"
    )

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        lam: float = 0.5,
        scale: float = 20.0,
        gamma: float = 0.1,
        margin: float = 0.01,
        tau: float = 0.2,
        proxies_per_class: int = 10,
    ) -> None:
        super().__init__()
        self.lam = lam
        self.scale = scale
        self.gamma = gamma
        self.margin = margin
        self.tau = tau
        self.proxies_per_class = proxies_per_class
        self.proxies = init_proxies(num_classes, proxies_per_class, embedding_size)

    def weights(self) -> dict[str, float]:
        return {**super().weights(), "reg": self.tau}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        sim = class_similarity(embeddings, self.proxies, self.proxies_per_class, temperature=self.gamma)
        rows = torch.arange(len(labels), device=sim.device)
        z = self.scale * sim.index_put((rows, labels), sim[rows, labels] - self.margin)
        pos = -z[rows, labels].mean()
        ent = torch.logsumexp(z, dim=1).mean()
        reg = center_spread(self.proxies.to(embeddings.dtype), self.proxies_per_class)
        return self.combine({"pos": pos, "ent": ent, "reg": reg})
