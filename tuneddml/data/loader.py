"""The trainer's input pipeline: training and evaluation batches, on the trial's device.

- In-memory items (the glyphs, :class:`~tuneddml.data.base.ArrayItems`): ``items.load`` of each
  batch in the trainer's process, then the dataset's batch augmentation
  (:func:`~tuneddml.data.transforms.augment`) with the trainer's torch generator, as always.
- File-backed items (:class:`~tuneddml.data.files.FileItems`: the benchmarks, image folders,
  Parquet image bytes): each image is decoded and transformed on its own
  (:meth:`FileItems.view`: the training view for ``"natural"`` augmentation, else the evaluation
  view) in ``workers`` processes of a :class:`torch.utils.data.DataLoader` (persistent across
  epochs and evaluations, ``prefetch_factor`` batches ahead per worker, pinned memory on CUDA), or
  in the trainer's process with ``workers=0``. The sampler's batches of the epoch drive the
  DataLoader as its batch sampler, drawn lazily as the DataLoader asks for them.

Reproducible with any number of workers: a sample's crop and flip come from
``np.random.default_rng((seed, epoch, step, row))`` (the trial's seed, the 1-based epoch, the batch
and the row in it), never from a worker's state, so 0 and N workers give the same pixels and a
checkpoint needs no extra state. Samplers that adapt to the model (those that override
``BatchSampler.observe``) must see batch ``i``'s embeddings before they draw batch ``i + 1``, which a
prefetching DataLoader would break; for them (``in_order=True``) each batch is drawn when the
trainer asks for it and its images are decoded by ``workers`` threads of the trainer's process
(Pillow releases the GIL while it decodes and resizes): same pixels, no look-ahead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from tuneddml.data.base import ItemSet
from tuneddml.data.files import FileItems
from tuneddml.data.transforms import augment
from tuneddml.errors import ConfigError

#: most worker processes a default gives; batches each worker prepares ahead
MAX_DEFAULT_WORKERS = 8
PREFETCH_FACTOR = 2
#: images per decoding task in evaluation (the model still sees ``eval_batch_size`` at once)
EVAL_CHUNK = 32

Key = tuple[str, int, tuple[int, ...] | None]  # (part, item index, crop entropy or None: eval view)


def trial_cpus(threads: int | None) -> int:
    """The CPUs a trial may use: its ``threads`` if set, else those this process may run on."""
    if threads:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(file_backed: bool, threads: int | None) -> int:
    """``workers=None``: 0 for in-memory items, else ``min(8, trial CPUs - 1)``."""
    if not file_backed:
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, trial_cpus(threads) - 1))


class _Views(torch.utils.data.Dataset):
    """Map-style dataset over keys ``(part, index, entropy)``: ``(index, uint8 [S, S, 3])``, or
    ``(index, ConfigError)`` for an unreadable image (raised by the trainer's process, so that
    the error keeps its type across the worker boundary)."""

    def __init__(self, parts: Mapping[str, FileItems]) -> None:
        self.parts = dict(parts)

    def __len__(self) -> int:
        return sum(len(items) for items in self.parts.values())

    def __getitem__(self, key: Key) -> tuple[int, np.ndarray | ConfigError]:
        part, index, entropy = key
        rng = None if entropy is None else np.random.default_rng(entropy)
        try:
            return index, self.parts[part].view(index, rng)
        except ConfigError as exc:
            return index, exc


def _collate(samples: list[tuple[int, Any]]) -> tuple[np.ndarray, torch.Tensor] | ConfigError:
    """Indices and a contiguous uint8 ``[B, 3, S, S]`` batch (or the first decoding error)."""
    for _, view in samples:
        if isinstance(view, ConfigError):
            return view
    indices = np.array([index for index, _ in samples], dtype=np.int64)
    pixels = np.ascontiguousarray(np.stack([view for _, view in samples]).transpose(0, 3, 1, 2))
    return indices, torch.from_numpy(pixels)


class _Plan:
    """The DataLoader's batch sampler: the key lists of the current pass, set before each pass."""

    def __init__(self) -> None:
        self.batches: Iterable[list[Key]] = ()

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(self.batches)  # a generator: the DataLoader may call iter twice for one pass


