"""Proxy-NCA loss (Movshovitz-Attias, Toshev, Leung, Ioffe & Singh, "No Fuss Distance Metric
Learning using Proxies", ICCV 2017), on cosine similarity, with one or several proxies per class."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.losses.synthetic import SyntheticClasses
from tuneddml.similarity import class_similarity, init_proxies, masked_logsumexp


@LOSSES.register(
    "proxy_nca",
    ranges={
        "lam": "[0, 1]",
        "scale": "(0, inf)",
        "proxies_per_class": "[1, inf)",
        "proxy_temperature": "(0, inf)",
    },
    runtime=("num_classes", "embedding_size"),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "scale": {"loguniform": [2, 64], "start": 16},
        "proxies_per_class": {"choice": [1, 2, 4]},
    },
)
class ProxyNCALoss(SyntheticClasses, BaseLoss):
    """Proxy-NCA with ``proxies_per_class`` proxies, split into ``pos`` and ``neg`` with a balance ``lambda``.

    Neighbourhood component analysis against learned class proxies.

    With ``S_ic`` the similarity of sample ``i`` to class ``c`` (its proxies combined by a soft max,
    see :func:`tuneddml.similarity.class_similarity`), ``y_i`` its class and ``scale`` the
    inverse temperature:

    - ``pos`` = ``-mean_i scale * S_{i y_i}``;
    - ``neg`` = ``mean_i log sum_{c != y_i} exp(scale * S_ic)`` (the sum runs over every class,
      ``y_i`` included, when ``include_positive``: the softmax form of Proxy-NCA++, Teh et al. 2020).

    ``total = 2 lambda * pos + 2 (1 - lambda) * neg``, so ``lambda = 0.5`` is the Proxy-NCA loss
    ``mean_i -log(exp(scale S_{i y_i}) / sum_{c != y_i} exp(scale S_ic))``. On unit vectors the
    paper's ``exp(-|x - p|^2)`` is ``exp(2 s - 2)``: ``scale = 2``; larger scales (the default 16)
    train better on cosine similarity.

    Follows: Movshovitz-Attias et al. 2017, the Proxy-NCA loss (positive proxy excluded from the denominator) on
    cosine similarity with an inverse temperature; ``include_positive`` gives Proxy-NCA++'s softmax form
    (Teh et al. 2020). Differs: the paper's squared Euclidean distance is ``2 - 2 s`` here (``scale =
    2`` is the paper's scale).
    """

    family: ClassVar[Family] = "proxy"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "neg")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "neg", "pull each sample toward its class proxy", "push it away from the other proxies (log-sum-exp)"
    )

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        lam: float = 0.5,
        scale: float = 16.0,
        include_positive: bool = False,
        proxies_per_class: int = 1,
        proxy_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.lam = lam
        self.scale = scale
        self.include_positive = include_positive
        self.proxies_per_class = proxies_per_class
        self.proxy_temperature = proxy_temperature
        self.proxies = init_proxies(num_classes, proxies_per_class, embedding_size)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        proxies, classes = self.proxies_in_use()  # with the synthetic classes of this forward, if any
        logits = self.scale * class_similarity(
            embeddings, proxies, self.proxies_per_class, self.proxy_temperature
        )
        own = F.one_hot(labels, classes).bool()
        pos = -logits[own]  # one entry per sample, in batch order
        keep = torch.ones_like(own) if self.include_positive else ~own
        neg = masked_logsumexp(logits, keep, dim=1)
        return self.with_added_terms(self.combine({"pos": pos.mean(), "neg": neg.mean()}))
