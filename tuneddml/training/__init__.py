"""The one trial function: data -> model -> loss terms -> optimiser, evaluated every epoch."""

from __future__ import annotations

from tuneddml.training.loop import EpochReport, Trainer, TrialResult, run_trial

__all__ = ["EpochReport", "Trainer", "TrialResult", "run_trial"]
