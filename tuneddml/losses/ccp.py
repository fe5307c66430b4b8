"""Chance-constrained proxies (CCP-DML; Gurbuz, Can & Alatan, "Deep Metric Learning with Chance
Constraints", 2022): a proxy loss solved by iterative projections, whose proxies jump, whenever the
validation metric stops improving, to the training samples its best proxies cover worst."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss, Family

#: the smallest gain of the watched value that counts as an improvement (the official callback's)
MIN_IMPROVEMENT = 1e-5
#: ``monitor`` value that watches the epoch's mean training loss (lower is better)
TRAINING_LOSS = "loss"


def farthest_point_picks(points: torch.Tensor, k: int, centres: torch.Tensor | None = None) -> list[int]:
    """Greedy k-centre selection (Gonzalez, 1985) seeded with ``centres``: each pick is the point
    farthest from the centres and from the earlier picks, ``argmax_x min_{c in S} |x - c|`` with
    ``S`` = centres + picks so far. Without centres the first pick is ``points[0]``. Returns
    ``min(k, len(points))`` distinct row indices, in pick order (ties: the lowest index)."""
    k = min(k, len(points))
    if k == 0:
        return []
    if centres is None or len(centres) == 0:
        nearest = torch.full((len(points),), math.inf, dtype=points.dtype, device=points.device)
    else:
        nearest = torch.cdist(points, centres.to(points)).min(dim=1).values
    picks: list[int] = []
    for _ in range(k):
        nxt = int(nearest.argmax())
        picks.append(nxt)
        nearest = torch.minimum(nearest, torch.cdist(points, points[nxt][None]).squeeze(1))
        nearest[picks] = -math.inf  # never picked twice, whatever cdist's rounding at distance 0
    return picks


@LOSSES.register(
    "ccp",
    ranges={
        "lam": "[0, 1]",
        "proxies_per_class": "[1, 100]",
        "pool": "[1, 100000]",
        "patience": "[1, 1000]",
        "every": "[1, 1000]",
        "proximal": "[0, 1]",
        "proximal_decay": "[0, 1]",
    },
    runtime=("num_classes", "embedding_size"),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "base": {"choice": ["proxy_anchor", "softtriple", "normsoftmax", "multi_proxy_anchor", "proxy_nca"]},
        "proxies_per_class": {"choice": [4, 1, 2, 8]},
        # searches run 3-4 short epochs: patience 3 cannot fire before epoch 5, so they start
        # from the fixed period (every=1: a jump before each epoch after the first)
        "schedule": {"choice": ["every", "patience"]},
        "every": {"choice": [1, 2, 3]},
        "patience": {"choice": [1, 2, 3]},
        "pool": {"choice": [12, 32, 64]},
    },
)
class ChanceConstrainedProxies(BaseLoss):
    """A proxy loss ``base`` trained by iterative projections: the proxies jump to chosen samples.

    Gurbuz et al. read proxy-based DML as chance-constrained programming: every sample ``x`` of
    class ``c`` should lie within a ball around one of ``c``'s proxies with high probability, and
    the worst case of a proxy loss is governed by the radius of the smallest balls around ``K``
    points per class that cover the class's samples (more proxies per class, smaller radii). They
    solve it by alternating projections, iteration ``t = 0, 1, ...``:

    1. train the base loss plus a proximal term on the network weights ``theta``,
       ``L(theta, P) + (lambda_t / 2) |theta - theta_t|^2``, ``lambda_0 = 0`` and
       ``lambda_t = proximal * proximal_decay^t`` after the ``t``-th jump (the reported term
       ``proximal``; its gradient ``lambda_t (theta - theta_t)`` is what the official code adds);
    2. until the watched validation metric ``m`` has not improved (by more than 1e-5) for
       ``patience`` epochs in a row; meanwhile keep the best epoch's network weights
       ``theta*`` and proxies ``P*``;
    3. then jump: ``theta_{t+1} = theta*`` becomes the proximal anchor (the network itself trains
       on from where it is), and for each class ``c`` the new proxies are ``K`` of ``pool``
       random training samples of ``c`` (embedded now, normalised) chosen by greedy k-centre
       seeded with ``P*_c``: ``p_j = argmax_x min_{q in P*_c + {p_1..p_{j-1}}} |x - q|``
       (:func:`farthest_point_picks`), i.e. the samples worst covered by the best proxies; then
       the counter and the best value start afresh.

    Before epoch 1 the proxies are initialised the same way from samples (no seed: the first pick
    is a random sample). ``schedule="every"`` replaces steps 2-3's trigger by a fixed period (a
    jump before epochs ``1 + every``, ``1 + 2 every``, ...), with the latest network weights and
    proxies as ``theta*``, ``P*``.

    Details: each new proxy is rescaled to its row's previous norm (the base losses normalise
    proxies; this keeps the optimiser's step relative to the proxy); a class with fewer than
    ``K`` samples keeps its remaining proxies; the pool holds ``pool`` samples per class, or
    ``pool * K`` if ``pool < K`` (the official rule), drawn without replacement, seeded by the
    trial's seed and the epoch; at every jump the optimiser's state of the proxies (Adam's
    moments) is dropped (``reset_moments``). ``monitor`` names the metric watched (the trial's
    ``map_at_r`` by default, higher is better) or ``"loss"``, the base loss's mean over the
    previous training epoch (lower is better), which is also what a trial without validation
    metrics (``split=test``) watches. ``reinitialisations`` counts the jumps (initialisation not
    included); it is also reported as the weight-0 term ``reinitialisations``. The patience
    counter, best value, snapshots and anchor are in the loss's state, so a resumed trial
    continues exactly.

    ``base`` must be a proxy loss with ``proxies`` of shape ``(C * K, d)`` (class ``c`` owning rows
    ``c*K .. c*K + K-1``) and the parameters ``proxies_per_class`` and ``lambda``; terms are the
    base loss's plus ``proximal`` (weight 1) and ``reinitialisations`` (weight 0); ``lambda`` is
    passed to the base loss.

    Parameters: ``base`` (``proxy_anchor``); ``lambda`` (0.5); ``proxies_per_class`` ``K`` (4);
    ``pool`` (12, the official default); ``schedule`` ``patience`` (official) or ``every``;
    ``patience`` (3, official); ``every`` (3); ``monitor`` (``map_at_r``); ``proximal`` (2e-4) and
    ``proximal_decay`` (1.0), official; ``init_from_samples`` (true); ``reset_moments`` (true).
    With the official patience of 3 the first jump comes before epoch 5 at the earliest (the
    metric of epoch 1 sets the best, epochs 2-4 fail to beat it), so trials of a few epochs need
    ``schedule=every`` or a smaller ``patience`` to jump at all.

    Follows: Gurbuz, Can & Alatan 2022 / official code yetigurbuz/ccp-dml:
    AlternatingProjectionCallback.stepFn, ccpUpdate, _updateRepresentatives, _updateLambdaCoeff
    (framework/losses/ccp/callback.py), greedyKCenter (framework/utilities/proxy_utils.py),
    DistanceRegularizer (framework/solvers/gradient_transformers.py). Differs: the official loss is
    a pair loss (contrastive) on sample-proxy pairs plus 0.1 x the same pair loss on sample pairs,
    here any of our proxy losses (and its proxies learn at the network's rate, proxy_lrm 1.0, here
    at the trial's ``proxy_lr``); the official code keeps Adam's moments at a jump (reset here,
    ``reset_moments``), assigns the raw embedding (here the unit embedding at the proxy's previous
    norm) and measures k-centre distances between raw embeddings and raw proxies (here unit
    vectors); its fixed-period mode seeds k-centre and anchors the proximal term with its
    never-updated all-zero "best" buffers (here the latest proxies and weights); and its callback
    appears to read the metric logged before this epoch's evaluation (one epoch late), here the
    previous epoch's.
    """

    family: ClassVar[Family] = "wrapper"
    term_names: ClassVar[tuple[str, ...]] = ()
    extra_terms: ClassVar[tuple[str, ...]] = ("proximal", "reinitialisations")

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        base: Literal[
            "proxy_anchor", "proxy_nca", "multi_proxy_anchor", "softtriple", "normsoftmax", "vmf_proxies"
        ] = "proxy_anchor",
        lam: float = 0.5,
        proxies_per_class: int = 4,
        pool: int = 12,
        schedule: Literal["patience", "every"] = "patience",
        patience: int = 3,
        every: int = 3,
        monitor: str = "map_at_r",
        proximal: float = 2e-4,
        proximal_decay: float = 1.0,
        init_from_samples: bool = True,
        reset_moments: bool = True,
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
        if not monitor:
            raise ConfigError("loss.monitor", monitor, "a metric key (map_at_r, ...) or 'loss'")
        self.term_names = (*self.base.term_names, *self.extra_terms)  # type: ignore[misc]
        self.balance = self.base.balance  # type: ignore[misc]  # lambda is the base loss's
        self.expects_normalized = self.base.expects_normalized  # type: ignore[misc]
        self.lam = lam
        self.num_classes = num_classes
        self.proxies_per_class = proxies_per_class
        self.pool = pool
        self.schedule = schedule
        self.patience = patience
        self.every = every
        self.monitor = monitor
        self.proximal = proximal
        self.proximal_decay = proximal_decay
        self.init_from_samples = init_from_samples
        self.reset_moments = reset_moments
        # the network's trainable weights, taken from each epoch's context; a plain list, so the
        # network is no submodule (its weights are not the loss's parameters)
        self._net: list[torch.Tensor] = []
        self._reset_state()

    def _reset_state(self) -> None:
        self.started = False
        self.reinitialisations = 0
        self.stale_epochs = 0  # epochs in a row without improvement
        self.best = -math.inf  # the best watched value since the last jump (higher is better)
        self._best_proxies: torch.Tensor | None = None
        self._best_net: list[torch.Tensor] | None = None
        self._anchor: list[torch.Tensor] | None = None  # theta_t of the proximal term
        self._loss_sum = 0.0
        self._loss_steps = 0

    # -- the loss --------------------------------------------------------------------------
    def weights(self) -> dict[str, float]:
        return {**self.base.weights(), "proximal": 1.0, "reinitialisations": 0.0}

    @property
    def proximal_weight(self) -> float:
        """``lambda_t``: 0 until the first jump, then ``proximal * proximal_decay^t``."""
        if self.reinitialisations == 0:
            return 0.0
        return self.proximal * self.proximal_decay**self.reinitialisations

    def proximal_term(self) -> torch.Tensor | None:
        """``(lambda_t / 2) sum |theta - theta_t|^2`` over the network's trainable weights (None:
        no anchor yet or ``lambda_t = 0``)."""
        weight = self.proximal_weight
        if weight == 0.0 or self._anchor is None or not self._net:
            return None
        sq = sum(((p - a) ** 2).sum() for p, a in zip(self._net, self._anchor, strict=True))
        return 0.5 * weight * sq

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if self.base.uses_indices:  # no proxy base does (ccp's uses_indices stays False)
            out = dict(self.base(embeddings, labels, indices=indices))
        else:
            out = dict(self.base(embeddings, labels))
        base_total = out.pop("total")
        prox = self.proximal_term()
        out["proximal"] = (
            embeddings.new_zeros(()) if prox is None else prox.to(embeddings.dtype).to(embeddings.device)
        )
        out["reinitialisations"] = embeddings.new_tensor(float(self.reinitialisations))
        out["total"] = base_total + out["proximal"]
        if self.training and torch.is_grad_enabled():
            self._loss_sum += float(base_total.detach())
            self._loss_steps += 1
        return out

    # -- the schedule ----------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, context: Any) -> None:
        self.base.on_epoch_start(epoch, context)
        model = getattr(context, "model", None)
        self._net = [p for p in model.parameters() if p.requires_grad] if model is not None else []
        seed = (torch.initial_seed() % 2**32, epoch)
        loss = self._loss_sum / self._loss_steps if self._loss_steps else math.inf  # last epoch's
        self._loss_sum, self._loss_steps = 0.0, 0
        if not self.started:
            self.started = True
            if self.init_from_samples:
                self.reinitialise(context, seed=seed, centres=None, count=False)
            return
        if self.schedule == "every":
            if (epoch - 1) % self.every == 0:
                self._best_proxies = self.base.proxies.detach().clone()
                self._best_net = self._snapshot_net()
                self._jump(context, seed)
            return
        value = self._watched(getattr(context, "metrics", None) or {}, loss)
        if value > self.best + MIN_IMPROVEMENT:
            self.best = value
            self.stale_epochs = 0
            self._best_proxies = self.base.proxies.detach().clone()
            self._best_net = self._snapshot_net()
        else:
            self.stale_epochs += 1
        if self.stale_epochs >= self.patience:
            self._jump(context, seed)
            self.stale_epochs = 0
            self.best = -math.inf

    def _watched(self, metrics: dict[str, float], loss: float) -> float:
        """The value the patience watches (higher is better): the monitored metric, or minus the
        base loss's mean over the previous epoch."""
        if self.monitor == TRAINING_LOSS or not metrics:
            return -loss
        if self.monitor not in metrics:
            expected = f"'loss' or a metric the trial reports: {', '.join(metrics)}"
            raise ConfigError("loss.monitor", self.monitor, expected)
        return float(metrics[self.monitor])

    def _snapshot_net(self) -> list[torch.Tensor] | None:
        if self.proximal == 0.0:
            return None  # no proximal term: no copy of the network
        return [p.detach().clone() for p in self._net]

    def _jump(self, context: Any, seed: Any) -> None:
        """One projection: the anchor moves to the best weights, the proxies to new samples."""
        self.reinitialisations += 1
        self._anchor = self._best_net
        self.reinitialise(context, seed=seed, centres=self._best_proxies, count=False)

    @torch.no_grad()
    def reinitialise(
        self, context: Any, seed: Any, centres: torch.Tensor | None = None, count: bool = True
    ) -> None:
        """Set each class's proxies to its greedy k-centre picks among ``pool`` random training
        samples, seeded with ``centres`` (rows as the proxies'; None: no seed), and drop the
        optimiser's state of the proxies. ``count``: add one to :attr:`reinitialisations`."""
        rng = np.random.default_rng(seed)
        labels = np.asarray(context.train_labels)
        k = self.proxies_per_class
        size = self.pool if self.pool >= k else self.pool * k
        members = [np.flatnonzero(labels == c) for c in range(self.num_classes)]
        chosen = [rng.choice(m, size=min(size, len(m)), replace=False) for m in members]
        flat = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
        if len(flat) == 0:
            return
        embedded = context.embed_train(flat)
        proxies = self.base.proxies
        seeds = None if centres is None else torch.nn.functional.normalize(centres.float(), dim=1)
        start = 0
        for c, idx in enumerate(chosen):
            points = embedded[start : start + len(idx)].to(proxies.device, torch.float32)
            start += len(idx)
            own = None if seeds is None else seeds[c * k : (c + 1) * k].to(points.device)
            for j, pick in enumerate(farthest_point_picks(points, k, own)):
                row = c * k + j
                unit = points[pick] / points[pick].norm().clamp_min(1e-12)
                proxies[row] = (unit * proxies[row].float().norm()).to(proxies.dtype)
        if count:
            self.reinitialisations += 1
        reset = getattr(context, "reset_optimizer_state", None)
        if self.reset_moments and reset is not None:
            reset([proxies])

    # -- checkpoints -----------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "reinitialisations": self.reinitialisations,
            "stale_epochs": self.stale_epochs,
            "best": self.best,
            "best_proxies": self._best_proxies,
            "best_net": self._best_net,
            "anchor": self._anchor,
            "loss_sum": self._loss_sum,
            "loss_steps": self._loss_steps,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.started = bool(state["started"])
        self.reinitialisations = int(state["reinitialisations"])
        self.stale_epochs = int(state["stale_epochs"])
        self.best = float(state["best"])
        self._best_proxies = state["best_proxies"]
        self._best_net = None if state["best_net"] is None else list(state["best_net"])
        self._anchor = None if state["anchor"] is None else list(state["anchor"])
        self._loss_sum = float(state["loss_sum"])
        self._loss_steps = int(state["loss_steps"])
