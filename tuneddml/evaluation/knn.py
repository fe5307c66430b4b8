"""k-nearest-neighbour backends: the top-k gallery items of each query by inner product.

Evaluation embeddings are L2-normalised, so the inner product is the cosine similarity and the
largest inner products are the nearest neighbours. A backend knows nothing of labels, self-matches
or ties; :mod:`tuneddml.evaluation.neighbours` builds the ranked neighbour table from its output.

The backends share one interface, :class:`KnnBackend`, and are passed to
:func:`tuneddml.evaluation.evaluate` as objects:

- :class:`FaissKnn`: exact search with faiss ``IndexFlatIP`` (BLAS matrix products plus a heap per
  query), queries in chunks; the default.
- :class:`TorchKnn`: brute force, ``torch.mm`` plus ``torch.topk`` per chunk of queries; the
  reference the faiss backend is checked against, and what a trial on a CUDA device evaluates with.
- :class:`FaissGpuKnn`: faiss ``GpuIndexFlatIP`` on a CUDA device, where faiss is a GPU build.

:func:`knn_for_device` picks one for the trial's device: faiss on the CPU, faiss's GPU index or
else :class:`TorchKnn` on a CUDA device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from tuneddml.errors import ConfigError


@runtime_checkable
class KnnBackend(Protocol):
    """Exact maximum-inner-product search."""

    def search(self, query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(similarities, indices)``, each ``(len(query), k)``, best first.

        ``query`` and ``gallery`` are C-contiguous float32 arrays; ``1 <= k <= len(gallery)``.
        """
        ...


@contextmanager
def faiss_threads(num_threads: int | None) -> Iterator[None]:
    """Run faiss with ``num_threads`` OpenMP threads inside the block (``None``: unchanged).

    faiss defaults to one thread per core; several trials on one machine would then each start
    that many, and OpenMP threads that outnumber the cores busy-wait (a 5x slowdown was seen on a
    2-core machine with one other busy process). Without faiss installed (a GPU machine's image
    may lack it; evaluation with :class:`TorchKnn` and no NMI needs none) it does nothing.
    """
    try:
        import faiss
    except ImportError:
        yield
        return

    before = faiss.omp_get_max_threads()
    if num_threads is not None:
        faiss.omp_set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run torch's intra-op parallelism with ``num_threads`` threads inside the block."""
    before = torch.get_num_threads()
    if num_threads is not None and num_threads != before:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def worth_threads(multiply_adds: int) -> bool:
    """Whether a faiss call is big enough to gain from several threads (about 30 ms of work on
    one core); below that, starting OpenMP threads costs more than it saves, a lot more when the
    cores are busy with other processes."""
    return multiply_adds >= 1 << 26


