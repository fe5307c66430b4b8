"""Hierarchical batches: super-groups of similar classes, then classes within them (after the
class hierarchy of "Deep Metric Learning with Hierarchical Triplet Loss", Ge, Huang, Dong & Scott,
ECCV 2018)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch

from tuneddml.errors import ConfigError
from tuneddml.sampling import SAMPLERS
from tuneddml.sampling.m_per_class import MPerClass


@SAMPLERS.register(
    "hierarchical",
    ranges={"samples_per_class": "[1, 1024]", "classes_per_group": "[1, 1024]", "group_size": "[1, 100000]"},
)
class Hierarchical(MPerClass):
    """Batches from a few super-groups of similar classes (class hierarchy sampling, HTL).

    Each batch draws ``G`` super-groups, ``classes_per_group`` classes from each, and
    ``K = samples_per_class`` items of each class: ``batch_size = G * classes_per_group * K``.

    Classes of one super-group are neighbours, so a batch is rich in hard negative *classes*
    (HTL builds a class tree from the distances between class means and samples a batch from
    neighbouring leaves). Datasets here carry no super-class labels and the sampler sees no model,
    so the super-groups come from what is available:

    - ``grouping="embedding"`` (default): HTL's idea, from the class-mean embeddings of the
      previous pass. The trainer calls :meth:`observe` with each batch's indices and
      L2-normalised embeddings; at the start of the next pass (epoch) the classes are grouped
      greedily, ``group_size`` at a time: a random unassigned class and its most similar
      unassigned classes (cosine of the class means; a class missing from the last pass keeps
      its latest mean). Classes never observed, and every class in the first pass, are grouped
      at random.
    - ``grouping="random"``: a seeded random partition, drawn anew each pass.

    Parameters (defaults; valid ranges):

    - ``samples_per_class`` K = 4 ([1, 1024]);
    - ``classes_per_group`` = 4 ([1, 1024]): classes a drawn super-group contributes;
    - ``group_size`` = 8 ([1, 1e5]), at least ``classes_per_group``: classes per super-group
      (the partition has ``n // group_size`` groups of ``group_size`` to ``2 group_size - 1``);
    - ``grouping`` = "embedding" (embedding, random);
    - ``replacement`` = False: let classes with fewer than K items repeat items.

    Follows: the class-hierarchy sampling idea of Ge et al. 2018 (HTL). Differs: super-groups are formed
    greedily from class-mean cosine similarities, not from HTL's hierarchical class tree, and HTL's loss
    with its dynamic violate margin is not implemented (the trial's loss is used).
    """

    def __init__(
        self,
        *,
        samples_per_class: int = 4,
        classes_per_group: int = 4,
        group_size: int = 8,
        grouping: Literal["embedding", "random"] = "embedding",
        replacement: bool = False,
    ) -> None:
        super().__init__(samples_per_class=samples_per_class, replacement=replacement)
        if group_size < classes_per_group:
            raise ConfigError(
                "sampler.group_size", group_size, f"at least classes_per_group={classes_per_group}"
            )
        self.classes_per_group = classes_per_group
        self.group_size = group_size
        self.grouping = grouping
        self.groups: list[np.ndarray] = []  # super-groups, as positions in the eligible-class list
        self._labels: np.ndarray | None = None
        self._sums: dict[int, np.ndarray] = {}  # class label -> sum of this pass's embeddings
        self._means: dict[int, np.ndarray] = {}  # class label -> latest normalised class mean
        self._passes = 0
        self._warned = False

    def check(self, labels: np.ndarray, batch_size: int) -> None:
        per_group = self.k * self.classes_per_group
        if batch_size % per_group:
            raise ConfigError(
                "batch_size",
                batch_size,
                f"a multiple of samples_per_class * classes_per_group = {per_group}",
            )
        super().check(labels, batch_size)
        needed = batch_size // per_group
        available = len(self._eligible(labels)) // self.group_size
        if needed > available:
            raise ConfigError(
                "batch_size",
                batch_size,
                f"at most {available * per_group}: a batch needs {needed} super-groups but the "
                f"{len(self._eligible(labels))} usable classes make only {available} groups of "
                f"group_size={self.group_size}; lower batch_size or sampler.group_size",
            )

    # -- super-groups --------------------------------------------------------------------------
    def _random_groups(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        return np.array_split(rng.permutation(n), max(1, n // self.group_size))

    def _embedding_groups(self, classes: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(classes)
        sizes = [len(g) for g in np.array_split(np.arange(n), max(1, n // self.group_size))]
        seen = np.array([int(c) in self._means for c in classes])
        dim = len(next(iter(self._means.values())))
        means = np.zeros((n, dim), dtype=np.float32)
        for pos in np.flatnonzero(seen):
            means[pos] = self._means[int(classes[pos])]
        free = seen.copy()  # unseen classes fill the remaining places at random, below
        groups: list[list[int]] = []
        for pos in rng.permutation(np.flatnonzero(seen)):
            if not free[pos]:
                continue
            free[pos] = False
            size = sizes[len(groups)]
            candidates = np.flatnonzero(free)
            near = candidates[np.argsort(-(means[candidates] @ means[pos]), kind="stable")[: size - 1]]
            free[near] = False
            groups.append([int(pos), *near.tolist()])
            if len(groups) == len(sizes):
                break
        rest = list(rng.permutation(np.flatnonzero(~seen | free)))
        for gi, size in enumerate(sizes):
            if gi == len(groups):
                groups.append([])
            while len(groups[gi]) < size:
                groups[gi].append(int(rest.pop()))
        return [np.array(g) for g in groups]

    def _regroup(self, classes: np.ndarray, rng: np.random.Generator) -> None:
        for label, total in self._sums.items():  # a class not seen in the last pass keeps its older mean
            self._means[label] = total / max(float(np.linalg.norm(total)), 1e-12)
        self._sums = {}
        if self.grouping == "embedding" and self._means:
            self.groups = self._embedding_groups(classes, rng)
            return
        if self.grouping == "embedding" and self._passes >= 1 and not self._warned:
            warnings.warn(
                "hierarchical sampler: no embeddings were observed (the trainer does not call "
                "sampler.observe), so super-groups are random",
                stacklevel=2,
            )
            self._warned = True
        self.groups = self._random_groups(len(classes), rng)

    def observe(self, indices: np.ndarray, embeddings: torch.Tensor) -> None:
        """Add a training batch's embeddings to the class sums of this pass."""
        if self._labels is None:
            return
        emb = embeddings.detach().float().cpu().numpy()
        for label, row in zip(self._labels[np.asarray(indices)].tolist(), emb, strict=True):
            if label in self._sums:
                self._sums[label] += row
            else:
                self._sums[label] = row.copy()

    # -- batches -------------------------------------------------------------------------------
    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        class_items = self._eligible(labels)
        classes = np.array([labels[g[0]] for g in class_items])
        self._labels = labels
        self._regroup(classes, rng)
        self._passes += 1
        n_groups = batch_size // (self.k * self.classes_per_group)
        for _ in range(self.num_batches(labels, batch_size)):
            picks = []
            for gi in rng.choice(len(self.groups), size=n_groups, replace=False):
                group = self.groups[gi]
                for pos in rng.choice(group, size=self.classes_per_group, replace=False):
                    items = class_items[pos]
                    short = self.replacement and len(items) < self.k
                    picks.append(rng.choice(items, size=self.k, replace=short))
            yield np.concatenate(picks).astype(np.int64)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "sums": dict(self._sums),
            "means": dict(self._means),
            "passes": self._passes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups = list(state["groups"])
        self._sums = dict(state["sums"])
        self._means = dict(state["means"])
        self._passes = int(state["passes"])
