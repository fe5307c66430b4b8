"""Stochastic AP / AUPRC optimisation with a sampling-rate-invariant estimator and a moving-average
auxiliary vector per class (Wen, Xu, Yang, He & Huang, "Exploring the Algorithm-Dependent
Generalization of AUPRC Optimization with List Stability", NeurIPS 2022: SOPRC; the compositional
moving averages go back to SOAP, Qi et al., NeurIPS 2021)."""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss, Family
from tuneddml.similarity import pair_masks, similarity, zero_like_graph


def pos_neg_surrogate(x: torch.Tensor, tau: float) -> torch.Tensor:
    """SOPRC's surrogate of "the negative ranks above the positive", of the margin
    ``x = s_pos - s_neg``: ``1 - 2x / tau`` for ``x < 0``, ``(1 - x / tau)^2`` for
    ``0 <= x < tau``, 0 from ``tau`` on (1 at ``x = 0``, with the same slope on both sides)."""
    x = x.clamp(max=tau)
    return torch.where(x >= 0, (1.0 - x / tau) ** 2, 1.0 - 2.0 * x / tau)


def pos_pos_surrogate(x: torch.Tensor, tau: float) -> torch.Tensor:
    """SOPRC's smooth step of "the point ranks above the positive", of ``x = s_pos - v``:
    ``2 sigmoid(-x / tau) - 1`` for ``x < 0`` (towards 1 as ``x -> -inf``), 0 for ``x >= 0``."""
    return 2.0 * torch.sigmoid(-x.clamp(max=0.0) / tau) - 1.0


