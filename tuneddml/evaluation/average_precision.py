"""Exact average precision over the full ranking of the gallery, in bounded memory.

For a query with ``R`` relevant gallery items, AP is the area under its precision-recall curve
(Stochastic AUPRC optimisation, 2022, uses it as the target; ROADMAP, Ramzi et al. 2021, too):

    ``AP = (1/R) sum_{p=1..R} p / rank_p``

where ``rank_p`` is the rank of the ``p``-th relevant item in the whole ranked gallery. Ranks
follow the ranking rule of :mod:`tuneddml.evaluation.neighbours` (decreasing similarity; on equal
similarity irrelevant items first), so with ``t_p`` the similarity of the ``p``-th relevant item,

    ``rank_p = p + #{irrelevant items g : s_g >= t_p}``.

This is computed *exactly* without sorting any row: ``batch_size`` queries at a time, the
similarities to the whole gallery come from one matrix product; the relevant items' similarities
are read off and set to ``-inf``, so the row holds only irrelevant items; then only the items at
or above the row's lowest relevant similarity (the candidates: few for a useful embedding) are
compared with the row's sorted thresholds ``t_p``. Memory per chunk: ``batch_size x n_gallery``
float32 similarities (at most 128 MiB) plus the candidates, never ``n_query x n_gallery``. Cost:
one matrix product of the queries with the gallery, the flops of a brute-force kNN; ``evaluate``
saves most of it by taking the AP of every query whose relevant items all lie in its exact kNN
table from that table, and running this pass only for the others.
"""

from __future__ import annotations

import numpy as np
import torch

# Candidates are compared with thresholds in slices of at most this many (candidate, threshold)
# pairs, to bound the temporary arrays (2**23 float32: 32 MiB).
_PAIRS_PER_SLICE = 1 << 23
# At most this many similarities (float32: 128 MiB) per chunk of query rows.
_SIMS_PER_CHUNK = 1 << 25


def exact_average_precision(
    query: np.ndarray,
    query_codes: np.ndarray,
    gallery: np.ndarray | None,
    gallery_codes: np.ndarray | None,
    *,
    batch_size: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Per-query AP over the full ranking (``nan`` where the query has ``R = 0``, and for queries
    not in ``rows`` when that selects a subset).

    ``gallery=None``: leave-one-out over the query set (query ``i`` is gallery item ``i``).
    Embeddings float32, L2-normalised; labels integer codes. A chunk holds at most
    ``min(batch_size, 2**25 / n_gallery)`` query rows of similarities (128 MiB).
    """
    loo = gallery is None
    if loo:
        gallery, gallery_codes = query, query_codes
    assert gallery is not None and gallery_codes is not None
    q_codes = np.asarray(query_codes, dtype=np.int64)
    g_codes = np.asarray(gallery_codes, dtype=np.int64)
    n_codes = int(max(q_codes.max(initial=-1), g_codes.max(initial=-1))) + 1
    # The gallery items of each class, as a slice of one index array sorted by class.
    members = np.argsort(g_codes, kind="stable")
    class_size = np.bincount(g_codes, minlength=n_codes)
    class_start = np.concatenate(([0], np.cumsum(class_size)[:-1]))

    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    selected = np.arange(len(query)) if rows is None else np.asarray(rows, dtype=np.int64)
    step = max(1, min(batch_size, _SIMS_PER_CHUNK // max(len(gallery), 1)))
    result = np.full(len(query), np.nan)
    for start in range(0, len(selected), step):
        chunk = selected[start : start + step]
        codes = q_codes[chunk]
        size = class_size[codes]
        m = int(size.max(initial=0))
        if m == 0:
            continue
        slot = np.arange(m)[None, :]
        valid = slot < size[:, None]
        rel_idx = members[np.minimum(class_start[codes][:, None] + slot, len(members) - 1)]
        if loo:
            valid &= rel_idx != chunk[:, None]
        r = valid.sum(axis=1)
        keep = np.flatnonzero(r > 0)
        if keep.size == 0:
            continue
        chunk, rel_idx, valid, r = chunk[keep], rel_idx[keep], valid[keep], r[keep]
        q = torch.from_numpy(np.ascontiguousarray(query[chunk], dtype=np.float32))
        sims = q @ g.T
        rel_t = torch.from_numpy(rel_idx)
        valid_t = torch.from_numpy(valid)
        r_t = torch.from_numpy(r)
        thresholds = sims.gather(1, rel_t).masked_fill(~valid_t, float("inf"))
        thresholds = torch.sort(thresholds, dim=1).values  # ascending; padding (+inf) last
        # Remove the relevant items (and the query itself) so the row holds irrelevant items only.
        vr, vc = valid_t.nonzero(as_tuple=True)
        sims[vr, rel_t[vr, vc]] = -float("inf")
        if loo:
            sims[torch.arange(len(chunk)), torch.from_numpy(chunk)] = -float("inf")
        above = _count_at_or_above(sims, thresholds)  # (rows, m): irrelevant items >= threshold
        # Ascending slot j is the p-th relevant item with p = R - j (1-based from the top).
        p = (r_t[:, None] - torch.arange(m)[None, :]).to(torch.float64)
        zero = torch.zeros((), dtype=torch.float64)
        precision = torch.where(p > 0, p / (p + above.to(torch.float64)), zero)
        result[chunk] = (precision.sum(dim=1) / r_t.to(torch.float64)).numpy()
    return result


def _count_at_or_above(sims: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = #{g : sims[i, g] >= thresholds[i, j]}`` for ascending ``thresholds`` rows."""
    rows, m = thresholds.shape
    counts = torch.zeros(rows * (m + 1), dtype=torch.int64)
    cand_r, cand_c = (sims >= thresholds[:, :1]).nonzero(as_tuple=True)
    step = max(1, _PAIRS_PER_SLICE // m)
    for s in range(0, len(cand_r), step):
        r = cand_r[s : s + step]
        vals = sims[r, cand_c[s : s + step]]
        # bucket = number of the row's thresholds <= value, in 1..m (value >= the lowest).
        bucket = torch.searchsorted(thresholds[r], vals[:, None], right=True).squeeze(1)
        counts += torch.bincount(r * (m + 1) + bucket, minlength=rows * (m + 1))
    hist = counts.view(rows, m + 1)
    # An item in bucket b is >= thresholds[:, :b]: the count for threshold j is sum_{b > j} hist[b].
    suffix = hist.flip(1).cumsum(1).flip(1)
    return suffix[:, 1:]
