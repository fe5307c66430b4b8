"""Normalised softmax cross-entropy with class weights as proxies (Zhai & Wu, "Classification is a
Strong Baseline for Deep Metric Learning", BMVC 2019), in the positive / entropy view of Boudiaf et
al. ("A Unifying Mutual Information View of Metric Learning: Cross-Entropy vs. Pairwise Losses",
ECCV 2020)."""

from __future__ import annotations

from typing import ClassVar

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.losses.synthetic import SyntheticClasses
from tuneddml.similarity import class_similarity, init_proxies


@LOSSES.register(
    "normsoftmax",
    ranges={
        "lam": "[0, 1]",
        "temperature": "(0, inf)",
        "proxies_per_class": "[1, 100]",
        "label_smoothing": "[0, 1)",
    },
    runtime=("num_classes", "embedding_size"),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "temperature": {"loguniform": [0.02, 0.2], "start": 0.05},
        "proxies_per_class": {"choice": [1, 2, 4]},
        "label_smoothing": {"uniform": [0.0, 0.2], "start": 0.0},
    },
)
class NormSoftmaxLoss(SyntheticClasses, BaseLoss):
    """Cross-entropy over classes on cosine similarities to learned class proxies.

    ``S_ic`` is the cosine similarity of embedding ``e_i`` to the proxy of class ``c`` (with
    ``K = proxies_per_class > 1``, the soft maximum over the class's proxies of
    :func:`~tuneddml.similarity.class_similarity`, temperature 0.1). With logits
    ``z_ic = S_ic / tau`` and target distribution ``q_i = (1 - eps) onehot(y_i) + eps / C``
    (``eps`` = ``label_smoothing``), the cross-entropy splits as Boudiaf et al. do:

    - ``pos`` = ``-mean_i sum_c q_ic z_ic`` (pull each embedding to its class proxy: the
      conditional-entropy / tightness side of the mutual information);
    - ``ent`` = ``mean_i log sum_c exp(z_ic)`` (push it from every proxy: the entropy /
      contrastive side).

    ``total = 2 lambda pos + 2 (1 - lambda) ent``; ``lambda = 0.5`` is the cross-entropy (with
    ``eps = 0``, pytorch-metric-learning's ``NormalizedSoftmaxLoss``). Boudiaf et al. show this
    loss upper-bounds a pairwise loss with the same two sides, so the balance is searched the same
    way as for contrastive losses.

    Proxies: ``proxies``, an ``nn.Parameter`` of shape ``(C * K, d)`` (class ``c`` owns rows
    ``c*K .. c*K + K-1``), trained with ``proxy_lr``; normalised when used.

    Parameters: ``lambda`` in [0, 1] (0.5); ``temperature`` ``tau`` in (0, inf) (0.05, Zhai &
    Wu); ``proxies_per_class`` in [1, 100] (1); ``label_smoothing`` in [0, 1) (0).

    Follows: Zhai & Wu 2019 (normalised softmax with temperature), as pytorch-metric-learning's
    ``NormalizedSoftmaxLoss`` (tested), split as Boudiaf et al. 2020. As published at ``lambda = 0.5``,
    one proxy per class and no label smoothing; Zhai & Wu's layer normalisation and class-balanced
    sampling belong to the backbone and sampler.
    """

    family: ClassVar[Family] = "proxy"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "ent")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "ent", "pull each sample toward its class proxy", "spread it from every class proxy (log-sum-exp)"
    )

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        lam: float = 0.5,
        temperature: float = 0.05,
        proxies_per_class: int = 1,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.lam = lam
        self.temperature = temperature
        self.proxies_per_class = proxies_per_class
        self.label_smoothing = label_smoothing
        self.proxies = init_proxies(num_classes, proxies_per_class, embedding_size)

    def logits(self, embeddings: torch.Tensor, proxies: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, C)`` logits ``S_ic / tau`` (against ``proxies``, default the classes' own)."""
        proxies = self.proxies if proxies is None else proxies
        return class_similarity(embeddings, proxies, self.proxies_per_class) / self.temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        proxies, classes = self.proxies_in_use()  # with the synthetic classes of this forward, if any
        z = self.logits(embeddings, proxies)
        eps = self.label_smoothing
        target = torch.full_like(z, eps / classes)
        target[torch.arange(len(labels), device=z.device), labels] += 1.0 - eps
        pos = -(target * z).sum(dim=1).mean()
        ent = torch.logsumexp(z, dim=1).mean()
        return self.with_added_terms(self.combine({"pos": pos, "ent": ent}))
