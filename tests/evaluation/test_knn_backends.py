"""faiss and torch kNN backends against a brute-force numpy kNN."""

from __future__ import annotations

import numpy as np
import pytest

from tuneddml.errors import ConfigError
from tuneddml.evaluation import FaissKnn, KnnBackend, TorchKnn, l2_normalise


def _data(n_q: int, n_g: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return l2_normalise(rng.standard_normal((n_q, d))), l2_normalise(rng.standard_normal((n_g, d)))


def _numpy_knn(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.mark.parametrize(
    "backend",
    [FaissKnn(), FaissKnn(chunk_size=7), TorchKnn(), TorchKnn(chunk_size=5)],
    ids=["faiss", "faiss-chunked", "torch", "torch-chunked"],
)
def test_backend_matches_brute_force(backend: KnnBackend):
    q, g = _data(53, 211, 24, seed=1)
    sims, idx = backend.search(q, g, 9)
    ref_sims, ref_idx = _numpy_knn(q, g, 9)
    assert isinstance(backend, KnnBackend)
    assert sims.shape == idx.shape == (53, 9)
    np.testing.assert_array_equal(idx, ref_idx)  # random data: no near-ties at float32 precision
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    assert (np.diff(sims, axis=1) <= 0).all()


def test_whole_gallery_and_k_bounds():
    q, g = _data(4, 6, 3, seed=2)
    _, idx = FaissKnn().search(q, g, 6)
    assert sorted(idx[0].tolist()) == list(range(6))
    for backend in (FaissKnn(), TorchKnn()):
        with pytest.raises(ConfigError, match=r"^k: "):
            backend.search(q, g, 7)
        with pytest.raises(ConfigError, match=r"^k: "):
            backend.search(q, g, 0)


def test_chunk_size_is_validated():
    with pytest.raises(ConfigError, match="chunk_size"):
        FaissKnn(chunk_size=0)
    with pytest.raises(ConfigError, match="chunk_size"):
        TorchKnn(chunk_size=True)  # type: ignore[arg-type]


def test_faiss_thread_setting_is_restored():
    import faiss

    before = faiss.omp_get_max_threads()
    q, g = _data(5, 20, 4, seed=3)
    FaissKnn(num_threads=1).search(q, g, 3)
    assert faiss.omp_get_max_threads() == before


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_faiss():
    q, g = _data(300, 2000, 32, seed=4)
    sims, idx = TorchKnn(device="cuda", chunk_size=128).search(q, g, 10)
    ref_sims, ref_idx = FaissKnn().search(q, g, 10)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (idx == ref_idx).mean() > 0.999  # TF32/reduction order may swap near-ties
