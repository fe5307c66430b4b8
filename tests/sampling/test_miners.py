from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import CosineSimilarity

from tuneddml.sampling import MINERS
from tuneddml.sampling.miners import AllTriplets, BatchHard, MultiSimilarityMiner, SemiHard


def _batch(seed: int = 0, classes: int = 4, per_class: int = 4, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(classes * per_class, dim, generator=g), dim=1)
    return e, torch.arange(classes).repeat_interleave(per_class)


def _sims(e):
    rows = e.tolist()
    return [[sum(a * b for a, b in zip(u, v)) for v in rows] for u in rows]


def _as_set(indices):
    return set(zip(*(t.tolist() for t in indices)))


def _valid_triplets(y):
    r = range(len(y))
    return [(a, p, n) for a in r for p in r for n in r if a != p and y[a] == y[p] and y[a] != y[n]]


def test_registry_and_outputs():
    assert set(MINERS.names()) >= {"semihard", "hard", "all_triplets", "multi_similarity"}
    for name in ("semihard", "hard", "all_triplets"):
        assert MINERS.get(name).factory.output == "triplets"
    assert MINERS.get("multi_similarity").factory.output == "pairs"


def test_all_triplets():
    e, _ = _batch(classes=3, per_class=2)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    got = AllTriplets()(e, labels)
    assert _as_set(got) == set(_valid_triplets(labels.tolist()))
    assert len(got[0]) == 2 * 4 + 6 * 3


def test_semihard_by_loop_and_against_pytorch_metric_learning():
    e, labels = _batch(seed=1)
    s, y = _sims(e), labels.tolist()
    want = {(a, p, n) for a, p, n in _valid_triplets(y) if s[a][p] - 0.2 < s[a][n] < s[a][p]}
    got = _as_set(SemiHard(margin=0.2)(e, labels))
    assert got == want and len(want) > 0
    pml = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=CosineSimilarity())
    assert got == _as_set(pml(e, labels))


def test_batch_hard_by_loop_and_against_pytorch_metric_learning():
    e, labels = _batch(seed=2)
    s, y = _sims(e), labels.tolist()
    n = len(y)
    want = set()
    for a in range(n):
        p = min((j for j in range(n) if j != a and y[j] == y[a]), key=lambda j: s[a][j])
        neg = max((j for j in range(n) if y[j] != y[a]), key=lambda j: s[a][j])
        want.add((a, p, neg))
    got = _as_set(BatchHard()(e, labels))
    assert got == want
    assert got == _as_set(pml_miners.BatchHardMiner(distance=CosineSimilarity())(e, labels))


def test_batch_hard_skips_anchor_without_positive():
    e, _ = _batch(seed=3)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6])
    anchors = BatchHard()(e, labels)[0].tolist()
    assert 5 not in anchors and 15 not in anchors and len(anchors) == 14


def test_multi_similarity_by_loop_and_against_pytorch_metric_learning():
    e, labels = _batch(seed=4)
    s, y = _sims(e), labels.tolist()
    r = range(len(y))
    eps = 0.1
    want_pos, want_neg = set(), set()
    for i in r:
        pos = [s[i][j] for j in r if j != i and y[j] == y[i]]
        neg = [s[i][j] for j in r if y[j] != y[i]]
        want_pos |= {(i, j) for j in r if j != i and y[j] == y[i] and s[i][j] < max(neg) + eps}
        want_neg |= {(i, j) for j in r if y[j] != y[i] and s[i][j] > min(pos) - eps}
    a1, p, a2, n = MultiSimilarityMiner(epsilon=eps)(e, labels)
    assert _as_set((a1, p)) == want_pos and _as_set((a2, n)) == want_neg
    assert 0 < len(want_neg) < 16 * 12  # mining dropped some pairs, kept some
    pa1, pp, pa2, pn = pml_miners.MultiSimilarityMiner(epsilon=eps)(e, labels)
    assert _as_set((a1, p)) == _as_set((pa1, pp)) and _as_set((a2, n)) == _as_set((pa2, pn))


def test_multi_similarity_singleton_anchor_keeps_no_negative():
    e, _ = _batch(seed=5, classes=1, per_class=5)
    labels = torch.tensor([0, 0, 1, 1, 2])
    _, _, a2, _ = MultiSimilarityMiner(epsilon=2.0)(e, labels)
    assert 4 not in a2.tolist() and len(a2) > 0


@pytest.mark.parametrize("name", ["semihard", "hard", "all_triplets", "multi_similarity"])
def test_no_gradient_and_long_indices(name):
    e, labels = _batch(seed=6)
    e.requires_grad_(True)
    out = MINERS.build(name)(e, labels)
    assert all(t.dtype == torch.long and not t.requires_grad for t in out)
