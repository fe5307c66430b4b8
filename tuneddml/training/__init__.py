"""The one trial function: data -> model -> loss terms -> optimiser, evaluated every epoch."""

from __future__ import annotations

from tuneddml.training.folds import FoldsTrainer, make_trainer, run_trial
from tuneddml.training.loop import EpochReport, Trainer, TrialResult

__all__ = ["EpochReport", "FoldsTrainer", "Trainer", "TrialResult", "make_trainer", "run_trial"]
