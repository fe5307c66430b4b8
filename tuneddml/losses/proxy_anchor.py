"""Proxy-Anchor loss (Kim, Kim, Cho & Kwak, "Proxy Anchor Loss for Deep Metric Learning",
CVPR 2020), with one or several proxies per class."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.losses.synthetic import SyntheticClasses
from tuneddml.similarity import class_similarity, init_proxies, masked_logsumexp


@LOSSES.register(
    "proxy_anchor",
    ranges={
        "lam": "[0, 1]",
        "alpha": "(0, inf)",
        "margin": "[0, 1]",
        "proxies_per_class": "[1, inf)",
        "proxy_temperature": "(0, inf)",
    },
    runtime=("num_classes", "embedding_size"),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "margin": {"uniform": [0.0, 0.5], "start": 0.1},
        "alpha": {"loguniform": [4, 64], "start": 32},
        "proxies_per_class": {"choice": [1, 2, 4]},
    },
)
class ProxyAnchorLoss(SyntheticClasses, BaseLoss):
    """Proxy-Anchor loss with ``proxies_per_class`` proxies and a balance ``lambda``.

    Each class proxy is an anchor that pulls the batch's samples of its class and pushes all
    others, weighting hard samples more (log-sum-exp).

    With ``S_ic`` the similarity of sample ``i`` to class ``c`` (its proxies combined by a soft max,
    see :func:`tuneddml.similarity.class_similarity`; with one proxy, the cosine similarity),
    ``X_c+`` the samples of class ``c`` in the batch and ``X_c-`` the others, ``P+`` the classes
    present in the batch and ``C`` the number of classes:

    - ``pos`` = ``1/|P+| sum_{c in P+} log(1 + sum_{i in X_c+} exp(-alpha (S_ic - margin)))``;
    - ``neg`` = ``1/C sum_c log(1 + sum_{i in X_c-} exp(alpha (S_ic + margin)))``.

    ``total = 2 lambda * pos + 2 (1 - lambda) * neg``, so ``lambda = 0.5`` is the paper's loss.
    Defaults are the paper's (``alpha = 32``, ``margin = 0.1``). ``proxy_temperature`` is the
    temperature of the soft max over a class's proxies (used only with ``proxies_per_class > 1``).

    Follows: Kim, Kim, Cho & Kwak 2020 loss, as pytorch-metric-learning's ``ProxyAnchorLoss``
    (tested). As published at ``lambda = 0.5`` with one proxy per class.
    """

    family: ClassVar[Family] = "proxy"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "neg")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "neg", "pull each present class's samples toward its proxy", "push other samples away from every proxy"
    )

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        lam: float = 0.5,
        alpha: float = 32.0,
        margin: float = 0.1,
        proxies_per_class: int = 1,
        proxy_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.lam = lam
        self.alpha = alpha
        self.margin = margin
        self.proxies_per_class = proxies_per_class
        self.proxy_temperature = proxy_temperature
        self.proxies = init_proxies(num_classes, proxies_per_class, embedding_size)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        proxies, classes = self.proxies_in_use()  # with the synthetic classes of this forward, if any
        sims = class_similarity(embeddings, proxies, self.proxies_per_class, self.proxy_temperature)
        pos_mask = F.one_hot(labels, classes).bool()  # (n, C)
        present = pos_mask.any(dim=0)
        pos = masked_logsumexp(-self.alpha * (sims - self.margin), pos_mask, dim=0, add_one=True)
        neg = masked_logsumexp(self.alpha * (sims + self.margin), ~pos_mask, dim=0, add_one=True)
        # classes absent from the batch have pos = log(1) = 0, so the sum over P+ is the sum over all
        return self.with_added_terms(self.combine({"pos": pos.sum() / present.sum(), "neg": neg.mean()}))
