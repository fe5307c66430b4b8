"""Fractional GPUs (``--gpus-per-trial 0.5``) and the per-trial GPU memory figures, without a GPU.

Ray schedules by the resources it is told of: ``ray.init(num_gpus=1)`` declares one GPU that need
not exist, Ray still hands out its id (``ray.get_gpu_ids()``) and sets ``CUDA_VISIBLE_DEVICES``.
The trials here are tiny functions that say when they ran, what Ray gave them and which device a
trial's ``device=auto`` picks where CUDA is there; their resources come from the driver's own
:func:`~tuneddml.tuning.driver.trial_resources` of a request that ``--gpus-per-trial`` made.
"""

from __future__ import annotations

import pytest
import torch

from tuneddml.tuning.trainable import SystemUsage


def test_a_cpu_trial_reports_no_gpu_memory_at_all():
    usage = SystemUsage(torch.device("cpu"))
    first, second = usage.sample(), usage.sample()
    assert set(first) == set(second) == {"system/cpu_percent", "system/rss_mb"}


class _FakeCuda:
    """torch.cuda's peak-memory counter on one device, as the trainable reads it."""

    def __init__(self) -> None:
        self.allocated_peak = 0
        self.resets: list[object] = []

    def max_memory_allocated(self, device: object = None) -> int:
        return self.allocated_peak

    def reset_peak_memory_stats(self, device: object = None) -> None:
        self.resets.append(device)
        self.allocated_peak = 0


def test_gpu_peak_is_the_trials_peak_and_gpu_mem_the_epochs(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", fake.max_memory_allocated)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    fake.allocated_peak = 7 * 2**20  # left over from the actor's previous trial
    usage = SystemUsage(torch.device("cuda", 0))
    assert fake.resets == [torch.device("cuda", 0)]  # counted from the trial's start, on its device
    seen = []
    for epoch_peak_mb in (300, 120, 450, 80):
        fake.allocated_peak = epoch_peak_mb * 2**20
        seen.append(usage.sample())
    assert [s["system/gpu_mem_mb"] for s in seen] == [300, 120, 450, 80]
    assert [s["system/gpu_peak_mb"] for s in seen] == [300, 300, 450, 450]
    assert len(fake.resets) == 5  # once at the start, then after every epoch's sample


def _sharing_trial(config):  # self-contained: it runs in a Ray worker
    import os
    import time

    import ray
    import torch
    from ray import tune

    from tuneddml.training.loop import resolve_device

    start = time.time()
    time.sleep(config["hold_s"][config["share"]])
    # the GPU is Ray's fiction: let device=auto see CUDA as it would on a GPU node
    torch.cuda.is_available = lambda: True
    device = resolve_device("auto")
    tune.report(
        {
            "start": start,
            "end": time.time(),
            "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
            "device": str(device),
            "pid": os.getpid(),
        }
    )


def test_a_local_search_asking_for_gpus_the_machine_lacks_is_refused_up_front(monkeypatch, tmp_path):
    """Its trials would wait for ever for a GPU that a local Ray does not have."""
    from tuneddml.errors import ConfigError
    from tuneddml.tuning import request as request_module

    monkeypatch.setattr(request_module, "local_gpu_count", lambda: 0)
    from tuneddml.tuning import preflight

    monkeypatch.setattr(
        preflight, "check_trials", lambda *a, **k: pytest.fail("checked after the trials' checks")
    )
    with pytest.raises(ConfigError, match=r"^--gpus-per-trial: .*no CUDA device"):
        request_module.prepare_search(space="quick", gpus_per_trial=0.5, storage=str(tmp_path / "runs"))
    monkeypatch.setattr(request_module, "local_gpu_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^--gpus-per-trial: .*at most 2"):
        request_module.prepare_search(space="quick", gpus_per_trial=3, storage=str(tmp_path / "runs"))


@pytest.mark.slow
@pytest.mark.ray
def test_half_a_gpu_each_puts_two_trials_on_one_gpu_at_once_and_one_gpu_each_serialises(
    tmp_path, monkeypatch
):
    import dataclasses

    import ray
    from ray import tune

    from tuneddml.tuning import request as request_module
    from tuneddml.tuning.driver import trial_resources
    from tuneddml.tuning.request import prepare_search

    monkeypatch.setattr(request_module, "local_gpu_count", lambda: 1)  # the GPU Ray is told of below
    half = prepare_search(space="quick", gpus_per_trial=0.5, storage=str(tmp_path / "runs"), name="half")
    assert trial_resources(half) == {"cpu": 1.0, "gpu": 0.5}
    whole = dataclasses.replace(half, gpus_per_trial=1.0)
    requests = {"half": half, "whole": whole}
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        # one Tuner, each trial with its request's resources: the two halves first, then the wholes.
        # The halves hold on for 2 s to overlap; the wholes need not (they may not overlap at all).
        # Actors are reused as a search reuses them (the halves, running at once, cannot share one;
        # the second whole may take over the first's worker once it has ended, and no sooner)
        tuner = tune.Tuner(
            tune.with_resources(_sharing_trial, lambda config: trial_resources(requests[config["share"]])),
            param_space={
                "share": tune.grid_search(["half", "half", "whole", "whole"]),
                "hold_s": {"half": 2.0, "whole": 0.5},
            },
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="share", verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert not grid.errors, grid.errors
    trials = sorted((r.metrics for r in grid), key=lambda m: m["start"])
    shared = [t for t in trials if t["config"]["share"] == "half"]
    serial = [t for t in trials if t["config"]["share"] == "whole"]

    # 0.5 each: both at once, in two processes, given the one GPU (id 0) as their only CUDA device
    first, second = shared
    assert second["start"] < first["end"], shared
    assert first["pid"] != second["pid"]
    for trial in shared:
        assert trial["gpu_ids"] == trial["visible"] == "0"
        assert trial["device"] == "cuda"  # index-less: the current device, i.e. the one Ray gave
    # 1 each, with CPUs for two: the GPU alone makes them take turns
    first, second = serial
    assert second["start"] >= first["end"], serial
    assert [t["gpu_ids"] for t in serial] == ["0", "0"]
