"""Ray Tune trial schedulers, by name: :data:`SCHEDULERS` (what a space's ``scheduler`` and
``--scheduler`` choose). Ray is imported only when one is built."""

from __future__ import annotations

from typing import Any

from tuneddml.registry import Registry

SCHEDULERS: Registry[Any] = Registry("scheduler")


@SCHEDULERS.register("asha", runtime=("epochs",))
def asha(*, epochs: int) -> Any:
    """Asynchronous successive halving (Li et al., MLSys 2020): stops the worse half at each rung.

    Rungs at ``grace = max(1, epochs // 4)`` epochs, doubling (reduction factor 2) up to
    ``epochs``; a search of fewer than 3 epochs has no room for a rung and runs every trial to
    the end (FIFO)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if epochs < 3:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=max(1, epochs // 4), reduction_factor=2)


@SCHEDULERS.register("fifo", runtime=("epochs",))
def fifo(*, epochs: int) -> Any:
    """Every trial runs all its epochs (no early stopping)."""
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()
