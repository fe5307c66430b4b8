"""GPU-only checks: skipped (by tests/conftest.py) on machines without CUDA, such as CI.

Mixed precision is ``amp`` = ``none|bf16|fp16`` (fp16 with a GradScaler), ``channels_last`` the
memory format of a CNN's weights and inputs; evaluation runs on the trial's device
(:func:`tuneddml.evaluation.knn_for_device`); the trainable reports the trial's peak GPU memory.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tuneddml.config import TrialConfig
from tuneddml.training import Trainer, run_trial

pytestmark = pytest.mark.gpu

# no NMI: its k-means is faiss on the CPU, which a GPU machine's image may lack (the kNN search on
# CUDA needs none); the tests comparing with faiss skip without it
TINY = {"dataset": "glyphs-tiny", "split": "test", "epochs": 2, "steps_per_epoch": 10, "eval_nmi": False}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trials_train_on_cuda_with_finite_metrics(amp):
    trainer = Trainer(TrialConfig.from_flat({**TINY, "amp": amp, "loss": "proxy_anchor"}))
    assert trainer.device.type == "cuda"
    assert next(trainer.model.parameters()).is_cuda and next(trainer.loss.parameters()).is_cuda
    untrained = trainer.evaluate()
    result = trainer.run()
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    assert all(math.isfinite(v) for r in result.history for v in r.terms.values())
    assert result.metrics["recall_at_1"] > untrained["recall_at_1"]


def test_channels_last_trial_trains_on_cuda():
    trainer = Trainer(TrialConfig.from_flat({**TINY, "channels_last": True, "amp": "bf16"}))
    convs = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    result = trainer.run()
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics


def test_cuda_and_cpu_agree_without_mixed_precision():
    pytest.importorskip("faiss")
    flat = {"dataset": "glyphs-tiny", "split": "test", "epochs": 1, "steps_per_epoch": 2}
    cpu = run_trial(TrialConfig.from_flat({**flat, "device": "cpu"})).metrics
    gpu = run_trial(TrialConfig.from_flat({**flat, "device": "cuda"})).metrics
    assert abs(cpu["recall_at_1"] - gpu["recall_at_1"]) < 0.05


def test_evaluation_on_the_gpu_agrees_with_the_cpu():
    """The same embeddings, scored with the trial's CUDA backend and with faiss on the CPU."""
    pytest.importorskip("faiss")
    from tuneddml.evaluation import FaissKnn, evaluate, knn_for_device

    trainer = Trainer(TrialConfig.from_flat({**TINY, "epochs": 1}))
    trainer.run()
    on_gpu = trainer.evaluate()  # the kNN search on the trial's device
    query = trainer.embed(trainer.data.query)
    c = trainer.config
    on_cpu = evaluate(
        query, trainer.data.query.labels, seed=c.seed, with_ap=c.eval_ap, with_nmi=c.eval_nmi, knn=FaissKnn()
    )
    assert type(knn_for_device(trainer.device)) is not FaissKnn
    # equal but for near-ties, whose order float32 rounding (CPU BLAS vs cuBLAS) may swap: after
    # 10 steps glyphs-tiny's embeddings are so close that faiss and TorchKnn, both on the CPU, agree
    # on 68% of the 12 nearest and differ by 4 of 682 queries in Recall@1 (all sims within 4e-7)
    for key, value in on_cpu.items():
        assert on_gpu[key] == pytest.approx(value, abs=0.02), key


def test_torch_knn_on_cuda_at_scale_matches_faiss_and_restores_tf32():
    pytest.importorskip("faiss")
    from tuneddml.evaluation import FaissKnn, TorchKnn, l2_normalise

    rng = np.random.default_rng(7)
    x = l2_normalise(rng.standard_normal((20_000, 512)).astype(np.float32))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on: the backend must still compute in fp32
    try:
        sims, idx = TorchKnn(device="cuda").search(x, x, 34)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    ref_sims, ref_idx = FaissKnn().search(x, x, 34)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (idx == ref_idx).mean() > 0.999
    assert (idx[:, 0] == np.arange(len(x))).all()


def test_faiss_gpu_backend_matches_faiss_on_the_cpu():
    from tuneddml.evaluation import FaissGpuKnn, FaissKnn, l2_normalise
    from tuneddml.evaluation.knn import faiss_has_gpu

    if not faiss_has_gpu():
        pytest.skip("faiss here is a CPU build")
    rng = np.random.default_rng(8)
    q = l2_normalise(rng.standard_normal((500, 64)))
    g = l2_normalise(rng.standard_normal((3000, 64)))
    sims, idx = FaissGpuKnn(device="cuda").search(q, g, 10)
    ref_sims, ref_idx = FaissKnn().search(q, g, 10)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (idx == ref_idx).mean() > 0.999


def test_peak_gpu_memory_is_reported_per_epoch_and_per_trial():
    from tuneddml.tuning.trainable import SystemUsage

    device = torch.device("cuda")
    usage = SystemUsage(device)
    big = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # 64 MiB
    first = usage.sample()
    del big
    torch.cuda.empty_cache()
    small = torch.empty(2**20, dtype=torch.uint8, device=device)
    second = usage.sample()
    del small
    assert first["system/gpu_mem_mb"] >= 64 and first["system/gpu_peak_mb"] >= 64
    assert second["system/gpu_mem_mb"] < 64 <= second["system/gpu_peak_mb"]
    assert second["system/gpu_peak_mb"] == first["system/gpu_peak_mb"]


def test_a_trial_on_cuda_reports_its_peak_memory_each_epoch():
    from tuneddml.tuning.trainable import SystemUsage

    trainer = Trainer(TrialConfig.from_flat(TINY))
    usage = SystemUsage(trainer.device)
    records = []
    trainer.run(lambda report, _t: records.append({**report.flat(), **usage.sample()}))
    assert len(records) == 2
    peaks = [r["system/gpu_peak_mb"] for r in records]
    assert all(p > 0 for p in peaks) and peaks[1] >= peaks[0]
    assert all(r["system/gpu_peak_mb"] >= r["system/gpu_mem_mb"] > 0 for r in records)
