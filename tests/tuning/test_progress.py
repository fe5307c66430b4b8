"""The search's progress lines (no Ray started: stand-in trials and a stand-in clock): what each
trial was and how it ended, the heartbeat's best with its label, and an estimate of the time left
that excludes the start-up and follows the parallelism the searcher really reaches."""

from __future__ import annotations

import io
import math

import pytest

from tuneddml.errors import ConfigError
from tuneddml.tuning.progress import SearchProgress

SEARCHED = ("loss", "loss.lambda")


class Trial:
    """What the progress callback reads of a Ray trial."""

    def __init__(self, index: int, config: dict, last: dict | None = None, error: BaseException | None = None):
        self.trial_id = f"id{index:06d}"
        self.experiment_tag = f"{index}_loss={config.get('loss')}"
        self.config = {"epochs": 4, **config}
        self.last_result = last or {}
        self.error = error
        self.error_file = None

    def get_pickled_error(self):
        return self.error


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def progress(clock: Clock, **kw) -> tuple[SearchProgress, io.StringIO]:
    out = io.StringIO()
    options = {"num_samples": 6, "concurrency": 2, "scheduler": "asha", "epochs": 4, **kw}
    p = SearchProgress(metric="map_at_r", mode="max", stream=out, searched=SEARCHED, clock=clock, **options)
    return p, out


def record(epoch: int, value: float, seconds: float = 1.0) -> dict:
    return {"epoch": epoch, "map_at_r": value, "diverged": 0, "time/train_s": seconds * 0.8, "time/eval_s": seconds * 0.2}


def run(p: SearchProgress, clock: Clock, trial: Trial, start: float, end: float, records: list[dict]) -> None:
    clock.now = start
    p.on_trial_start(0, [], trial)
    for r in records:
        p.on_trial_result(0, [], trial, r)
        trial.last_result = r
    clock.now = end
    p.on_trial_complete(0, [], trial)


def test_each_ended_trial_says_what_it_was_and_how_it_ended():
    clock = Clock()
    p, out = progress(clock)
    run(p, clock, Trial(1, {"loss": "supcon", "loss.lambda": 0.5}), 0, 5, [record(e, 0.1 * e) for e in (1, 2, 3, 4)])
    run(p, clock, Trial(2, {"loss": "contrastive", "loss.lambda": 0.3}), 0, 6, [record(1, 0.05)])
    blown = {"epoch": 1, "map_at_r": math.nan, "diverged": 1, "error": "diverged at epoch 1 (step 2): total=inf"}
    run(p, clock, Trial(3, {"loss": "supcon", "loss.lambda": 0.9}), 6, 7, [blown])
    failed = Trial(4, {"loss": "contrastive", "loss.lambda": 0.7}, error=ConfigError("backbone", "mlp", "an image backbone"))
    clock.now = 8
    p.on_trial_start(0, [], failed)
    p.on_trial_error(0, [], failed)
    lines = out.getvalue().splitlines()
    assert "t01 supcon lambda=0.50 finished after 4 epochs: map_at_r=0.4000" in lines
    assert "t02 contrastive lambda=0.30 stopped early at epoch 1 of 4 by asha: map_at_r=0.0500" in lines
    assert "t03 supcon lambda=0.90 diverged at epoch 1 (step 2): total=inf" in lines
    assert "t04 contrastive lambda=0.70 failed: ConfigError: backbone: bad value 'mlp' (expected an image backbone)" in lines
    heartbeat = lines[-1]
    assert "trials 4/6 done (1 failed), 0 running" in heartbeat
    assert "best map_at_r=0.4000 (t01 supcon lambda=0.50)" in heartbeat


def test_eta_leaves_out_the_first_waves_start_up():
    """Two trials start together and pay 8 s of start-up for 2 s of epochs: the 4 trials left,
    two at once on warm workers, take about 4 s, not the 20 s that mean trial time would say."""
    clock = Clock()
    p, _ = progress(clock)
    for i in (1, 2):
        clock.now = 0
        p.on_trial_start(0, [], Trial(i, {"loss": "supcon", "loss.lambda": 0.5}))
    for i in (1, 2):
        trial = Trial(i, {"loss": "supcon", "loss.lambda": 0.5})
        p.on_trial_result(0, [], trial, record(1, 0.2, seconds=2.0))
        trial.last_result = record(4, 0.2)
        clock.now = 10
        p.on_trial_complete(0, [], trial)
    assert p.eta() == pytest.approx(4.0)
    assert "| ~4s left" in p.line()


def test_eta_follows_a_searcher_that_runs_one_trial_at_a_time():
    """Up to 4 at once allowed, but the searcher waits for each result: 5 trials of 3 s left take
    15 s (a limit-based estimate would say 6 s)."""
    clock = Clock()
    p, _ = progress(clock, num_samples=8, concurrency=4)
    for i in (1, 2, 3):
        run(p, clock, Trial(i, {"loss": "supcon", "loss.lambda": 0.5}), 3.0 * (i - 1), 3.0 * i, [record(4, 0.2, 3.0)])
    assert p.eta() == pytest.approx(15.0)


def test_eta_counts_short_early_stopped_trials_and_what_is_left_of_the_running_ones():
    clock = Clock()
    p, _ = progress(clock, num_samples=5, concurrency=1)
    run(p, clock, Trial(1, {"loss": "supcon"}), 0, 4, [record(4, 0.2)])  # cold
    run(p, clock, Trial(2, {"loss": "supcon"}), 4, 8, [record(4, 0.2)])  # warm, finished: 4 s
    run(p, clock, Trial(3, {"loss": "supcon"}), 8, 9, [record(1, 0.1)])  # warm, stopped early: 1 s
    clock.now = 9
    p.on_trial_start(0, [], Trial(4, {"loss": "supcon"}))
    clock.now = 10
    # cost 2.5 s a trial: 1.5 s left of the running one, then one more
    assert p.eta() == pytest.approx(4.0)


def test_eta_measures_parallelism_after_the_first_wave():
    """Two cold trials run together, then the searcher runs one at a time: the parallelism is
    read after the first wave (1), not over the whole search (which the wave pulls towards 2)."""
    clock = Clock()
    p, _ = progress(clock, num_samples=6, concurrency=2)
    for i in (1, 2):
        clock.now = 0
        p.on_trial_start(0, [], Trial(i, {"loss": "supcon"}))
    for i in (1, 2):
        trial = Trial(i, {"loss": "supcon"}, last=record(4, 0.2))
        clock.now = 10
        p.on_trial_complete(0, [], trial)
    run(p, clock, Trial(3, {"loss": "supcon"}), 10, 12, [record(4, 0.2)])
    assert p.eta() == pytest.approx(3 * 2.0)


def test_a_running_trial_that_reported_epochs_is_timed_at_its_own_pace():
    clock = Clock()
    p, _ = progress(clock, num_samples=2, concurrency=2)
    run(p, clock, Trial(1, {"loss": "supcon"}), 0, 2, [record(1, 0.2)])  # short: stopped early
    long = Trial(2, {"loss": "supcon"})
    clock.now = 0
    p.on_trial_start(0, [], long)
    p.on_trial_result(0, [], long, record(1, 0.2, seconds=3.0))
    clock.now = 3
    assert p.eta() == pytest.approx(3 * 3.0)  # 3 of its 4 epochs left, 3 s each
