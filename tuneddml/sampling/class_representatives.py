"""Class-representative batches: the batch construction of "Deep Metric Learning with Alternating
Projections onto Feasible Sets" (Can, Gürbüz & Alatan, ICIP 2021, arXiv 1907.07585)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from tuneddml.sampling import SAMPLERS
from tuneddml.sampling.m_per_class import MPerClass


@SAMPLERS.register(
    "class_representatives",
    ranges={
        "samples_per_class": "[2, 1024]",
        "hold": "[1, 100000]",
        "hard_fraction": "[0, 1]",
        "proximal_weight": "[0, inf)",
    },
)
class ClassRepresentatives(MPerClass):
    """P classes x K items, each class led by a representative held for ``hold`` batches.

    One of each class's K items is the class's *representative*: the same sample for ``hold``
    consecutive batches.

    The paper writes training as finding a feasible point of the constraint set
    ``{f : s(f(x), f(x')) >= m_pos if y = y', s(f(x), f(x')) <= m_neg otherwise}`` over all pairs,
    relaxes it to sets ``Omega_r`` that constrain only the pairs involving one representative
    sample ``r_c`` per class, and solves by alternating projections: each projection of the
    current point ``theta_k`` (the network's weights) onto ``Omega_r`` is relaxed to the usual loss
    on batches that contain ``r_c`` of each of their classes (so every pair constraint of
    ``Omega_r`` in the batch is enforced) plus a proximal term that keeps the new point near the
    previous one. For ``hold`` iterations SGD minimises

        total = L(theta; batch) + lambda / 2 * sum_w |theta_w - theta_k,w|^2

    (the sum over the model's trainable parameters; ``lambda`` = ``proximal_weight``, its gradient
    ``lambda (theta - theta_k)``), then new representatives are drawn and the weights reached
    become the next ``theta_k``. The trainer adds the term through :meth:`regulariser` (reported
    as ``proximal``, already weighted); ``theta_k`` is snapshot at the first step of each hold.
    During the first hold there is no previous projection and the term is 0, as in the authors'
    code.

    Follows: Can, Gurbuz & Alatan 2021 (arXiv 1907.07585), batch construction and hard class
    mining; the projection's regulariser as the authors' code yetigurbuz/ccp-dml:
    framework/solvers/gradient_transformers.py:DistanceRegularizer with
    framework/losses/ccp/callback.py:AlternatingProjectionCallback (their follow-up's shared
    framework; ``regularization_coeff = 2e-4``, our default). Differs: the paper's own text was
    not available here, so the regulariser's form and ``lambda`` come from that code (its
    ``coeff_decay`` of ``lambda`` per projection, 1.0 by default there, and its early-stopped
    "best weights" as the next ``theta_k`` are left out: ``theta_k`` is the weights at the end of
    the hold); representatives are drawn uniformly within their class.

    Because the representatives are in every batch, their embeddings come for free from the
    forward passes; with ``hard_fraction > 0`` they drive *hard class mining*: a batch is built
    from random seed classes plus, for ``round(hard_fraction * P)`` of its ``P`` classes, the
    classes whose representatives are most similar to a seed's (cosine similarity). The batches
    are drawn without the model, so the trainer must call :meth:`observe` with each batch's indices and
    embeddings; until it has, or for classes never observed, classes are drawn at random.

    Parameters (defaults; valid ranges):

    - ``samples_per_class`` K = 4 ([2, 1024]): items per class, the representative included;
      must divide ``batch_size``.
    - ``hold`` = 10 ([1, 1e5]): iterations (batches) one set of representatives is kept; the
      paper holds them "for a certain number of iterations" (one projection step).
    - ``hard_fraction`` = 0.0 ([0, 1]): share of each batch's classes chosen by hard class mining.
    - ``proximal_weight`` lambda = 2e-4 ([0, inf)): weight of the proximal term; 0: none (no term
      reported, the loss alone).
    - ``replacement`` = False: let classes with fewer than K items repeat items.

    Representatives are drawn uniformly at random within their class (our choice for the
    paper's "particular samples"); the hold count carries over from one epoch to the next.
    """

    def __init__(
        self,
        *,
        samples_per_class: int = 4,
        hold: int = 10,
        hard_fraction: float = 0.0,
        proximal_weight: float = 2e-4,
        replacement: bool = False,
    ) -> None:
        super().__init__(samples_per_class=samples_per_class, replacement=replacement)
        self.hold = hold
        self.hard_fraction = hard_fraction
        self._classes: np.ndarray | None = None  # class label of each eligible group
        self._reps: np.ndarray | None = None  # representative item index of each group
        self._age = 0  # batches drawn with the current representatives
        self._rep_embedding: dict[int, np.ndarray] = {}  # class label -> latest representative embedding
        self.proximal_weight = proximal_weight
        self._span = 0  # sets of representatives drawn so far (1 during the first hold)
        self._anchor: dict[str, torch.Tensor] | None = None  # theta_k: weights at the current hold's start
        self._anchor_span = 0  # the hold theta_k was taken in

    # -- representatives ---------------------------------------------------------------------
    def _prepare(self, classes: np.ndarray, groups: list[np.ndarray], rng: np.random.Generator) -> None:
        if self._classes is None or not np.array_equal(classes, self._classes):
            self._classes, self._reps, self._age = classes, None, 0
        if self._reps is None or self._age >= self.hold:
            self._reps = np.array([rng.choice(g) for g in groups])
            self._age = 0
            self._span += 1

    def representatives(self) -> dict[int, int]:
        """Class label -> index of its current representative (empty before the first batch)."""
        if self._reps is None or self._classes is None:
            return {}
        return {int(c): int(r) for c, r in zip(self._classes, self._reps, strict=True)}

    def observe(self, indices: np.ndarray, embeddings: torch.Tensor) -> None:
        """Remember the embeddings of the representatives among ``indices`` (a training batch,
        with its L2-normalised embeddings): the hard class mining reads them."""
        if self._reps is None or self._classes is None:
            return
        where = {int(r): int(c) for c, r in zip(self._classes, self._reps, strict=True)}
        emb = embeddings.detach().float().cpu().numpy()
        for row, index in enumerate(np.asarray(indices).tolist()):
            if index in where:
                self._rep_embedding[where[index]] = emb[row]

    def regulariser(
        self, model: nn.Module, indices: np.ndarray, embeddings: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{"proximal": lambda / 2 sum_w |theta_w - theta_k,w|^2}`` over ``model``'s trainable
        parameters (see the class docstring); ``{}`` when ``proximal_weight`` is 0. Called after
        the batch was drawn (the trainer draws the next one after the step), so a changed set of
        representatives means a new projection: the current weights become ``theta_k``."""
        if self.proximal_weight == 0 or self._reps is None:
            return {}
        params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if self._anchor_span != self._span:
            self._anchor = None if self._span <= 1 else {name: p.detach().clone() for name, p in params}
            self._anchor_span = self._span
        if self._anchor is None:  # the first hold: no previous projection
            like = params[0][1] if params else torch.zeros(())  # the weights' device and dtype
            return {"proximal": like.new_zeros(())}
        squared = sum(((p - self._anchor[name].to(p)) ** 2).sum() for name, p in params)
        return {"proximal": 0.5 * self.proximal_weight * squared}

    # -- batches -------------------------------------------------------------------------------
    def _pick_classes(self, p: int, rng: np.random.Generator) -> np.ndarray:
        assert self._classes is not None
        n = len(self._classes)
        n_hard = min(round(self.hard_fraction * p), p - 1)
        known = [g for g in range(n) if int(self._classes[g]) in self._rep_embedding]
        if n_hard == 0 or len(known) < 2:
            return rng.choice(n, size=p, replace=False)
        seeds = list(rng.choice(n, size=p - n_hard, replace=False))
        known_arr = np.array(known)
        emb = np.stack([self._rep_embedding[int(self._classes[g])] for g in known])
        chosen = set(seeds)
        picks = list(seeds)
        # round-robin over the seeds: each adds its most similar class not yet in the batch
        order = [s for s in seeds if int(self._classes[s]) in self._rep_embedding]
        sims = {s: emb @ self._rep_embedding[int(self._classes[s])] for s in order}
        ranked = {s: known_arr[np.argsort(-sims[s], kind="stable")] for s in order}
        cursor = dict.fromkeys(order, 0)
        while len(picks) < p and order:
            for s in list(order):
                while cursor[s] < len(ranked[s]) and ranked[s][cursor[s]] in chosen:
                    cursor[s] += 1
                if cursor[s] == len(ranked[s]):
                    order.remove(s)
                    continue
                g = int(ranked[s][cursor[s]])
                chosen.add(g)
                picks.append(g)
                if len(picks) == p:
                    break
        if len(picks) < p:  # not enough observed classes: fill at random
            rest = np.array([g for g in range(n) if g not in chosen])
            picks.extend(rng.choice(rest, size=p - len(picks), replace=False).tolist())
        return np.array(picks)

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        groups = self._eligible(labels)
        classes = np.array([labels[g[0]] for g in groups])
        p = batch_size // self.k
        for _ in range(self.num_batches(labels, batch_size)):
            self._prepare(classes, groups, rng)
            assert self._reps is not None
            picks = []
            for g in self._pick_classes(p, rng):
                rep = self._reps[g]
                others = groups[g][groups[g] != rep]
                short = len(others) < self.k - 1
                rest = rng.choice(others if len(others) else groups[g], size=self.k - 1, replace=short)
                picks.append(np.concatenate([[rep], rest]))
            self._age += 1
            yield np.concatenate(picks).astype(np.int64)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "classes": self._classes,
            "reps": self._reps,
            "age": self._age,
            "rep_embedding": dict(self._rep_embedding),
            "span": self._span,
            "anchor_span": self._anchor_span,
            "anchor": None if self._anchor is None else {k: v.cpu() for k, v in self._anchor.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._classes, self._reps, self._age = state["classes"], state["reps"], int(state["age"])
        self._rep_embedding = dict(state["rep_embedding"])
        self._span, self._anchor_span = int(state.get("span", 0)), int(state.get("anchor_span", 0))
        anchor = state.get("anchor")
        self._anchor = None if anchor is None else {k: v.clone() for k, v in anchor.items()}
