"""Cosine similarities, pair masks and their reductions: the maths that losses and miners share.

Losses (:mod:`tuneddml.losses`) and in-batch miners (:mod:`tuneddml.sampling.miners`) both read
pairs and triplets off a batch; this module sits below both, so neither imports the other for it.

Notation as in METHODS.md: ``e`` the (L2-normalised) embeddings, ``s_ij = e_i . e_j`` their cosine
similarity, ``P(i)`` the positives of anchor ``i`` in the batch (same label, ``j != i``), ``N(i)``
its negatives (other label). Masks are boolean ``(n, n)`` matrices with ``mask[i, j]`` true when
``(i, j)`` is such a pair; ordered pairs, so each unordered pair appears twice, which leaves every
mean unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity(embeddings: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
    """``s_ij = e_i . o_j`` (``others`` defaults to ``embeddings``): cosine similarity for unit vectors."""
    return embeddings @ (embeddings if others is None else others).T


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos, neg)``: ``pos[i, j]`` iff ``y_i == y_j`` and ``i != j``; ``neg[i, j]`` iff ``y_i != y_j``."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def masks_from_pairs(
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the pairs a pair miner chose: ``(a1, p, a2, n)`` -> ``(pos, neg)``."""
    a1, p, a2, neg_idx = pairs
    pos = torch.zeros(n, n, dtype=torch.bool, device=device)
    neg = torch.zeros(n, n, dtype=torch.bool, device=device)
    pos[a1, p] = True
    neg[a2, neg_idx] = True
    return pos, neg


def all_triplets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ``(a, p, n)`` with ``p in P(a)`` and ``n in N(a)``, as three index tensors."""
    pos, neg = pair_masks(labels)
    a, p, n = torch.nonzero(pos[:, :, None] & neg[:, None, :], as_tuple=True)
    return a, p, n


def zero_like_graph(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that stays connected to the graph, for a term with nothing to average over
    (its gradient is zero rather than missing)."""
    return embeddings.sum() * 0.0


def reduce(values: torch.Tensor, mask: torch.Tensor, how: str = "all") -> torch.Tensor:
    """Mean of ``values[mask]``: over all selected entries (``"all"``), or only over those with a
    non-zero loss (``"active"``, pytorch-metric-learning's ``AvgNonZeroReducer``). Empty: a
    graph-connected zero."""
    picked = values[mask]
    count = picked.numel() if how == "all" else int((picked > 0).sum())
    if count == 0:
        return values.sum() * 0.0
    return picked.sum() / count


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int, add_one: bool = False) -> torch.Tensor:
    """``log(sum_{mask} exp(x))`` along ``dim``, plus ``exp(0) = 1`` inside the log when ``add_one``
    (the ``log(1 + sum ...)`` of multi-similarity and Proxy-Anchor). An empty row gives ``-inf``
    without ``add_one`` and ``0`` with it."""
    x = x.masked_fill(~mask, float("-inf"))
    if add_one:
        shape = list(x.shape)
        shape[dim] = 1
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    return torch.logsumexp(x, dim=dim)


def class_similarity(
    embeddings: torch.Tensor, proxies: torch.Tensor, proxies_per_class: int, temperature: float = 0.1
) -> torch.Tensor:
    """Similarity ``S_ic`` of each embedding to each class, from ``K = proxies_per_class`` proxies.

    ``proxies`` is ``(C * K, d)``, class ``c`` owning rows ``c*K .. c*K + K-1``; they are
    L2-normalised here, so ``s_ick = e_i . p_ck / |p_ck|``. With ``K = 1``, ``S_ic = s_ic``. With
    ``K > 1`` the class's proxies are combined by a soft maximum, as in SoftTriple (Qian et al.,
    ICCV 2019):

        S_ic = sum_k softmax_k(s_ick / temperature) * s_ick

    which tends to ``max_k s_ick`` as ``temperature -> 0`` and stays in ``[-1, 1]``; every proxy
    gets a gradient, the nearest the largest.
    """
    p = F.normalize(proxies.to(embeddings.dtype), dim=1)
    sims = similarity(embeddings, p)  # (n, C*K)
    if proxies_per_class == 1:
        return sims
    sims = sims.view(len(embeddings), -1, proxies_per_class)
    weights = torch.softmax(sims / temperature, dim=2)
    return (weights * sims).sum(dim=2)


def init_proxies(num_classes: int, proxies_per_class: int, embedding_size: int) -> torch.nn.Parameter:
    """``(C * K, d)`` proxies drawn from a standard normal (uniform directions on the sphere),
    from torch's global generator, so the trial seed fixes them."""
    return torch.nn.Parameter(torch.randn(num_classes * proxies_per_class, embedding_size))
