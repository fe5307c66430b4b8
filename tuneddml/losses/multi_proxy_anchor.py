"""Multi-proxies anchor (MPA) loss (Saeki, Kawahara & Aman, "Multi Proxy Anchor Family Loss for
Several Types of Gradients", arXiv 2110.03997, 2022): Proxy-Anchor with several proxies per class."""

from __future__ import annotations

from tuneddml.losses import LOSSES
from tuneddml.losses.proxy_anchor import ProxyAnchorLoss


@LOSSES.register(
    "multi_proxy_anchor",
    ranges={
        "lam": "[0, 1]",
        "alpha": "(0, inf)",
        "margin": "[0, 1]",
        "proxies_per_class": "[1, 100]",
        "proxy_temperature": "(0, inf)",
    },
    runtime=("num_classes", "embedding_size"),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "margin": {"uniform": [0.0, 0.2], "start": 0.1},
        "alpha": {"uniform": [16, 64], "start": 32},
        "proxies_per_class": {"choice": [4, 1, 2, 8]},
        "proxy_temperature": {"loguniform": [0.03, 0.3], "start": 0.1},
    },
)
class MultiProxyAnchorLoss(ProxyAnchorLoss):
    """MPA loss: the Proxy-Anchor loss over classes represented by ``K`` proxies each.

    Real classes are often multi-modal (several local centres); one proxy per class cannot fit
    them. MPA gives each class ``K`` proxies ``p_c1 .. p_cK`` and measures a sample's similarity
    to a class with SoftTriple's relaxed maximum (``gamma`` = ``proxy_temperature``)::

        S_ic = sum_k softmax_k(s_ick / gamma) s_ick,      s_ick = cos(e_i, p_ck)

    then applies Proxy-Anchor's class-as-anchor objective to ``S_ic`` (``X_c+`` / ``X_c-`` the
    batch samples of / not of class ``c``, ``P+`` the classes present, ``C`` all classes):

    - ``pos`` = ``1/|P+| sum_{c in P+} log(1 + sum_{i in X_c+} exp(-alpha (S_ic - margin)))``;
    - ``neg`` = ``1/C sum_c log(1 + sum_{i in X_c-} exp(alpha (S_ic + margin)))``.

    ``total = 2 lambda pos + 2 (1 - lambda) neg``; ``lambda = 0.5`` is the MPA loss. Every proxy
    of a class receives a gradient, weighted by its soft-max share (a hard maximum would train only
    the nearest one). The computation is :class:`~tuneddml.losses.proxy_anchor.ProxyAnchorLoss`'s,
    whose soft-max combination of proxies is this one; this entry names the method for searches
    and gives it MPA's multi-proxy default. Not implemented: the paper's later variants (its
    "family" of losses with class-wise rather than data-wise gradient weighting); the paper's
    nDCG@k metric belongs to the evaluation package.

    Proxies: ``proxies``, ``(C * K, d)``, class ``c`` owning rows ``c*K .. c*K + K-1``.

    Parameters: ``lambda`` in [0, 1] (0.5); ``alpha`` in (0, inf) (32); ``margin`` ``delta`` in
    [0, 1] (0.1); ``proxies_per_class`` ``K`` in [1, 100] (4; ``K = 1`` is Proxy-Anchor);
    ``proxy_temperature`` ``gamma`` in (0, inf) (0.1, SoftTriple's).

    Follows: Saeki, Kawahara & Aman 2022 (MPA), Proxy-Anchor on SoftTriple's relaxed maximum over K
    proxies; at ``K = 1`` it is pytorch-metric-learning's ``ProxyAnchorLoss`` (tested). Differs: the
    paper's later variants (class-wise gradient weighting) are not implemented.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        lam: float = 0.5,
        alpha: float = 32.0,
        margin: float = 0.1,
        proxies_per_class: int = 4,
        proxy_temperature: float = 0.1,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            embedding_size=embedding_size,
            lam=lam,
            alpha=alpha,
            margin=margin,
            proxies_per_class=proxies_per_class,
            proxy_temperature=proxy_temperature,
        )