def _check_chunk(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError("chunk_size", chunk_size, "an integer >= 1")
    return chunk_size


def _check_k(k: int, num_gallery: int) -> None:
    if not 1 <= k <= num_gallery:
        raise ConfigError("k", k, f"an integer in [1, {num_gallery}] (the gallery size)")


class FaissKnn:
    """Exact kNN with faiss ``IndexFlatIP``.

    The gallery is added once; queries are searched ``chunk_size`` at a time, so the result arrays
    of a chunk, not of all queries, are what grows with ``k`` (faiss itself blocks the similarity
    matrix internally, never holding a query-by-gallery matrix). ``num_threads`` sets faiss's
    OpenMP threads for the search and restores them after (``None``: leave faiss's setting).
    """

    def __init__(self, *, chunk_size: int = 16384, num_threads: int | None = None) -> None:
        self.chunk_size = _check_chunk(chunk_size)
        self.num_threads = num_threads

    def search(self, query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        k = int(k)
        _check_k(k, len(gallery))
        query = np.ascontiguousarray(query, dtype=np.float32)
        gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        small = not worth_threads(min(len(query), self.chunk_size) * gallery.size)
        with faiss_threads(1 if small else self.num_threads):
            index = faiss.IndexFlatIP(gallery.shape[1])
            index.add(gallery)
            return _search_in_chunks(index, query, k, self.chunk_size)


def _search_in_chunks(index: Any, query: np.ndarray, k: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A faiss index's top ``k`` of ``query``, ``chunk_size`` queries at a time."""
    sims = np.empty((len(query), k), dtype=np.float32)
    idx = np.empty((len(query), k), dtype=np.int64)
    for start in range(0, len(query), chunk_size):
        stop = start + chunk_size
        sims[start:stop], idx[start:stop] = index.search(query[start:stop], k)
    return sims, idx


class TorchKnn:
    """Brute-force kNN: ``torch.mm`` of a chunk of queries with the whole gallery, then ``topk``.

    Memory per chunk is ``rows x len(gallery)`` float32 similarities, ``rows`` being
    ``chunk_size`` or fewer, so that they stay within ``max_chunk_mb`` (default 512 MiB; a gallery
    of 120,000 still takes the whole 1,024 queries at a time: 469 MiB; the gallery, 234 MiB at 512
    dimensions, and the queries, the same array in leave-one-out, come on top). ``device`` may be a
    CUDA device, where the matrix products run in full float32 (no TF32), so results agree with
    the CPU's up to rounding; they come back as numpy arrays on the CPU.
    """

    def __init__(
        self, *, chunk_size: int = 1024, device: str | torch.device = "cpu", max_chunk_mb: int = 512
    ) -> None:
        self.chunk_size = _check_chunk(chunk_size)
        self.device = torch.device(device)
        self.max_chunk_mb = _check_chunk(max_chunk_mb)

    def rows_per_chunk(self, num_gallery: int) -> int:
        """How many queries one ``torch.mm`` takes: ``chunk_size``, fewer for a large gallery."""
        return max(1, min(self.chunk_size, (self.max_chunk_mb << 20) // (4 * max(num_gallery, 1))))

    def search(self, query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(k)
        _check_k(k, len(gallery))
        g = torch.as_tensor(np.ascontiguousarray(gallery, dtype=np.float32), device=self.device)
        if query is gallery:  # leave-one-out: one copy on the device
            q_all = g
        else:
            q_all = torch.as_tensor(np.ascontiguousarray(query, dtype=np.float32), device=self.device)
        sims = np.empty((len(query), k), dtype=np.float32)
        idx = np.empty((len(query), k), dtype=np.int64)
        step = self.rows_per_chunk(len(gallery))
        with torch.no_grad(), _full_float32():
            for start in range(0, len(query), step):
                q = q_all[start : start + step]
                top = torch.topk(q @ g.T, k, dim=1, largest=True, sorted=True)
                sims[start : start + len(q)] = top.values.cpu().numpy()
                idx[start : start + len(q)] = top.indices.cpu().numpy()
        return sims, idx


@contextmanager
def _full_float32() -> Iterator[None]:
    """float32 matrix products in full precision inside the block (TF32 off on CUDA)."""
    before = torch.get_float32_matmul_precision()
    if before != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if before != "highest":
            torch.set_float32_matmul_precision(before)


#: the largest ``k`` faiss's GPU search takes; beyond it :class:`FaissGpuKnn` uses :class:`TorchKnn`
FAISS_GPU_MAX_K = 2048


def faiss_has_gpu() -> bool:
    """Whether the installed faiss is a GPU build that sees a device (``StandardGpuResources``)."""
    try:
        import faiss
    except ImportError:
        return False
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return int(faiss.get_num_gpus()) > 0
    except Exception:
        return False


class FaissGpuKnn:
    """Exact kNN with faiss ``GpuIndexFlatIP`` on a CUDA device (a GPU build of faiss); queries in
    chunks of ``chunk_size``. A ``k`` above :data:`FAISS_GPU_MAX_K` goes to :class:`TorchKnn`."""

    def __init__(self, *, device: str | torch.device = "cuda", chunk_size: int = 16384) -> None:
        self.device = torch.device(device)
        self.chunk_size = _check_chunk(chunk_size)

    def search(self, query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        k = int(k)
        _check_k(k, len(gallery))
        if k > FAISS_GPU_MAX_K:
            return TorchKnn(device=self.device).search(query, gallery, k)
        query = np.ascontiguousarray(query, dtype=np.float32)
        gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        config = faiss.GpuIndexFlatConfig()
        config.device = self.device.index if self.device.index is not None else torch.cuda.current_device()
        index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), gallery.shape[1], config)
        index.add(gallery)
        return _search_in_chunks(index, query, k, self.chunk_size)


def knn_for_device(device: str | torch.device) -> KnnBackend:
    """The kNN backend of a trial on ``device``: :class:`FaissKnn` on the CPU (the default of
    :func:`~tuneddml.evaluation.evaluate`); on a CUDA device :class:`FaissGpuKnn` where faiss is a
    GPU build, else :class:`TorchKnn` there."""
    device = torch.device(device)
    if device.type != "cuda":
        return FaissKnn()
    if faiss_has_gpu():
        return FaissGpuKnn(device=device)
    return TorchKnn(device=device)
