"""The ranked neighbour table of each query: leave-one-out, and ties broken pessimistically.

Ranking rule (the same for every metric of this package): gallery items are ranked by decreasing
cosine similarity; items of *equal* similarity are ranked irrelevant first, relevant last. So a
tie never earns credit: a model that maps everything to one point scores as if its neighbours
were the worst possible, not whatever order a search library returns equal items in, and the
result does not depend on the kNN backend or the chunking.

How it is made exact with a backend that knows nothing of labels: ask the backend for one
neighbour more than needed, re-sort each row by (similarity, relevance), and for the rare rows
whose last kept similarity equals the first dropped one (a tie crossing the cut, so an item
beyond the backend's answer could belong in the table) recompute the row exactly by brute force
over the whole gallery, ordering by an integer key that encodes (similarity, irrelevant first).

Leave-one-out (no separate gallery): the backend is asked for one more neighbour and the query
itself is removed from its row (or, where equal similarities pushed it out of the row, the last
column is dropped, which is the same set of other items).
"""

from __future__ import annotations

import numpy as np
import torch

from tuneddml.evaluation.knn import KnnBackend

# At most this many int64 keys (256 MiB) per chunk of the brute-force recomputation.
_KEYS_PER_CHUNK = 1 << 25


def ordered_int_key(sims: torch.Tensor) -> torch.Tensor:
    """Map float32 similarities to int64 keys in the same order (``-0.0`` counted as ``+0.0``).

    The float32 bit pattern read as int32 is monotone for non-negative floats and reversed for
    negative ones; flipping the 31 magnitude bits of the negative ones makes it monotone overall.
    """
    bits = (sims.float() + 0.0).view(torch.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)


def exact_rows(
    query: np.ndarray,
    query_codes: np.ndarray,
    gallery: np.ndarray,
    gallery_codes: np.ndarray,
    k: int,
    *,
    self_index: np.ndarray | None,
    batch_size: int,
) -> np.ndarray:
    """Labels of the top ``k`` gallery items of each query under the pessimistic ranking rule,
    by brute force (``batch_size`` queries at a time, at most ``2**25`` keys, against the whole
    gallery).

    ``self_index[i]`` (leave-one-out) is a gallery index that query ``i`` must never retrieve.
    """
    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    g_codes = torch.from_numpy(np.asarray(gallery_codes, dtype=np.int64))
    out = np.empty((len(query), k), dtype=np.int64)
    step = max(1, min(batch_size, _KEYS_PER_CHUNK // max(len(gallery), 1)))
    for start in range(0, len(query), step):
        stop = min(start + step, len(query))
        q = torch.from_numpy(np.ascontiguousarray(query[start:stop], dtype=np.float32))
        q_codes = torch.from_numpy(np.asarray(query_codes[start:stop], dtype=np.int64))
        # key = 2 * similarity + (1 if irrelevant): on equal similarity the irrelevant item wins.
        key = ordered_int_key(q @ g.T) * 2 + (g_codes[None, :] != q_codes[:, None]).to(torch.int64)
        if self_index is not None:
            rows = torch.arange(stop - start)
            key[rows, torch.from_numpy(np.asarray(self_index[start:stop], dtype=np.int64))] = torch.iinfo(
                torch.int64
            ).min
        top = torch.topk(key, k, dim=1, largest=True, sorted=True).indices
        out[start:stop] = g_codes[top].numpy()
    return out


def ranked_neighbour_labels(
    query: np.ndarray,
    query_codes: np.ndarray,
    gallery: np.ndarray | None,
    gallery_codes: np.ndarray | None,
    k: int,
    *,
    knn: KnnBackend,
    batch_size: int,
) -> np.ndarray:
    """The ``(n_query, k')`` neighbour-label table, ``k' = min(k, available gallery items)``.

    ``gallery=None`` means leave-one-out: each query retrieves from the query set without itself.
    Embeddings must be float32 and L2-normalised; labels are integer codes.
    """
    loo = gallery is None
    if loo:
        gallery, gallery_codes = query, query_codes
    assert gallery is not None and gallery_codes is not None
    n_q, n_g = len(query), len(gallery)
    available = n_g - 1 if loo else n_g
    k = min(k, available)
    if k <= 0 or n_q == 0:
        return np.empty((n_q, max(k, 0)), dtype=np.int64)
    width = min(k + 1, available)  # one extra column shows whether a tie crosses the cut
    sims, idx = knn.search(query, gallery, width + int(loo))
    if loo:
        is_self = idx == np.arange(n_q)[:, None]
        # Rows where ties pushed the query out of its own answer: drop the last column instead.
        is_self[~is_self.any(axis=1), -1] = True
        # The first self-match only (a broken backend could repeat an index); keep shapes fixed.
        first = np.cumsum(is_self, axis=1) == 1
        is_self &= first
        keep = ~is_self
        sims = sims[keep].reshape(n_q, width)
        idx = idx[keep].reshape(n_q, width)
    labels = np.asarray(gallery_codes)[idx]
    irrelevant = labels != np.asarray(query_codes)[:, None]
    # Sort by similarity (descending), then irrelevant before relevant; lexsort's last key is primary.
    order = np.lexsort((~irrelevant, -sims), axis=1)
    sims = np.take_along_axis(sims, order, axis=1)
    labels = np.take_along_axis(labels, order, axis=1)
    table = labels[:, :k].copy()
    if width > k:
        crossing = np.flatnonzero(sims[:, k - 1] == sims[:, k])
        if crossing.size:
            table[crossing] = exact_rows(
                query[crossing],
                np.asarray(query_codes)[crossing],
                gallery,
                gallery_codes,
                k,
                self_index=crossing if loo else None,
                batch_size=batch_size,
            )
    return table
