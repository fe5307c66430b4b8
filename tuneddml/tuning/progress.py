"""Concise progress of a search, in place of Ray's console tables.

One line per ended trial, saying what it was (:func:`~tuneddml.results.labels.trial_label`) and
how it ended (finished, stopped early by the scheduler, diverged, failed, each with its reason),
and a heartbeat: trials done, running and failed, the best so far with its label, the time
elapsed and an estimate of the time left (see :meth:`SearchProgress.eta`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ray.tune import Callback

from tuneddml.cli import format_duration
from tuneddml.config import TrialConfig
from tuneddml.errors import error_message
from tuneddml.results import EVAL_SECONDS, TRAIN_SECONDS, trial_status
from tuneddml.results.labels import trial_index, trial_label

PROGRESS_FILE = "progress.json"  # in the search's folder: its elapsed time when last printed
#: a trial's epochs when neither the space nor an override sets them
DEFAULT_EPOCHS: int = TrialConfig.__dataclass_fields__["epochs"].default


def _elapsed_before(folder: str | None) -> float:
    """The elapsed seconds a search had reached (0 for a new one)."""
    if not folder:
        return 0.0
    try:
        return max(0.0, float(json.loads((Path(folder) / PROGRESS_FILE).read_text())["elapsed_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def trial_error(trial: Any) -> str:
    """A failed trial's own message in one line (``ConfigError: field: bad value ...``), from the
    exception Ray kept (the trial's own, if it could be pickled), else its error file."""
    exc = None
    try:
        exc = trial.get_pickled_error()
    except Exception:  # no pickled error, or one that cannot be loaded here
        exc = None
    text = ""
    if exc is None:
        try:
            with open(trial.error_file) as handle:
                text = handle.read()
        except (OSError, TypeError):
            text = ""
    return error_message(exc, text)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass
class _Run:
    """One trial's run in this session, as the time-left estimate needs it."""

    start: float
    cold: bool  # started before any trial had ended: it pays the start-up
    epochs: int  # the epochs it is configured for
    epochs_done: int = 0
    epoch_seconds: float = 0.0  # its reported epochs' train and eval seconds
    end: float | None = None

    def seconds(self, now: float) -> float:
        return (self.end if self.end is not None else now) - self.start

    def left(self, now: float, expected: float) -> float:
        """Seconds it still needs: its epochs left at its own pace, else ``expected`` less its age."""
        if self.epochs_done > 0 and self.epoch_seconds > 0:
            return max(0.0, self.epochs - self.epochs_done) * self.epoch_seconds / self.epochs_done
        return max(0.0, expected - self.seconds(now))


class SearchProgress(Callback):
    """Prints one line when a trial ends, and a heartbeat at most every ``every`` seconds (and
    after each trial's line). ``scheduler`` names what stops trials early; ``epochs``: a trial's
    epochs where its config does not say (a trial that reported fewer was stopped early)."""

    def __init__(
        self,
        *,
        num_samples: int,
        metric: str,
        mode: str,
        concurrency: int,
        stream: IO[str] | None = None,
        every: float = 30.0,
        events: Callable[[], list[str]] | None = None,
        searched: Iterable[str] = (),
        folder: str | None = None,
        scheduler: str = "the scheduler",
        epochs: int = DEFAULT_EPOCHS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.num_samples = num_samples
        self.metric = metric
        self.mode = mode
        self.concurrency = max(1, concurrency)
        self.stream = stream
        self.every = every
        self.scheduler = scheduler
        self.epochs = epochs
        self.clock = clock
        # the search's own clock: its elapsed time so far, kept in ``folder`` (a resume goes on from it)
        self.folder = folder
        self.start = clock() - _elapsed_before(folder)
        self.last_print = 0.0
        self.best: float | None = None
        self.best_label = ""
        self.done = 0
        self.failed = 0
        self.started: dict[str, _Run] = {}  # the running trials
        self.ended: list[_Run] = []  # the trials that ended in this session
        self.first_end: float | None = None
        self.events = events  # the searcher's own decisions, printed as they happen
        self.events_shown = 0
        self.searched = tuple(searched)  # the settings the searcher varies, in each trial's label
        self.restored = False  # after a resume: trials that had ended are counted once

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["stream"] = None
        state["events"] = None
        state["clock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.clock = time.monotonic

    def label(self, trial: Any) -> str:
        """What the trial was: ``t03 supcon lambda=0.50``."""
        return trial_label(trial.config or {}, self.searched, trial_index(getattr(trial, "experiment_tag", None)))

    def _searcher_events(self) -> None:
        if self.events is None:
            return
        events = self.events()
        for text in events[self.events_shown :]:
            self._out(f"searcher {text}")
        self.events_shown = len(events)

    def _out(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)
        if self.folder:
            try:
                path = Path(self.folder) / PROGRESS_FILE
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"elapsed_s": round(self.clock() - self.start, 3)}))
                tmp.replace(path)
            except OSError:  # the clock is a nicety: never stop the search for it
                pass

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _offer(self, trial: Any, result: dict | None) -> None:
        value = (result or {}).get(self.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and self._better(float(value)):
            self.best, self.best_label = float(value), self.label(trial)

    def eta(self) -> float | None:
        """Seconds until the last trial ends, None before one has ended: what is left of the
        running trials and the trials not yet started, spread over the parallelism reached.

        - a trial not yet started costs the mean time of the trials that started after a first one
          had ended (their Ray worker and dataset were warm; short trials a scheduler stopped early
          count as they come); before one has, the mean epoch seconds (``time/train_s`` +
          ``time/eval_s``) of the ended ones, without the start-up the first wave paid;
        - a running trial that reported epochs: its epochs left at its own seconds per epoch;
          one that reported none: the mean time of its kind (first wave or warm) less its age;
        - parallelism: trial-seconds per second since the first trial ended (once a warm trial
          has ended; before, since the first started), between 1 and ``concurrency``: a searcher
          that waits for results runs fewer at once than the limit."""
        if not self.ended:
            return None
        now = self.clock()
        warm = [r.seconds(now) for r in self.ended if not r.cold]
        cold = [r.seconds(now) for r in self.ended if r.cold]
        spent = [r.epoch_seconds for r in self.ended if r.cold and r.epoch_seconds > 0]
        cost = _mean(warm) if warm else _mean(spent) if len(spent) == len(cold) else _mean(cold)
        cold_cost = _mean(cold) if cold else cost
        running_left = [run.left(now, cold_cost if run.cold else cost) for run in self.started.values()]
        waiting = max(0, self.num_samples - self.done - self.failed - len(self.started))
        runs = [*self.ended, *self.started.values()]
        since = self.first_end if warm and self.first_end is not None else min(r.start for r in runs)
        wall = now - since
        busy = sum(max(0.0, min(r.end if r.end is not None else now, now) - max(r.start, since)) for r in runs)
        parallel = min(float(self.concurrency), max(1.0, busy / wall if wall > 0 else self.concurrency))
        return max(max(running_left, default=0.0), (sum(running_left) + waiting * cost) / parallel)

    def line(self) -> str:
        elapsed = self.clock() - self.start
        left = self.num_samples - self.done - self.failed
        eta = self.eta() if left > 0 else None
        shown = f" | ~{format_duration(eta)} left" if eta is not None else ""
        best = f"{self.metric}={self.best:.4f} ({self.best_label})" if self.best is not None else "-"
        return (
            f"[{format_duration(elapsed)}] trials {self.done + self.failed}/{self.num_samples} done "
            f"({self.failed} failed), {len(self.started)} running | best {best}{shown}"
        )

    def _epochs(self, trial: Any) -> int:
        return int((trial.config or {}).get("epochs", self.epochs))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # cold: no trial had ended yet, so its worker and dataset start from nothing
        self.started[trial.trial_id] = _Run(self.clock(), not self.ended, self._epochs(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._offer(trial, result)
        run = self.started.get(trial.trial_id)
        if run is not None:
            run.epochs_done = int(result.get("epoch", run.epochs_done + 1) or 0)
            run.epoch_seconds += sum(
                v for k, v in result.items() if k in (TRAIN_SECONDS, EVAL_SECONDS) and isinstance(v, (int, float))
            )

    def outcome(self, trial: Any, errored: bool) -> str:
        """How the trial ended, in words: ``finished after 2 epochs: map_at_r=0.2561``,
        ``stopped early at epoch 1 by asha: ...``, ``diverged at epoch 1 ...: total=inf``,
        ``failed: ConfigError: ...``."""
        last = trial.last_result or {}
        epochs = self._epochs(trial)
        status = trial_status(last, epochs, errored)
        epoch = int(last.get("epoch", 0) or 0)
        value = last.get(self.metric)
        shown = f"{self.metric}={value:.4f}" if isinstance(value, (int, float)) else "no result"
        if status == "failed":
            return f"failed: {trial_error(trial) if errored else 'it reported no result'}"
        if status == "diverged":
            reason = str(last.get("error") or "loss not finite")
            return reason if reason.startswith("diverged") else f"diverged at epoch {epoch}: {reason}"
        if status == "stopped_early":
            return f"stopped early at epoch {epoch} of {epochs} by {self.scheduler}: {shown}"
        return f"finished after {epoch} epochs: {shown}"

    def _ended(self, trial: Any, errored: bool) -> None:
        now = self.clock()
        if trial.trial_id in self.started:
            run = self.started.pop(trial.trial_id)
            run.end = now
            self.ended.append(run)
            if self.first_end is None:
                self.first_end = now
        text = self.outcome(trial, errored)
        if text.startswith("failed"):
            self.failed += 1
        else:
            self.done += 1
        self._out(f"{self.label(trial)} {text}")
        self._searcher_events()
        self._out(self.line())
        self.last_print = now

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, True)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.restored:
            return
        self.restored = True  # a resumed search: its trials that had ended before count now
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                if trial.status == "ERROR":
                    self.failed += 1
                else:
                    self.done += 1
                self._offer(trial, trial.last_result)
        if self.done or self.failed:
            self._out(self.line())

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._searcher_events()
        if self.clock() - self.last_print >= self.every:
            self.last_print = self.clock()
            self._out(self.line())
