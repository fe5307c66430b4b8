"""GPU-only checks: skipped (by tests/conftest.py) on machines without CUDA, such as CI."""

from __future__ import annotations

import pytest
import torch

from tuneddml.config import TrialConfig
from tuneddml.training import Trainer, run_trial

pytestmark = pytest.mark.gpu


def test_auto_device_trains_on_cuda_with_mixed_precision():
    config = TrialConfig.from_flat(
        {
            "dataset": "glyphs-tiny",
            "split": "test",
            "epochs": 2,
            "steps_per_epoch": 10,
            "amp": True,
            "loss": "proxy_anchor",
        }
    )
    trainer = Trainer(config)
    assert trainer.device.type == "cuda"
    assert next(trainer.model.parameters()).is_cuda and next(trainer.loss.parameters()).is_cuda
    untrained = trainer.evaluate()
    result = trainer.run()
    assert result.metrics["recall_at_1"] > untrained["recall_at_1"]


def test_cuda_and_cpu_agree_without_mixed_precision():
    flat = {"dataset": "glyphs-tiny", "split": "test", "epochs": 1, "steps_per_epoch": 2}
    cpu = run_trial(TrialConfig.from_flat({**flat, "device": "cpu"})).metrics
    gpu = run_trial(TrialConfig.from_flat({**flat, "device": "cuda"})).metrics
    assert torch.cuda.is_available()
    assert abs(cpu["recall_at_1"] - gpu["recall_at_1"]) < 0.05
