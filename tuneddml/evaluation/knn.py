"""k-nearest-neighbour backends: the top-k gallery items of each query by inner product.

Evaluation embeddings are L2-normalised, so the inner product is the cosine similarity and the
largest inner products are the nearest neighbours. A backend knows nothing of labels, self-matches
or ties; :mod:`tuneddml.evaluation.neighbours` builds the ranked neighbour table from its output.

Two backends share one interface, :class:`KnnBackend`, and are passed to
:func:`tuneddml.evaluation.evaluate` as objects:

- :class:`FaissKnn`: exact search with faiss ``IndexFlatIP`` (BLAS matrix products plus a heap per
  query), queries in chunks; the default.
- :class:`TorchKnn`: brute force, ``torch.mm`` plus ``torch.topk`` per chunk of queries; the
  reference the faiss backend is checked against, and usable on a CUDA device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

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
    2-core machine with one other busy process).
    """
    import faiss

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
            sims = np.empty((len(query), k), dtype=np.float32)
            idx = np.empty((len(query), k), dtype=np.int64)
            for start in range(0, len(query), self.chunk_size):
                stop = start + self.chunk_size
                sims[start:stop], idx[start:stop] = index.search(query[start:stop], k)
        return sims, idx


class TorchKnn:
    """Brute-force kNN: ``torch.mm`` of a chunk of queries with the whole gallery, then ``topk``.

    Memory per chunk is ``chunk_size x len(gallery)`` float32 similarities. ``device`` may be a
    CUDA device; results come back as numpy arrays on the CPU.
    """

    def __init__(self, *, chunk_size: int = 1024, device: str | torch.device = "cpu") -> None:
        self.chunk_size = _check_chunk(chunk_size)
        self.device = torch.device(device)

    def search(self, query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(k)
        _check_k(k, len(gallery))
        g = torch.as_tensor(np.ascontiguousarray(gallery, dtype=np.float32), device=self.device)
        q_all = torch.as_tensor(np.ascontiguousarray(query, dtype=np.float32))
        sims = np.empty((len(query), k), dtype=np.float32)
        idx = np.empty((len(query), k), dtype=np.int64)
        with torch.no_grad():
            for start in range(0, len(query), self.chunk_size):
                q = q_all[start : start + self.chunk_size].to(self.device)
                top = torch.topk(q @ g.T, k, dim=1, largest=True, sorted=True)
                sims[start : start + len(q)] = top.values.cpu().numpy()
                idx[start : start + len(q)] = top.indices.cpu().numpy()
        return sims, idx
