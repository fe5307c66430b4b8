"""The Ray Tune callback (driver side) that mirrors every trial into its MLflow child run, through
the search's :class:`~tuneddml.tracking.SearchRun`."""

from __future__ import annotations

import os
from typing import Any

from ray.tune import Callback

from tuneddml.results import trial_status
from tuneddml.tracking import SearchRun


class MlflowCallback(Callback):
    """Trial start -> child run (every setting, defaults included), each epoch -> its record,
    trial end -> status, final values and best checkpoint.

    Each trial's config is validated once (``TrialConfig.from_flat(...).to_flat()``: what the
    trial really ran with) and kept by trial id. Picklable, for ``Tuner.restore``.
    """

    def __init__(self, search_run: SearchRun) -> None:
        self.search_run = search_run
        self._configs: dict[str, dict[str, Any]] = {}

    @property
    def run_ids(self) -> dict[str, str]:
        return self.search_run.run_ids

    def config(self, trial: Any) -> dict[str, Any]:
        """Every setting of the trial, defaults included (what the trial really ran with)."""
        if trial.trial_id not in self._configs:
            from tuneddml.config import TrialConfig
            from tuneddml.errors import ConfigError

            flat = {k: v for k, v in trial.config.items() if not k.startswith("_")}
            try:
                self._configs[trial.trial_id] = TrialConfig.from_flat(flat).to_flat()
            except ConfigError:  # the trial itself will fail and say why
                self._configs[trial.trial_id] = flat
        return self._configs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.search_run.trial_run(trial.trial_id, self.config(trial), [t.trial_id for t in trials])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.search_run.log_epoch(trial.trial_id, self.config(trial), result)

    def _finish(self, trial: Any, errored: bool) -> None:
        config = self.config(trial)
        status = trial_status(trial.last_result, int(config.get("epochs", 0)), errored)
        self.search_run.finish_trial(
            trial.trial_id,
            config,
            trial.last_result,
            status,
            best_checkpoint(trial),
            error=str(trial.error_file) if errored else None,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=True)


def best_checkpoint(trial: Any) -> str | None:
    """Folder or URI of the trial's best checkpoint (Ray keeps it by the search metric)."""
    try:
        results = trial.run_metadata.checkpoint_manager.best_checkpoint_results
        checkpoint = results[-1].checkpoint if results else trial.checkpoint
    except AttributeError:
        checkpoint = getattr(trial, "checkpoint", None)
    path = getattr(checkpoint, "path", None)
    if not path:
        return None
    filesystem = getattr(checkpoint, "filesystem", None)
    if filesystem is not None and type(filesystem).__name__ != "LocalFileSystem":
        return f"{filesystem.type_name}://{path}"
    return path if os.path.isdir(path) else None
