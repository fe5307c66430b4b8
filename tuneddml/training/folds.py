"""A cross-validated trial: one model per class-disjoint fold, trained side by side (Musgrave et
al., "A Metric Learning Reality Check", ECCV 2020, section 4.2).

With ``cross_validate=true`` a trial trains ``num_folds`` models: model ``i`` on the training
classes outside fold ``i``, scored on fold ``i`` (:func:`tuneddml.data.splits.make_split` with
``split="val", fold=i``). Every epoch trains each fold model for one epoch, in fold order, then
reports:

- with ``split=val`` (a search's trial): the mean over the fold models of every metric under the
  metric's own key (what the searcher and the scheduler see), and each fold model's value under
  ``fold<i>/<key>``;
- with ``split=test`` (the once-only final evaluation of a chosen configuration): every fold model
  scored on the test classes, the mean over them under the metric keys ("separated", the paper's
  128-d numbers), the fold models' L2-normalised embeddings concatenated and normalised again
  scored under ``concat/<key>`` ("concatenated", 512-d with 4 folds of 128), the validation mean
  under ``val/<key>``, and each fold model's test value under ``fold<i>/<key>``.

The folds run in one trial (one process) rather than as parallel Ray trials: the trial's value is
then one result the searcher and the scheduler (ASHA compares means at each rung) see at once, a
checkpoint holds all fold models at one epoch, and parallelism comes from running several
configurations at once (measured in bench/RESULTS.md: one trial per fold costs 1.3-1.4x the
CPU). Each fold model draws its batches and augmentation from its own generators, so with the
defaults fold model ``i`` equals a single-fold trial of fold ``i`` to every digit (measured); the
fold models do share the process's global torch random state, in a fixed order, so a component
that draws from it (dropout, a random miner) makes them differ slightly, while the trial stays
reproducible and resumable.

The paper also picks each fold model's best epoch on its validation fold; here every fold model
trains for the trial's ``epochs``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuneddml.config import DATASET_RUNTIME, TrialConfig
from tuneddml.results.schema import ENSEMBLE, VALIDATION, fold_key
from tuneddml.training.loop import EpochReport, Reporter, Trainer, TrialResult

#: the key a cross-validated trial's checkpoint has instead of a single trainer's
FOLDS_KEY = "folds"


class FoldsTrainer:
    """``num_folds`` :class:`Trainer` s of one configuration, one per fold; the same interface as
    a :class:`Trainer` for what the trainable and ``run_trial`` use (``run``, ``save``,
    ``state_dict``/``load_state_dict``, ``data``, ``epoch``, ``device``, ``config``)."""

    def __init__(self, config: TrialConfig) -> None:
        from tuneddml.data import DATASETS
        from tuneddml.data.splits import make_split

        self.config = config
        runtime = {arg: getattr(config, top) for arg, top in DATASET_RUNTIME.items()}
        dataset = DATASETS.build(config.dataset, config.dataset_params, field="dataset", **runtime)
        self.folds = [
            Trainer(config.replace(split="val", fold=i, cross_validate=False), dataset=dataset)
            for i in range(config.num_folds)
        ]
        self.device = self.folds[0].device
        self.test = None
        if config.split == "test":
            # features=cached: the test classes' cached features, as the fold models' data
            source = self.folds[0].feature_dataset if config.features == "cached" else dataset
            self.test = make_split(source, split="test")
            if config.resize_size is not None:
                self.test = self.test.resized(config.resize_size)
        # the trial's data as its digest names it: the split it was asked for
        self.data = self.test if self.test is not None else self.folds[config.fold].data
        self.epoch = 0
        self.history: list[EpochReport] = []
        self._elapsed_before = 0.0

    # -- one epoch of every fold model -----------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One epoch of each fold model; the loss terms' means over the fold models."""
        terms = [trainer.train_epoch() for trainer in self.folds]
        self.epoch += 1
        return _mean_dicts(terms)

    def evaluate(self) -> dict[str, float]:
        """The trial's metrics (module docstring): validation, or test with the fold ensemble."""
        val = [trainer.evaluate() for trainer in self.folds]
        if self.test is None:
            out = _mean_dicts(val)
            for i, metrics in enumerate(val):
                out.update({fold_key(i, k): v for k, v in metrics.items()})
            return out
        from tuneddml.evaluation import evaluate, knn_for_device

        test = self.test
        query = [trainer.embed(test.query) for trainer in self.folds]
        gallery = [trainer.embed(test.gallery) for trainer in self.folds] if test.gallery is not None else None
        gallery_labels = test.gallery.labels if test.gallery is not None else None

        def score(q: torch.Tensor, g: torch.Tensor | None) -> dict[str, float]:
            return evaluate(
                q,
                test.query.labels,
                g,
                gallery_labels,
                seed=self.config.seed,
                with_ap=self.config.eval_ap,
                with_nmi=self.config.eval_nmi,
                knn=knn_for_device(self.device),
            )

        separate = [score(q, gallery[i] if gallery else None) for i, q in enumerate(query)]
        out = _mean_dicts(separate)
        for i, metrics in enumerate(separate):
            out.update({fold_key(i, k): v for k, v in metrics.items()})
        out.update({f"{VALIDATION}{k}": v for k, v in _mean_dicts(val).items()})
        ensemble = score(concatenated(query), concatenated(gallery) if gallery else None)
        out.update({f"{ENSEMBLE}{k}": v for k, v in ensemble.items()})
        return out

    # the epochs, the reports and the result exactly as a single model's (Trainer.run reads only
    # train_epoch, evaluate, config, epoch, history and the elapsed time, which this class has)
    run = Trainer.run

    # -- checkpoints: every fold model's trainer state, in one file ---------------------------
    def state_dict(self) -> dict[str, Any]:
        """A trainer checkpoint's keys (:data:`~tuneddml.training.loop.STATE_KEYS`, those of a single
        model empty, so a single-model trainer refuses it) and every fold's trainer state."""
        from tuneddml.training.loop import STATE_KEYS

        state: dict[str, Any] = dict.fromkeys(STATE_KEYS)
        state.update(
            config=self.config.to_flat(),
            epoch=self.epoch,
            history=[dataclasses.asdict(r) for r in self.history],
            elapsed=self._elapsed_before,
        )
        state[FOLDS_KEY] = [trainer.state_dict() for trainer in self.folds]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        folds = state.get(FOLDS_KEY)
        if not isinstance(folds, list) or len(folds) != len(self.folds):
            raise ValueError(f"not a checkpoint of a {len(self.folds)}-fold cross-validated trial")
        for trainer, fold_state in zip(self.folds, folds):
            trainer.load_state_dict(fold_state)
        self.epoch = int(state["epoch"])
        self.history = [EpochReport(**r) for r in state["history"]]
        self._elapsed_before = float(state["elapsed"])

    def save(self, path: Any) -> None:
        Trainer.save(self, path)  # type: ignore[arg-type]  # the same atomic, weights-only write

    def restore(self, path: Any) -> None:
        from tuneddml.training.loop import read_checkpoint

        self.load_state_dict(read_checkpoint(path, self.device))


def concatenated(parts: list[torch.Tensor] | None) -> torch.Tensor:
    """The fold ensemble's embeddings: each model's (already L2-normalised) embeddings side by
    side, normalised again, so the ensemble's cosine is the mean of the models' cosines."""
    assert parts
    return F.normalize(torch.cat(parts, dim=1), dim=1)


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean over the dicts (keys every dict has), as floats."""
    keys = [k for k in dicts[0] if all(k in d for d in dicts)]
    return {k: float(np.mean([d[k] for d in dicts])) for k in keys}


def make_trainer(config: TrialConfig) -> Trainer | FoldsTrainer:
    """The trainer of a trial: :class:`FoldsTrainer` for ``cross_validate``, else :class:`Trainer`."""
    return FoldsTrainer(config) if config.cross_validate else Trainer(config)


def run_trial(
    config: TrialConfig, reporter: Reporter | None = None, *, resume: str | Path | None = None
) -> TrialResult:
    """Train and evaluate one trial (every entry point's one function); ``resume`` continues from a
    :meth:`Trainer.save` file. A ``cross_validate`` trial trains one model per fold."""
    trainer = make_trainer(config)
    if resume is not None:
        trainer.restore(resume)
    return trainer.run(reporter)
