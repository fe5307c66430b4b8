# Long file: the trainer and the weights-only format of its checkpoints (read_checkpoint, _plain), which change together.
"""Training and evaluating one trial.

:func:`tuneddml.training.run_trial` is the single function every entry point uses (the ``train`` CLI, Ray Tune
trials, tests). It builds a :class:`Trainer`, runs the epochs and calls ``reporter`` after each
one with the epoch's metrics and the mean of every loss term. A :class:`Trainer` can be saved and
restored between epochs, which is what Ray Tune's checkpoints use.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuneddml.config import DATASET_RUNTIME, TrialConfig, split_backbone_params
from tuneddml.errors import ConfigError, TrialDiverged
from tuneddml.losses.base import EpochContext
from tuneddml.results import epoch_record
from tuneddml.sampling.base import EmbeddingAugmenter
from tuneddml.training import features, optimisation


@dataclass
class EpochReport:
    """What a trial reports after each epoch."""

    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]  # retrieval metrics on the evaluation classes
    terms: dict[str, float]  # mean of each loss term over the epoch, incl. "total"
    train_seconds: float  # this epoch's training time
    eval_seconds: float
    elapsed: float  # since the trial started

    @property
    def eta(self) -> float:
        """Estimated seconds left, from the mean epoch time so far."""
        return self.elapsed / self.epoch * (self.epochs - self.epoch)

    def flat(self) -> dict[str, float]:
        """The epoch's record (:func:`tuneddml.results.epoch_record`), as Ray and MLflow take it."""
        return epoch_record(self.epoch, self.metrics, self.terms, self.train_seconds, self.eval_seconds)


@dataclass
class TrialResult:
    config: TrialConfig
    metrics: dict[str, float]  # of the last epoch
    history: list[EpochReport] = field(default_factory=list)
    seconds: float = 0.0


