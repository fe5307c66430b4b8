"""Contrastive Bayesian loss with the metric-variance constraint (Kan, He, Cen, Li, Mladenovic &
He, "Contrastive Bayesian Analysis for Deep Metric Learning", IEEE TPAMI 2023, arXiv 2210.04402)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import masked_logsumexp, masks_from_pairs, pair_masks, similarity, zero_like_graph


@LOSSES.register(
    "contrastive_bayesian",
    ranges={
        "lam": "[0, 1]",
        "pos_center": "[-1, 1]",
        "pos_scale": "(0, inf)",
        "neg_center": "[-1, 1]",
        "neg_scale": "(0, inf)",
        "var_weight": "[0, inf)",
        "mean_mix": "[0, 1]",
    },
    runtime=("miner",),
    search={
        "lambda": {"uniform": [0.0, 1.0], "start": 0.5},
        "pos_center": {"uniform": [0.3, 0.7], "start": 0.5},
        "pos_scale": {"loguniform": [0.1, 1.0], "start": 0.5},
        "neg_center": {"uniform": [0.5, 1.0], "start": 1.0},
        "neg_scale": {"loguniform": [0.005, 0.1], "start": 0.01},
        "var_weight": {"loguniform": [0.01, 10], "start": 1.0},
        "mean_mix": {"uniform": [0.0, 0.5], "start": 0.1},
        "form": {"choice": ["log", "sqrt"]},
    },
)
class ContrastiveBayesianLoss(BaseLoss):
    """Contrastive Bayesian metric learning (CBML): the posterior of "same label" given a pair's
    similarity, plus a metric-variance constraint.

    **Bayesian view.** For a pair with similarity ``s``, Bayes' rule gives ``p(same | s) = 1 / (1 +
    p(s | diff) p(diff) / (p(s | same) p(same)))``. Modelling the log-likelihood ratio as linear in
    ``s`` (exponential-family likelihoods of the similarity) gives the logistic posteriors
    ``p(same | s) = sigmoid((s - a+) / b+)`` and ``p(diff | s) = sigmoid(-(s - a-) / b-)``, with
    ``a`` where the posterior is one half and ``b`` its scale; ``-log p(same | s) = log(1 +
    exp(-(s - a+) / b+))``. Over all the positives (negatives) of an anchor the likelihood-ratio
    terms are summed inside the logarithm, as in the authors' released code.

    Per anchor ``i`` with pairs chosen by the miner (default: multi-similarity mining, as the
    paper's code: positives with ``s_ip < max_N s_in + margin`` and negatives with ``s_in >
    min_P s_ip - margin``; with ``miner=none``, all pairs), ``P'(i)``/``N'(i)`` the chosen
    positives/negatives and ``N(i)`` all negatives of the batch:

    - ``pos_i = g(1 + sum_{p in P'(i)} exp(-(s_ip - a+) / b+))``;
    - ``neg_i = g(1 + sum_{n in N'(i)} exp((s_in - a-) / b-))``;
    - ``var_i = sum_{n in N(i)} (s_in - mu_i)^2`` with ``mu_i = h mean_{P(i)} s + (1 - h)
      mean_{N(i)} s``: the metric-variance constraint, which keeps the negative similarities of an
      anchor concentrated around a mean between the two groups, so the learnt metric varies less on
      classes it has not seen;

    with ``g = log`` (``form="log"``) or ``g = sqrt`` (``form="sqrt"``). An anchor counts only if it
    has a chosen positive and a chosen negative. Each term is the sum over counted anchors divided
    by the batch size. ``total = 2 lambda * pos + 2 (1 - lambda) * neg + var_weight * var``
    (``lambda = 0.5``: the paper's loss).

    Parameters (defaults: the authors' released configuration): ``lambda`` in [0, 1] (0.5);
    ``pos_center`` ``a+`` (0.5) and ``neg_center`` ``a-`` (1.0) in [-1, 1]; ``pos_scale`` ``b+``
    (0.5) and ``neg_scale`` ``b-`` (0.01) > 0; ``var_weight`` >= 0 (1.0); ``mean_mix`` ``h`` in
    [0, 1] (0.1); ``form`` ``"log"`` (default) or ``"sqrt"``. The mining margin is the miner's
    ``epsilon`` (0.1 by default, the paper's margin). The released code's third form,
    ``"constant"`` (no logarithm, with two more weights), is not offered.

    Follows: Kan et al. 2023 (CBML), its pos/neg posteriors and metric-variance constraint as in the
    authors' released code (likelihood ratios summed inside the logarithm, multi-similarity mining).
    Differs: the code's third form (``constant``, no logarithm, two more weights) is not offered.
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "neg", "var")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "neg", "raise the posterior of 'same class' on positive pairs", "lower it on negative pairs"
    )
    miner_outputs: ClassVar[tuple[str, ...]] = ("pairs",)
    default_miner: ClassVar[str | None] = "multi_similarity"

    def __init__(
        self,
        *,
        lam: float = 0.5,
        pos_center: float = 0.5,
        pos_scale: float = 0.5,
        neg_center: float = 1.0,
        neg_scale: float = 0.01,
        var_weight: float = 1.0,
        mean_mix: float = 0.1,
        form: Literal["log", "sqrt"] = "log",
        miner: Any = None,
    ) -> None:
        super().__init__()
        self.lam = lam
        self.pos_center = pos_center
        self.pos_scale = pos_scale
        self.neg_center = neg_center
        self.neg_scale = neg_scale
        self.var_weight = var_weight
        self.mean_mix = mean_mix
        self.form = form
        self.miner = miner

    def weights(self) -> dict[str, float]:
        return {**super().weights(), "var": self.var_weight}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(labels)
        s = similarity(embeddings)
        all_pos, all_neg = pair_masks(labels)
        if self.miner is None:
            pos, neg = all_pos, all_neg
        else:
            pos, neg = masks_from_pairs(self.miner(embeddings, labels), n, s.device)
            pos, neg = pos & all_pos, neg & all_neg
        anchors = pos.any(dim=1) & neg.any(dim=1)
        if not bool(anchors.any()):
            zero = zero_like_graph(embeddings)
            return self.combine({"pos": zero, "neg": zero.clone(), "var": zero.clone()})
        s, pos, neg, all_pos, all_neg = (x[anchors] for x in (s, pos, neg, all_pos, all_neg))
        pos_i = masked_logsumexp(-(s - self.pos_center) / self.pos_scale, pos, dim=1, add_one=True)
        neg_i = masked_logsumexp((s - self.neg_center) / self.neg_scale, neg, dim=1, add_one=True)
        if self.form == "sqrt":
            pos_i, neg_i = torch.exp(0.5 * pos_i), torch.exp(0.5 * neg_i)
        mean_pos = (s * all_pos).sum(dim=1) / all_pos.sum(dim=1)
        mean_neg = (s * all_neg).sum(dim=1) / all_neg.sum(dim=1)
        mu = self.mean_mix * mean_pos + (1.0 - self.mean_mix) * mean_neg
        var_i = ((s - mu[:, None]) ** 2 * all_neg).sum(dim=1)
        return self.combine({"pos": pos_i.sum() / n, "neg": neg_i.sum() / n, "var": var_i.sum() / n})
