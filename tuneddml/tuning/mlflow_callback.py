"""The Ray Tune callbacks (driver side) that keep a search's records: :class:`MlflowCallback`
mirrors every trial into its MLflow child run, through the search's
:class:`~tuneddml.tracking.SearchRun` and its outbox (sent in the background: an MLflow outage
never blocks the search loop); :class:`TrialLedger` writes the ledger of ended trials
(:mod:`tuneddml.results.ledger`) that makes ``--resume`` exact."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tuneddml.results import EPOCH, ERROR, record_values, trial_status
from tuneddml.results.labels import trial_index, trial_label
from tuneddml.results.ledger import record_ended
from tuneddml.results.schema import DIGEST
from tuneddml.tracking import SearchRun
from tuneddml.tuning.progress import trial_error


class MlflowCallback(Callback):
    """Trial start -> child run (every setting, defaults included), named by what varied
    (``t03 supcon lambda=0.50``); its first epoch -> its data split as a dataset input; each
    epoch -> its record; trial end -> status, epochs, error message and traceback text, and where
    its best checkpoint lies.

    Each trial's config is validated once (``TrialConfig.from_flat(...).to_flat()``: what the
    trial really ran with) and kept by trial id. Every call is handed to
    :meth:`SearchRun.submit` (keyed, so a repeat after a resume is sent once). A failed trial's
    traceback is read here, from Ray's error file, when the trial ends: that file lives in Ray's
    session folder, on the head node, and goes with the session.
    """

    def __init__(self, search_run: SearchRun) -> None:
        self.search_run = search_run
        self._configs: dict[str, dict[str, Any]] = {}
        self.checkpoints: dict[str, str] = {}  # trial id -> its best checkpoint's folder

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

    def label(self, trial: Any) -> str:
        """The trial's readable name: its start order, loss and the searched settings it has
        (:func:`~tuneddml.results.labels.trial_label`; the searched settings are the space's, else
        those the searcher suggested)."""
        searched = self.search_run.searched or list(getattr(trial, "evaluated_params", None) or {})
        return trial_label(self.config(trial), searched, trial_index(getattr(trial, "experiment_tag", None)))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.search_run.submit(
            f"start/{trial.trial_id}",
            "start",
            trial=trial.trial_id,
            config=self.config(trial),
            known=[t.trial_id for t in trials],
            name=self.label(trial),
        )

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch = int(result.get(EPOCH, 0))
        config = self.config(trial)
        if result.get(DIGEST):
            self.search_run.submit(
                f"dataset/{trial.trial_id}", "dataset", trial=trial.trial_id, dataset=split_input(config, result[DIGEST])
            )
        self.search_run.submit(
            f"epoch/{trial.trial_id}/{epoch}", "epoch", trial=trial.trial_id, epoch=epoch, values=record_values(result)
        )

    def _finish(self, trial: Any, errored: bool) -> None:
        config = self.config(trial)
        last = trial.last_result or {}
        status = trial_status(last, int(config.get("epochs", 0)), errored)
        error = trial_error(trial) if errored else (last.get(ERROR) or None)
        checkpoint = best_checkpoint(trial)
        if checkpoint:
            self.checkpoints[trial.trial_id] = checkpoint
        epoch = int(last.get(EPOCH, 0))
        self.search_run.submit(
            f"end/{trial.trial_id}/{status}/{epoch}",
            "end",
            trial=trial.trial_id,
            status=status,
            epoch=epoch,
            error=error,
            checkpoint=checkpoint,
            traceback=error_text(trial) if errored else None,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=True)


class TrialLedger(Callback):
    """Writes each ended trial's last record to the search's ledger, the moment it ends."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.last_result:
            record_ended(self.folder, trial.trial_id, trial.last_result, trial.config)


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # the terminal colours Ray writes into its error files


def error_text(trial: Any) -> str | None:
    """The whole text of a failed trial's Ray error file (its traceback, without terminal
    colours), read now: the file is in Ray's session folder and goes with the session. None
    where there is none."""
    try:
        with open(trial.error_file) as handle:
            return _COLOUR.sub("", handle.read())[-200_000:] or None
    except (OSError, TypeError):
        return None


def split_input(config: dict[str, Any], digest: str) -> dict[str, str]:
    """A trial's data split as :meth:`SearchRun.log_dataset` takes it: ``glyphs-tiny fold 0/4``
    (the dataset and its fold of the training classes; ``... test`` for the final split)."""
    dataset = str(config.get("dataset", "dataset"))
    if config.get("split", "val") == "val":
        context = f"val fold {config.get('fold', 0)}/{config.get('num_folds', 4)}"
    else:
        context = str(config.get("split"))
    return {"name": f"{dataset} {context.removeprefix('val ')}", "digest": digest, "context": context}


def best_checkpoint(trial: Any) -> str | None:
    """Folder or URI of the trial's best checkpoint (Ray keeps it by the search metric)."""
    try:
        results = trial.run_metadata.checkpoint_manager.best_checkpoint_results
        checkpoint = results[-1].checkpoint if results else trial.checkpoint
    except AttributeError:
        checkpoint = getattr(trial, "checkpoint", None)
    return checkpoint_location(checkpoint)


def checkpoint_location(checkpoint: Any) -> str | None:
    """A Ray checkpoint's folder (local) or URI (a cluster's storage); None if there is none."""
    path = getattr(checkpoint, "path", None)
    if not path:
        return None
    filesystem = getattr(checkpoint, "filesystem", None)
    if filesystem is not None and type(filesystem).__name__ != "LocalFileSystem":
        return f"{filesystem.type_name}://{path}"
    return path if os.path.isdir(path) else None