def spread_scores(scores: torch.Tensor, points: int) -> torch.Tensor:
    """``(q, m)`` ascending positive scores of ``q`` queries -> ``(q, points)`` points that follow
    their distribution: each score ``s_k`` becomes ``L = ceil(points / m)`` points, ``k``-major,
    of which the first ``points`` are kept.

    With ``s_0 = max(2 s_1 - s_2, -1)``, ``s_{m+1} = min(2 s_m - s_{m-1}, 1)`` (``-1`` and ``1``
    when ``m = 1``) and ``a_l = l / L`` (``l = 0 .. L-1``), point ``(k, l)`` is the mean of the
    ``l``-th step from the left neighbour to ``s_k`` and of the ``l``-th step from ``s_k`` to the
    right neighbour: ``u_kl = ((s_{k-1} + a_l (s_k - s_{k-1})) + (s_k + a_l (s_{k+1} - s_k))) / 2``.
    """
    q, m = scores.shape
    steps = -(-points // m)
    alpha = torch.arange(steps, dtype=scores.dtype, device=scores.device) / steps
    if m >= 2:
        first = (2 * scores[:, 0] - scores[:, 1]).clamp(min=-1.0)
        last = (2 * scores[:, -1] - scores[:, -2]).clamp(max=1.0)
    else:
        first, last = torch.full_like(scores[:, 0], -1.0), torch.full_like(scores[:, 0], 1.0)
    left = torch.cat([first[:, None], scores[:, :-1]], dim=1)
    right = torch.cat([scores[:, 1:], last[:, None]], dim=1)
    from_left = left[:, :, None] + alpha * (scores - left)[:, :, None]
    to_right = scores[:, :, None] + alpha * (right - scores)[:, :, None]
    return ((from_left + to_right) / 2).reshape(q, m * steps)[:, :points]


def ranking_statistics(
    s: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor, n_targets: int, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted smooth TPR and FPR of each query's positives.

    ``s`` is ``(n, m)`` query-to-pool similarity; ``pos``/``neg`` ``(n, m)`` masks; ``weight``
    ``(m,)`` the weight of each pool item; the first ``n_targets`` pool columns are the targets
    ``k`` whose precision is estimated. With ``l(t) = sigmoid(t / tau)``:

    - ``TPR[i, k] = sum_{j in P(i)} w_j l(s_ij - s_ik) / sum_{j in P(i)} w_j`` (``j = k`` counts 1);
    - ``FPR[i, k] = sum_{j in N(i)} w_j l(s_ij - s_ik) / sum_{j in N(i)} w_j`` (0 if no negative).

    Returns ``(TPR, FPR)``, each ``(n, n_targets)``.
    """
    diff = s[:, None, :] - s[:, :n_targets, None]  # diff[i, k, j] = s_ij - s_ik
    step = torch.sigmoid(diff / tau)
    eye = torch.zeros(n_targets, s.shape[1], dtype=torch.bool, device=s.device)
    eye[:, :n_targets] = torch.eye(n_targets, dtype=torch.bool, device=s.device)
    step = torch.where(eye[None], torch.ones_like(step), step)
    w_pos = pos * weight
    w_neg = neg * weight
    tpr = (step * w_pos[:, None, :]).sum(dim=2) / w_pos.sum(dim=1, keepdim=True).clamp_min(1e-12)
    fpr = (step * w_neg[:, None, :]).sum(dim=2) / w_neg.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return tpr, fpr


@LOSSES.register(
    "stochastic_ap",
    ranges={
        "tau": "(0, inf)",
        "gamma": "(0, 1]",
        "memory": "[0, 1000]",
        "semivar_weight": "[0, inf)",
        "tau_pn": "(0, inf)",
        "tau_pp": "(0, inf)",
        "beta": "(0, 1]",
        "prior_mul": "(0, 1]",
        "points": "[1, 10000]",
    },
    runtime=("num_classes",),
    search={
        "estimator": {"choice": ["auxiliary", "memory"]},
        # SOPRC's beta = 0.001 assumes tens of thousands of steps; a short trial needs a faster average
        "beta": {"loguniform": [0.001, 0.5], "start": 0.05, "when": {"estimator": "auxiliary"}},
        "tau_pn": {"loguniform": [0.01, 1.0], "start": 0.1, "when": {"estimator": "auxiliary"}},
        "prior_mul": {"loguniform": [0.01, 1.0], "start": 0.1, "when": {"ratio": "prior"}},
        "gamma": {"uniform": [0.01, 1.0], "start": 0.1, "when": {"estimator": "memory"}},
        "tau": {"loguniform": [0.001, 0.1], "start": 0.01, "when": {"estimator": "memory"}},
        "memory": {"choice": [4, 0, 2], "when": {"estimator": "memory"}},
        "ratio": {"choice": ["prior", "population", "batch"]},
    },
)
class StochasticAPLoss(BaseLoss):
    """AP loss with a sampling-rate-invariant estimator of each positive's precision.

    **The estimator.** Each batch sample ``i`` (class ``c``) is a query; its positives ``P(i)``
    are the other samples of class ``c``, its negatives ``N(i)`` the rest. For a positive ``k``,
    precision at ``k`` is ``n+ TPR / (n+ TPR + n- FPR) = TPR / (TPR + rho_c FPR)``, ``TPR``/``FPR``
    the fractions of the query's positives/negatives ranked at or above ``k`` and ``rho_c`` the
    ratio of negatives to positives (``ratio``). Estimating ``TPR`` and ``FPR`` by means over
    the positives and negatives at hand, and ``rho_c`` from the class's share of the training
    set rather than from the batch's counts, keeps the estimate free of the batch sampler's
    rates (m-per-class batches hold far more positives than the dataset's share); that bias is
    what Wen et al. remove. The loss is ``1 - precision = rho FPR / (TPR + rho FPR)``, averaged
    over the queries' positives.

    **estimator="auxiliary"** (default; SOPRC). ``FPR`` from the batch's negatives and ``TPR``
    from an auxiliary vector per class, ``v_c`` (``points`` values ``M``, buffer ``points``
    ``(num_classes, M)``, starting at ``0, 1/M, ..., (M-1)/M``), that tracks the distribution of
    the class's positive scores:

    - ``FPR_ik = mean_{j in N(i)} f1(s_ik - s_ij)``, ``f1`` = :func:`pos_neg_surrogate`
      (``tau_pn``): the only part with a gradient;
    - update (training mode, before the estimate): for each class ``c`` in the batch, each of its
      queries' ascending positive scores become ``M`` points ``u_q`` (:func:`spread_scores`) and
      ``v_c <- (1 - beta) v_c + beta mean_q u_q``;
    - ``TPR_ik = (1 + sum_m f2(s_ik - v_cm)) / (M + 1)``, ``f2`` = :func:`pos_pos_surrogate`
      (``tau_pp``), no gradient (the inner function of the compositional problem is the moving
      average, treated as given);
    - ``ap = mean_i mean_{k in P(i)} g_ik``, ``g = L / (1 + L)``, ``L = rho_c FPR_ik / TPR_ik``.

    A class label outside ``[0, num_classes)`` (a synthetic class) uses its batch points ``mean_q
    u_q`` in place of ``v_c`` and updates nothing. ``v`` is a buffer: it is saved and restored
    with the loss's ``state_dict``. Cost ``n^2 (n + M)`` per batch of ``n``.

    **estimator="memory"** (the earlier form, kept as an option): smooth-step ``TPR``/``FPR``
    (``l(t) = sigmoid(t / tau)``, Smooth-AP's step, Brown et al., ECCV 2020) as exponential
    moving averages over the current and the last ``memory`` batches: an item of the batch seen
    ``a`` steps ago has weight ``gamma (1 - gamma)^a`` in the weighted means of
    :func:`ranking_statistics`; stored batches are detached embeddings re-scored against the
    current query and target; ``ap = 1 - mean_i mean_{k in P_b(i)} TPR / (TPR + rho_c FPR)``
    over the current batch's targets. The memory is not saved in checkpoints (it refills within
    ``memory`` steps); cost ``n^2 * n (memory + 1)``.

    **rho** (``ratio``): ``"prior"`` (default; SOPRC's) ``rho_c = (1 - p_c) / p_c`` with
    ``p_c = prior_mul N_c / max_c' N_c'``, ``N_c`` the class's training-set count (the
    largest class gets prior ``prior_mul``); ``"population"``: the training set's own ratio
    ``(N - N_c) / (N_c - 1)``; ``"batch"``: the batch's (weighted) counts ``|N(i)| / |P(i)|``.
    The counts are set from the training labels at each epoch start; before that, or for a label
    the training set does not hold, the batch ratio is used.

    ``semivar`` = ``mean_i (mean_{p in P_b(i)} [mu+_i - s_ip]+^2 + mean_{n in N_b(i)}
    [s_in - mu-_i]+^2)``, ``mu+``/``mu-`` the (detached) mean positive/negative score of query
    ``i``: the downside semi-variance of the positives and the upside semi-variance of the
    negatives, weight ``semivar_weight``. ``total = ap + semivar_weight * semivar``.

    Follows: Wen et al. 2022, official code KID-7391/SOPRC:ListStableAUPRCLoss.forward (the
    auxiliary vector per class, its interpolation and moving average, the two surrogates, the
    prior and ``g = L / (1 + L)``; the state is per class, so the loss needs no sample indices). Differs: where a batch holds several queries of a class,
    the official code writes all their point sets into ``v_c`` at once (an indexed assignment
    with repeated labels, which keeps one of them, unspecified which); here ``v_c`` moves towards
    their mean. The official code asks for m-per-class batches of a fixed size; here any batch
    works (a query's ``L`` follows its own number of positives). The semi-variance term is this
    implementation's reading of the paper's regulariser, not the official ``variance`` loss
    (weights ``5, 1`` on positives and negatives there).

    Parameters: ``estimator`` (``"auxiliary"``); ``tau_pn`` > 0 (0.1), ``tau_pp`` > 0 (0.001),
    ``beta`` in (0, 1] (0.001), ``points`` ``M`` in [1, 10000] (100): the auxiliary form's;
    ``tau`` > 0 (0.01), ``gamma`` in (0, 1] (0.1), ``memory`` in [0, 1000] batches (4): the
    memory form's; ``ratio`` (``"prior"``) and ``prior_mul`` in (0, 1] (0.1);
    ``semivar_weight`` >= 0 (0: off).
    """

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("ap", "semivar")

    def __init__(
        self,
        *,
        num_classes: int = 0,
        estimator: Literal["auxiliary", "memory"] = "auxiliary",
        tau_pn: float = 0.1,
        tau_pp: float = 0.001,
        beta: float = 0.001,
        points: int = 100,
        tau: float = 0.01,
        gamma: float = 0.1,
        memory: int = 4,
        ratio: Literal["prior", "population", "batch"] = "prior",
        prior_mul: float = 0.1,
        semivar_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.estimator = estimator
        self.tau_pn = tau_pn
        self.tau_pp = tau_pp
        self.beta = beta
        self.tau = tau
        self.gamma = gamma
        self.ratio = ratio
        self.prior_mul = prior_mul
        self.semivar_weight = semivar_weight
        self.memory: deque[tuple[torch.Tensor, torch.Tensor]] = deque(
            maxlen=memory if estimator == "memory" else 0
        )
        self.class_counts: torch.Tensor | None = None  # training-set size of each class
        classes = num_classes if estimator == "auxiliary" else 0
        start = torch.arange(points, dtype=torch.float32) / points
        #: SOPRC's auxiliary vector ``v_c`` of each class (``"auxiliary"`` only)
        self.register_buffer("points", start.repeat(classes, 1))

    def weights(self) -> dict[str, float]:
        return {"ap": 1.0, "semivar": self.semivar_weight}

    def on_epoch_start(self, epoch: int, context: Any) -> None:
        labels = np.asarray(context.train_labels).astype(np.int64)
        self.set_class_counts(np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64))

    def set_class_counts(self, counts: Any) -> None:
        """Training-set count of each class label (index = label); enables ``ratio="population"``
        and ``"prior"``."""
        self.class_counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.estimator == "auxiliary":
            s = similarity(embeddings)
            pos, neg = pair_masks(labels)
            ap = self._auxiliary_ap(s, labels, pos, neg)
            semivar = self._semivariance(s, pos, neg)
            return self.combine({"ap": ap, "semivar": semivar})
        return self._memory_forward(embeddings, labels)

    # -- estimator="auxiliary" --------------------------------------------------------------
    def _auxiliary_ap(
        self, s: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        queries = pos.any(dim=1)
        if not bool(queries.any()):
            return zero_like_graph(s)
        with torch.no_grad():
            v = self._class_points(s.detach(), labels, pos)  # (n, M): each query's v_c
            above = pos_pos_surrogate(s.detach()[:, :, None] - v[:, None, :].to(s), self.tau_pp)
            tpr = (1.0 + above.sum(dim=2)) / (v.shape[1] + 1.0)  # tpr[i, k]
        margin = s[:, :, None] - s[:, None, :]  # margin[i, k, j] = s_ik - s_ij
        fpr = (pos_neg_surrogate(margin, self.tau_pn) * neg[:, None, :]).sum(dim=2)
        fpr = fpr / neg.sum(dim=1, keepdim=True).clamp_min(1)
        ones = torch.ones(len(labels), dtype=s.dtype, device=s.device)
        rho = self._rho(labels, pos, neg, ones)
        ratio = rho[:, None] * fpr / tpr
        g = ratio / (1.0 + ratio)
        q = queries
        per_query = (g[q] * pos[q]).sum(dim=1) / pos[q].sum(dim=1)
        return per_query.mean()

    @torch.no_grad()
    def _class_points(self, s: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Each query's auxiliary vector after this batch's update (training mode)."""
        out = torch.zeros(len(labels), self.points.shape[1], dtype=s.dtype, device=s.device)
        known = len(self.points)
        for c in torch.unique(labels).tolist():
            rows = (labels == c).nonzero().squeeze(1)
            if len(rows) < 2:
                continue
            scores = s[rows][pos[rows]].reshape(len(rows), len(rows) - 1).sort(dim=1).values
            batch_points = spread_scores(scores, self.points.shape[1]).mean(dim=0)
            if 0 <= c < known:
                if self.training:
                    self.points[c] = (1.0 - self.beta) * self.points[c] + self.beta * batch_points.to(self.points)
                out[rows] = self.points[c].to(out)
            else:
                out[rows] = batch_points
        return out

    # -- shared -----------------------------------------------------------------------------
    def _rho(
        self, labels: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        batch = (neg * weight).sum(dim=1) / (pos * weight).sum(dim=1).clamp_min(1e-12)
        if self.ratio == "batch" or self.class_counts is None or len(self.class_counts) == 0:
            return batch
        counts = self.class_counts.to(device=labels.device, dtype=batch.dtype)
        known = (labels >= 0) & (labels < len(counts))
        n_c = torch.where(known, counts[labels.clamp(0, len(counts) - 1)], torch.zeros_like(batch))
        if self.ratio == "prior":
            prior = self.prior_mul * n_c / counts.max().clamp_min(1.0)
            given = (1.0 - prior) / prior.clamp_min(1e-12)
            return torch.where(known & (n_c > 0), given, batch)
        population = (counts.sum() - n_c) / (n_c - 1.0).clamp_min(1.0)
        # a label the training set does not hold (e.g. a synthetic class) falls back to the batch
        return torch.where(known & (n_c > 1), population, batch)

    # -- estimator="memory" -----------------------------------------------------------------
    def _pool(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        items, item_labels, weights = (
            [embeddings],
            [labels],
            [torch.full_like(labels, 1.0, dtype=embeddings.dtype)],
        )
        for age, (e, y) in enumerate(reversed(self.memory), start=1):
            items.append(e.to(embeddings))
            item_labels.append(y.to(labels.device))
            weights.append(
                torch.full_like(item_labels[-1], (1.0 - self.gamma) ** age, dtype=embeddings.dtype)
            )
        return torch.cat(items), torch.cat(item_labels), torch.cat(weights)

    def _memory_forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(labels)
        pool, pool_labels, weight = self._pool(embeddings, labels)
        s = similarity(embeddings, pool)  # (n, m)
        same = labels[:, None] == pool_labels[None, :]
        not_self = torch.ones_like(same)
        not_self[:, :n] = ~torch.eye(n, dtype=torch.bool, device=labels.device)
        pos, neg = same & not_self, ~same
        targets = pos[:, :n]
        queries = targets.any(dim=1)
        if bool(queries.any()):
            q = queries
            tpr, fpr = ranking_statistics(s[q], pos[q], neg[q], weight, n, self.tau)
            rho = self._rho(labels[q], pos[q], neg[q], weight)
            precision = tpr / (tpr + rho[:, None] * fpr)
            ap_i = (precision * targets[q]).sum(dim=1) / targets[q].sum(dim=1)
            ap = 1.0 - ap_i.mean()
        else:
            ap = zero_like_graph(embeddings)
        semivar = self._semivariance(s[:, :n], *pair_masks(labels))
        if self.training and self.memory.maxlen:
            self.memory.append((embeddings.detach(), labels.detach()))
        return self.combine({"ap": ap, "semivar": semivar})

    @staticmethod
    def _semivariance(s: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        rows = pos.any(dim=1) & neg.any(dim=1)
        if not bool(rows.any()):
            return s.sum() * 0.0
        s, pos, neg = s[rows], pos[rows], neg[rows]
        mu_pos = ((s * pos).sum(dim=1) / pos.sum(dim=1)).detach()
        mu_neg = ((s * neg).sum(dim=1) / neg.sum(dim=1)).detach()
        low = (torch.relu(mu_pos[:, None] - s) ** 2 * pos).sum(dim=1) / pos.sum(dim=1)
        high = (torch.relu(s - mu_neg[:, None]) ** 2 * neg).sum(dim=1) / neg.sum(dim=1)
        return (low + high).mean()
