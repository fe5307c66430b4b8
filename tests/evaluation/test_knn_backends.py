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


def test_backend_follows_the_device(monkeypatch):
    import sys
    import types

    import torch

    from tuneddml.evaluation import FaissGpuKnn, knn_for_device

    assert type(knn_for_device("cpu")) is FaissKnn
    assert type(knn_for_device(torch.device("cpu"))) is FaissKnn
    on_cuda = knn_for_device("cuda:1")  # a CPU build of faiss: brute-force torch on the device
    assert type(on_cuda) is TorchKnn and on_cuda.device == torch.device("cuda", 1)
    gpu_faiss = types.SimpleNamespace(StandardGpuResources=object, get_num_gpus=lambda: 1)
    monkeypatch.setitem(sys.modules, "faiss", gpu_faiss)
    chosen = knn_for_device("cuda")
    assert type(chosen) is FaissGpuKnn and chosen.device == torch.device("cuda")
    assert type(knn_for_device("cpu")) is FaissKnn
    gpu_faiss.get_num_gpus = lambda: 0  # a GPU build that sees no device (CUDA_VISIBLE_DEVICES="")
    assert type(knn_for_device("cuda")) is TorchKnn


def test_trainer_evaluates_with_the_backend_of_its_device(monkeypatch):
    import torch

    import tuneddml.evaluation
    from tuneddml.config import TrialConfig
    from tuneddml.training import Trainer

    trainer = Trainer(TrialConfig.from_flat({"dataset": "glyphs-tiny", "split": "test", "device": "cpu"}))
    used = []

    def spy(query, *args, knn, **kwargs):
        used.append(knn)
        return {}

    monkeypatch.setattr(tuneddml.evaluation, "evaluate", spy)
    # the embeddings do not matter here (a trial on CUDA hands them over on the CPU too)
    monkeypatch.setattr(trainer, "embed", lambda items: torch.zeros(len(items), 4))
    trainer.evaluate()
    assert type(used[-1]) is FaissKnn
    trainer.device = torch.device("cuda")  # a trial on CUDA (none here): the torch backend, there
    trainer.evaluate()
    assert type(used[-1]) is TorchKnn and used[-1].device == torch.device("cuda")


def test_torch_backend_bounds_its_similarity_chunk():
    knn = TorchKnn(max_chunk_mb=512)
    assert knn.rows_per_chunk(120_000) == 1024  # 120k x 512 against itself: whole chunks, 469 MiB
    for n in (1, 1000, 300_000, 10**6, 10**9):
        rows = TorchKnn(max_chunk_mb=64).rows_per_chunk(n)
        assert 1 <= rows <= 1024 and (rows == 1 or rows * n * 4 <= 64 << 20)
    assert TorchKnn(max_chunk_mb=64).rows_per_chunk(10**6) == 16
    with pytest.raises(ConfigError, match="chunk_size"):
        TorchKnn(max_chunk_mb=0)


def test_torch_backend_leave_one_out_and_float32_precision_restored():
    import torch

    q, _ = _data(40, 1, 16, seed=5)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # what a user may have set for TF32 training
    try:
        sims, idx = TorchKnn(chunk_size=7).search(q, q, 5)  # the query array is the gallery
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    ref_sims, ref_idx = _numpy_knn(q, q, 5)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    assert (idx[:, 0] == np.arange(40)).all()


def test_evaluation_with_the_torch_backend_needs_no_faiss(monkeypatch):
    """A GPU machine's image may lack faiss: the torch backend, without NMI, still evaluates."""
    import sys

    from tuneddml.evaluation import evaluate

    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(30), 5)
    x = rng.standard_normal((30, 8))[y] + 0.7 * rng.standard_normal((150, 8))
    with_faiss = evaluate(x, y, with_nmi=False)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ImportError):
        evaluate(x, y, with_nmi=False)  # the default backend is faiss
    assert evaluate(x, y, with_nmi=False, knn=TorchKnn()) == pytest.approx(with_faiss, abs=1e-6)