class InputPipeline:
    """Batches of a trial's items (see the module docstring).

    ``parts`` names the item sets (``train``, ``query``, ``gallery``; None: absent);
    ``augmentation`` is the dataset's; ``workers`` the worker count (None: :func:`default_workers`;
    ignored for in-memory items); ``in_order``: the sampler adapts to the model.
    """

    def __init__(
        self,
        parts: Mapping[str, ItemSet | None],
        *,
        augmentation: str,
        seed: int,
        device: torch.device,
        workers: int | None = None,
        threads: int | None = None,
        in_order: bool = False,
    ) -> None:
        self.parts = {name: items for name, items in parts.items() if items is not None}
        files = {name: items for name, items in self.parts.items() if isinstance(items, FileItems)}
        self.augmentation = augmentation
        self.seed = seed
        self.device = device
        self.workers = (default_workers(bool(files), threads) if workers is None else workers) if files else 0
        self.in_order = in_order
        self._views = _Views(files)
        self._plan = _Plan()
        self._loader: torch.utils.data.DataLoader | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._busy = False  # the DataLoader is in a pass (a nested request decodes in threads)

    # -- training ------------------------------------------------------------------------
    def train(
        self, batches: Iterable[np.ndarray], epoch: int, generator: torch.Generator
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(indices, float images on the device)`` for each batch of indices of epoch ``epoch``."""
        train = self.parts["train"]
        if not isinstance(train, FileItems):
            for indices in batches:
                x = train.load(indices)
                if train.kind == "image":
                    x = augment(x, self.augmentation, generator)  # type: ignore[arg-type]
                yield indices, x.to(self.device, non_blocking=True)
            return
        crop = self.augmentation == "natural"
        keyed = (
            [("train", int(i), (self.seed, epoch, step, row) if crop else None) for row, i in enumerate(indices)]
            for step, indices in enumerate(batches)
        )
        for indices, pixels in self._decode(keyed, ordered=self.in_order):
            x = self._floats(pixels)
            if not crop and self.augmentation != "none":
                x = augment(x, self.augmentation, generator)  # type: ignore[arg-type]
            yield indices, x

    # -- evaluation ----------------------------------------------------------------------
    def eval(self, items: ItemSet, order: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        """Float evaluation views of ``items[order]`` on the device, ``batch_size`` at a time."""
        part = next((name for name, known in self.parts.items() if known is items), None)
        if not isinstance(items, FileItems) or part not in self._views.parts:
            for start in range(0, len(order), batch_size):
                yield items.load(order[start : start + batch_size]).to(self.device)
            return
        chunk = min(batch_size, EVAL_CHUNK)
        keyed = (
            [(part, int(i), None) for i in order[start : start + chunk]] for start in range(0, len(order), chunk)
        )
        gathered: list[torch.Tensor] = []
        count = 0
        for _, pixels in self._decode(keyed, ordered=False):
            gathered.append(pixels)
            count += len(pixels)
            if count >= batch_size:
                batch = torch.cat(gathered)
                yield self._floats(batch[:batch_size])
                gathered, count = ([batch[batch_size:]], count - batch_size) if count > batch_size else ([], 0)
        if count:
            yield self._floats(torch.cat(gathered))

    # -- decoding ------------------------------------------------------------------------
    def _floats(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.device, non_blocking=True).float().div_(255.0)

    def _decode(
        self, keyed: Iterable[list[Key]], *, ordered: bool
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self.workers == 0:
            batches: Iterable[Any] = (_collate([self._views[k] for k in keys]) for keys in keyed)
        elif ordered or self._busy:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="tuneddml-decode")
            pool = self._threads
            batches = (_collate(list(pool.map(self._views.__getitem__, keys))) for keys in keyed)
        else:
            yield from self._through_loader(keyed)
            return
        for batch in batches:
            if isinstance(batch, ConfigError):
                raise batch
            yield batch

    def _through_loader(self, keyed: Iterable[list[Key]]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self._views,
                batch_sampler=self._plan,
                num_workers=self.workers,
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=True,
                prefetch_factor=PREFETCH_FACTOR,
                generator=torch.Generator().manual_seed(self.seed),  # leaves the global torch RNG alone
            )
        self._plan.batches = keyed
        self._busy = True
        try:
            for batch in self._loader:
                if isinstance(batch, ConfigError):
                    raise batch
                yield batch
        finally:
            self._busy = False

    def close(self) -> None:
        """Stop the worker processes and threads (they also stop with the trainer's process)."""
        if self._loader is not None:
            iterator = getattr(self._loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            self._loader = None
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
