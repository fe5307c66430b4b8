"""Concise progress of a search, in place of Ray's console tables."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from ray.tune import Callback

from tuneddml.cli import format_duration, format_values
from tuneddml.errors import error_message

PROGRESS_FILE = "progress.json"  # in the search's folder: its elapsed time when last printed


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


class SearchProgress(Callback):
    """Prints one line when a trial ends, and a heartbeat at most every ``every`` seconds:
    trials done/running/failed, best so far, elapsed and estimated time left."""

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
    ) -> None:
        self.num_samples = num_samples
        self.metric = metric
        self.mode = mode
        self.concurrency = max(1, concurrency)
        self.stream = stream
        self.every = every
        # the search's own clock: its elapsed time so far, kept in ``folder`` (a resume goes on from it)
        self.folder = folder
        self.start = time.monotonic() - _elapsed_before(folder)
        self.last_print = 0.0
        self.best: float | None = None
        self.best_trial = ""
        self.done = 0
        self.failed = 0
        self.running: set[str] = set()
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.events = events  # the searcher's own decisions, printed as they happen
        self.events_shown = 0
        self.searched = tuple(searched)  # the settings the searcher varies, shown for a failed trial
        self.restored = False  # after a resume: trials that had ended are counted once

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["stream"] = None
        state["events"] = None
        return state

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
                tmp.write_text(json.dumps({"elapsed_s": round(time.monotonic() - self.start, 3)}))
                tmp.replace(path)
            except OSError:  # the clock is a nicety: never stop the search for it
                pass

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        left = max(0, self.num_samples - self.done - self.failed)
        eta = ""
        if self.durations and left:
            mean = sum(self.durations) / len(self.durations)
            eta = f", ~{format_duration(mean * math.ceil(left / self.concurrency))} left"
        best = f"{self.metric}={self.best:.4f} ({self.best_trial})" if self.best is not None else "-"
        return (
            f"[{format_duration(elapsed)}] trials {self.done + self.failed}/{self.num_samples} done "
            f"({self.failed} failed), {len(self.running)} running | best {best}{eta}"
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and self._better(float(value)):
            self.best = float(value)
            self.best_trial = trial.trial_id

    def _ended(self, trial: Any, failed: bool, why: str) -> None:
        self.running.discard(trial.trial_id)
        if trial.trial_id in self.started:
            self.durations.append(time.monotonic() - self.started.pop(trial.trial_id))
        if failed:
            self.failed += 1
        else:
            self.done += 1
        last = trial.last_result or {}
        value = last.get(self.metric)
        if failed or last.get("diverged"):
            varied = {k: v for k, v in (trial.config or {}).items() if k in self.searched}
            what = f" ({format_values(varied)})" if varied else ""
            reason = trial_error(trial) if failed else last.get("error", "diverged")
            self._out(f"trial {trial.trial_id}{what} {why}: {reason}")
        else:
            shown = f"{self.metric}={value:.4f}" if isinstance(value, (int, float)) else "no result"
            self._out(f"trial {trial.trial_id} {why} after {last.get('epoch', 0)} epochs: {shown}")
        self._searcher_events()
        self._out(self.line())
        self.last_print = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._ended(trial, False, "diverged" if last.get("diverged") else "ended")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, True, "failed")

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
                value = (trial.last_result or {}).get(self.metric)
                if isinstance(value, (int, float)) and self._better(float(value)):
                    self.best, self.best_trial = float(value), trial.trial_id
        if self.done or self.failed:
            self._out(self.line())

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._searcher_events()
        if time.monotonic() - self.last_print >= self.every:
            self.last_print = time.monotonic()
            self._out(self.line())