Reporter = Callable[[EpochReport, "Trainer"], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", name, "auto or cpu: no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Holds a trial's data, model, loss and optimiser; trains and evaluates epoch by epoch."""

    def __init__(self, config: TrialConfig, *, dataset: Any = None) -> None:
        """``dataset``: the trial's dataset, already built (a cross-validated trial's fold models
        share one); None: built from the config."""
        from tuneddml.data import DATASETS
        from tuneddml.data.splits import make_split
        from tuneddml.models import build_model
        from tuneddml.sampling import SAMPLERS

        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        seed_everything(config.seed)

        runtime = {arg: getattr(config, top) for arg, top in DATASET_RUNTIME.items()}
        if dataset is None:
            dataset = DATASETS.build(config.dataset, config.dataset_params, field="dataset", **runtime)
        self.data = make_split(
            dataset, split=config.split, num_folds=config.num_folds, fold=config.fold, seed=config.fold_seed
        )
        if config.resize_size is not None:
            self.data = self.data.resized(config.resize_size)
        self.sampler = SAMPLERS.build(config.sampler, config.sampler_params, field="sampler")
        self.sampler.check(self.data.train.labels, config.batch_size)

        backbone_params, backbone_settings = split_backbone_params(config.backbone_params)
        self.model = build_model(
            config.backbone,
            backbone_params,
            item_shape=self.data.train.item_shape,
            embedding_size=config.embedding_size,
            freeze_bn=backbone_settings["freeze_bn"],
            freeze=config.backbone_frozen,
        ).to(self.device)
        self.feature_dataset: Any = None  # features=cached: the dataset of cached features
        if config.features == "cached":  # the data: cached features; the backbone: an identity
            features.use_cached_features(self, dataset)
        self.channels_last = optimisation.use_channels_last(
            config, self.device, self.data.train.item_shape, self.model
        )
        if self.channels_last:
            self.model = optimisation.to_channels_last(self.model)
        loss, embedding_aug = build_loss_parts(
            config, num_classes=self.data.num_train_classes, num_train=len(self.data.train.labels)
        )
        self.loss = loss.to(self.device)
        self.embedding_aug: EmbeddingAugmenter | None = (
            embedding_aug.to(self.device) if embedding_aug is not None else None
        )
        extra = list(self.embedding_aug.parameters()) if self.embedding_aug is not None else []
        groups = optimisation.param_groups(
            config, self.model, [*self.loss.parameters(), *extra], backbone_settings["lr"]
        )
        self.optimizer = optimisation.make_optimizer(config, groups)
        self.trained = [p for g in self.optimizer.param_groups for p in g["params"]]
        # one epoch's optimiser steps, for the schedule: computed once
        self.steps_per_epoch = config.steps_per_epoch or self.sampler.num_batches(
            self.data.train.labels, config.batch_size
        )
        self.scheduler = optimisation.make_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.scaler = optimisation.make_scaler(config, self.device)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0  # epochs completed
        self.history: list[EpochReport] = []
        self._elapsed_before = 0.0
        self.last_metrics: dict[str, float] = {}  # of the last evaluate(): the epoch hooks' context.metrics

    # -- batches -------------------------------------------------------------------------
    def _autocast(self) -> Any:
        dtype = optimisation.autocast_dtype(self.config, self.device)
        return nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)

    @cached_property
    def inputs(self) -> Any:
        """The input pipeline (:class:`tuneddml.data.loader.InputPipeline`), built on first use."""
        from tuneddml.data.loader import InputPipeline
        from tuneddml.sampling.base import BatchSampler

        parts = {"train": self.data.train, "query": self.data.query, "gallery": self.data.gallery}
        return InputPipeline(
            parts,
            augmentation=self.data.augmentation if self.config.augments else "none",
            seed=self.config.seed,
            device=self.device,
            workers=self.config.workers,
            threads=self.config.threads,
            in_order=type(self.sampler).observe is not BatchSampler.observe,  # adapts to the model
        )

    def _train_batches(self) -> Iterator[np.ndarray]:
        labels = self.data.train.labels
        steps = self.config.steps_per_epoch
        produced = 0
        while True:
            for batch in self.sampler.batches(labels, self.config.batch_size, self.rng):
                yield batch
                produced += 1
                if steps is not None and produced >= steps:
                    return
            if steps is None:
                return

    # -- one epoch -----------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        epoch = self.epoch + 1
        self.model.train()
        self.loss.train()
        features.select_epoch_view(self, epoch)  # feature_views: this epoch's augmented view
        context = self._context(epoch)
        self.loss.on_epoch_start(epoch, context)
        if self.embedding_aug is not None:
            self.embedding_aug.train()
            self.embedding_aug.on_epoch_start(epoch, context)
        sums: dict[str, float] = {}
        steps = 0
        train = self.data.train
        batches = self.inputs.train(self._train_batches(), epoch, self.generator)
        for step, (indices, x) in enumerate(batches, start=1):
            y = torch.from_numpy(train.labels[indices]).to(self.device)
            with self._autocast():
                emb = self.model(x)
            emb = emb.float()
            self.sampler.observe(indices, F.normalize(emb.detach(), dim=1))
            if self.loss.expects_normalized:
                emb = F.normalize(emb, dim=1)
            if self.embedding_aug is not None:
                emb, y = self.embedding_aug(emb, y)
            terms = self.loss.batch_terms(emb, y, indices)  # indices: to losses that use them
            extra = self.sampler.regulariser(self.model, indices, emb)
            if extra:  # the sampler's own weighted terms: reported beside the loss's, added to total
                terms = {**terms, **extra, "total": terms["total"] + sum(extra.values())}
            total = terms["total"]
            if not torch.isfinite(total):
                raise TrialDiverged(epoch, step, {k: float(v.detach()) for k, v in terms.items()})
            self._step(total)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
        self.epoch = epoch
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def _step(self, total: torch.Tensor) -> None:
        """Backward (scaled under fp16), clip the gradients' norm, optimiser step, schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.config.grad_clip
        if self.scaler is None:
            total.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.trained, clip)
            self.optimizer.step()
        else:
            self.scaler.scale(total).backward()
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trained, clip)
            self.scaler.step(self.optimizer)  # skipped where the scaled gradients overflowed
            self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()

    @torch.no_grad()
    def embed(self, items: Any, indices: np.ndarray | None = None) -> torch.Tensor:
        """Normalised embeddings of ``items`` (all, or ``indices``), in eval mode, on the CPU."""
        was_training = self.model.training
        self.model.eval()
        order = np.arange(len(items)) if indices is None else np.asarray(indices)
        out = []
        bs = self.config.eval_batch_size
        for x in self.inputs.eval(items, order, bs):
            with self._autocast():
                out.append(F.normalize(self.model(x).float(), dim=1).cpu())
        self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.config.embedding_size)

    def evaluate(self) -> dict[str, float]:
        """Retrieval metrics of the current model on the evaluation classes; the kNN search runs
        on the trial's device (:func:`~tuneddml.evaluation.knn_for_device`: faiss on the CPU,
        faiss's GPU index or brute-force torch on CUDA)."""
        from tuneddml.evaluation import evaluate, knn_for_device

        query = self.embed(self.data.query)
        gallery = gallery_labels = None
        if self.data.gallery is not None:
            gallery = self.embed(self.data.gallery)
            gallery_labels = self.data.gallery.labels
        self.last_metrics = evaluate(
            query,
            self.data.query.labels,
            gallery,
            gallery_labels,
            seed=self.config.seed,
            with_ap=self.config.eval_ap,
            with_nmi=self.config.eval_nmi,
            knn=knn_for_device(self.device),
        )
        return self.last_metrics

    def _context(self, epoch: int) -> EpochContext:
        def reset_optimizer_state(params: Any) -> None:
            for p in params:
                self.optimizer.state.pop(p, None)  # Adam & co. start that parameter's state afresh

        return EpochContext(
            epoch=epoch,
            model=self.model,
            train_labels=self.data.train.labels,
            embed_train=lambda idx: self.embed(self.data.train, idx).to(self.device),
            device=self.device,
            # the validation metrics only: with split=test the evaluation classes are the test's
            metrics=dict(self.last_metrics) if self.config.split != "test" else {},
            reset_optimizer_state=reset_optimizer_state,
        )

    # -- the whole trial -----------------------------------------------------------------
    def run(self, reporter: Reporter | None = None) -> TrialResult:
        start = time.perf_counter() - self._elapsed_before
        while self.epoch < self.config.epochs:
            t0 = time.perf_counter()
            terms = self.train_epoch()
            t1 = time.perf_counter()
            metrics = self.evaluate()
            t2 = time.perf_counter()
            report = EpochReport(self.epoch, self.config.epochs, metrics, terms, t1 - t0, t2 - t1, t2 - start)
            self.history.append(report)
            self._elapsed_before = t2 - start
            if reporter is not None:
                reporter(report, self)
        final = self.history[-1].metrics if self.history else self.evaluate()
        return TrialResult(self.config, final, list(self.history), time.perf_counter() - start)

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_flat(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "embedding_aug": self.embedding_aug.state_dict() if self.embedding_aug is not None else None,
            "sampler": self.sampler.state_dict() or None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": self.rng.bit_generator.state,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": [r.__dict__ for r in self.history],
            "elapsed": self._elapsed_before,
            "metrics": dict(self.last_metrics),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        if self.embedding_aug is not None:
            self.embedding_aug.load_state_dict(state["embedding_aug"])
        if state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = int(state["epoch"])
        self.history = [EpochReport(**r) for r in state["history"]]
        self._elapsed_before = float(state["elapsed"])
        self.last_metrics = dict(state.get("metrics") or {})  # absent from older checkpoints

    def save(self, path: str | Path) -> None:
        """Write the state atomically (temp file + rename): a killed trial leaves no half file.

        The file holds tensors and plain data only (numpy arrays and scalars as tensors of their
        bytes), so :meth:`restore` reads it with ``weights_only=True`` and never runs code."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(_plain(self.state_dict(), "state"), tmp)
        tmp.replace(path)

    def restore(self, path: str | Path) -> None:
        """Continue from a :meth:`save` file; :class:`UnreadableCheckpoint` if it is missing,
        truncated, not a checkpoint, or holds anything but tensors and plain data."""
        self.load_state_dict(read_checkpoint(path, self.device))


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint file that cannot be restored: missing, truncated, foreign, or refused because
    it carries code (a pickled callable) rather than tensors and plain data."""


#: the keys every :meth:`Trainer.state_dict` has
STATE_KEYS = frozenset(
    "config epoch model loss embedding_aug sampler optimizer scheduler scaler rng generator torch_rng "
    "history elapsed".split()
)
_NDARRAY = "__tuneddml_ndarray__"  # {_NDARRAY: dtype, "shape": [...], "bytes": uint8 tensor}
_NUMPY = "__tuneddml_numpy__"  # {_NUMPY: dtype, "value": Python scalar}


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state in a :meth:`Trainer.save` file, read weights-only (no code can run)."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise UnreadableCheckpoint(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        if "weights only load failed" in lines[0].lower():  # a global (class, function) in the pickle
            what = next((line for line in lines if "unsupported" in line.lower()), lines[-1])
            what = what.replace("WeightsUnpickler error: ", "").split(" was not an allowed")[0][:100]
            raise UnreadableCheckpoint(
                f"checkpoint {path}: refused, it holds more than tensors and plain data ({what})"
            ) from None
        raise UnreadableCheckpoint(
            f"checkpoint {path}: unreadable, truncated or not a checkpoint ({lines[0][:120]})"
        ) from None
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise UnreadableCheckpoint(f"checkpoint {path}: not a trainer checkpoint (its keys differ)")
    return _unplain(state)


def _plain(value: Any, where: str) -> Any:
    """``value`` as tensors and plain containers of str, int, float, bool and None: what
    ``torch.load(weights_only=True)`` reads. A type it cannot hold is a TypeError naming where."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"checkpoint: {where} is a numpy array of Python objects")
        data = np.frombuffer(np.ascontiguousarray(value).tobytes(), dtype=np.uint8).copy()
        return {_NDARRAY: value.dtype.str, "shape": list(value.shape), "bytes": torch.from_numpy(data)}
    if isinstance(value, np.generic):
        return {_NUMPY: value.dtype.str, "value": value.item()}
    if isinstance(value, dict):
        plain = (
            (k.item() if isinstance(k, np.generic) else k, _plain(v, f"{where}[{k!r}]"))
            for k, v in value.items()
        )
        return _like(value, plain)
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"checkpoint: {where} is a {type(value).__name__}, not tensors and plain data")


def _like(value: dict, items: Any) -> dict:
    """A dict of ``items``; an OrderedDict (a module's state_dict) stays one, with its metadata."""
    if not isinstance(value, OrderedDict):
        return dict(items)
    out: Any = OrderedDict(items)
    if hasattr(value, "_metadata"):
        out._metadata = value._metadata
    return out


def _unplain(value: Any) -> Any:
    """Undo :func:`_plain` (numpy arrays and scalars back, bit for bit)."""
    if isinstance(value, dict):
        if _NDARRAY in value and set(value) == {_NDARRAY, "shape", "bytes"}:
            raw = value["bytes"].cpu().numpy().tobytes()
            return np.frombuffer(raw, dtype=np.dtype(value[_NDARRAY])).reshape(value["shape"]).copy()
        if _NUMPY in value and set(value) == {_NUMPY, "value"}:
            return np.dtype(value[_NUMPY]).type(value["value"])
        return _like(value, ((k, _unplain(v)) for k, v in value.items()))
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_unplain(v) for v in value)
    return value


def build_loss_parts(
    config: TrialConfig, *, num_classes: int, num_train: int = 0
) -> tuple[Any, EmbeddingAugmenter | None]:
    """The trial's loss (with its miner) and its embedding augmenter (None: none), on the CPU: what
    a ``Trainer`` builds, and what the up-front checks of a search build without the data
    (``num_train``: the training set's size, for losses with per-sample state; 0 without data)."""
    from tuneddml.losses import build_loss
    from tuneddml.losses.synthetic import check_synthetic_classes
    from tuneddml.sampling import EMBEDDING_AUGMENTERS

    loss = build_loss(
        config.loss,
        config.loss_params,
        num_classes=num_classes,
        embedding_size=config.embedding_size,
        miner=config.miner,
        miner_params=config.miner_params,
        num_train=num_train,
    )
    embedding_aug = None
    if config.embedding_aug != "none":
        embedding_aug = EMBEDDING_AUGMENTERS.build(
            config.embedding_aug,
            config.embedding_aug_params,
            field="embedding_aug",
            num_classes=num_classes,
            embedding_size=config.embedding_size,
        )
        check_synthetic_classes(config.loss, loss, config.embedding_aug, embedding_aug)
        embedding_aug.attach_loss(loss)
    return loss, embedding_aug
