"""A trial whose latest checkpoint cannot be restored falls back to its previous checkpoint, else
restarts, and ends exactly where an uninterrupted run ends (real ``Trainer.save`` files laid out as
Ray keeps them: ``<trial folder>/checkpoint_NNNNNN/trainer.pt``)."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from tuneddml.config import TrialConfig
from tuneddml.training import Trainer, run_trial
from tuneddml.tuning.trainable import CHECKPOINT_FILE, local_checkpoint_folder, resume_trainer

FLAT = {"dataset": "glyphs-tiny", "split": "test", "threads": 1, "steps_per_epoch": 2, "epochs": 3}
FLAT.update(eval_ap=False, eval_nmi=False)  # the cheap metrics are enough to compare


@pytest.fixture(scope="module")
def straight():
    return run_trial(TrialConfig.from_flat(FLAT)).metrics


@pytest.fixture
def trial(tmp_path) -> Path:
    """A trial folder with the checkpoints of epochs 1 and 2, as Ray leaves them."""
    trainer = Trainer(TrialConfig.from_flat(FLAT))
    for index in range(2):
        trainer.train_epoch()
        folder = tmp_path / f"checkpoint_{index:06d}"
        folder.mkdir()
        trainer.save(folder / CHECKPOINT_FILE)
    return tmp_path


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def test_an_intact_latest_checkpoint_resumes_silently(trial):
    lines: list[str] = []
    trainer = resume_trainer(TrialConfig.from_flat(FLAT), trial / "checkpoint_000001", warn=lines.append)
    assert trainer.epoch == 2 and lines == []


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(trial, straight, damage):
    latest = trial / "checkpoint_000001"
    if damage == "truncated":
        _truncate(latest / CHECKPOINT_FILE)
    else:
        (latest / CHECKPOINT_FILE).unlink()
        latest.rmdir()
    lines: list[str] = []
    trainer = resume_trainer(TrialConfig.from_flat(FLAT), latest, warn=lines.append)
    assert trainer.epoch == 1
    assert (
        len(lines) == 1 and "checkpoint_000001" in lines[0] and "resumed from checkpoint_000000" in lines[0]
    )
    assert trainer.run().metrics == straight  # bit-identical to the run that was never interrupted


def test_with_no_readable_checkpoint_the_trial_restarts_from_scratch(trial, straight, tmp_path):
    marker = tmp_path / "ran"
    _truncate(trial / "checkpoint_000001" / CHECKPOINT_FILE)
    planted = Trainer(TrialConfig.from_flat(FLAT)).state_dict()
    planted["model"] = _Payload(marker)
    torch.save(planted, trial / "checkpoint_000000" / CHECKPOINT_FILE)
    lines: list[str] = []
    trainer = resume_trainer(TrialConfig.from_flat(FLAT), trial / "checkpoint_000001", warn=lines.append)
    assert trainer.epoch == 0 and not marker.exists()
    assert len(lines) == 1 and "restarts from its first epoch" in lines[0]
    assert trainer.run().metrics == straight


def test_a_checkpoint_of_another_trial_is_not_restored(trial):
    other = Trainer(TrialConfig.from_flat({**FLAT, "embedding_size": 32}))
    other.save(trial / "checkpoint_000001" / CHECKPOINT_FILE)
    lines: list[str] = []
    trainer = resume_trainer(TrialConfig.from_flat(FLAT), trial / "checkpoint_000001", warn=lines.append)
    assert trainer.epoch == 1 and len(lines) == 1 and "not this trial's" in lines[0]


def test_remote_checkpoints_are_not_searched_for_siblings(trial):
    pytest.importorskip("ray.tune")
    import pyarrow.fs
    from ray import tune

    assert local_checkpoint_folder(tune.Checkpoint.from_directory(str(trial / "checkpoint_000001"))) == (
        trial / "checkpoint_000001"
    )
    remote = tune.Checkpoint("bucket/checkpoint_000001", filesystem=pyarrow.fs._MockFileSystem())
    assert local_checkpoint_folder(remote) is None and local_checkpoint_folder(None) is None
    _truncate(trial / "checkpoint_000001" / CHECKPOINT_FILE)
    lines: list[str] = []
    trainer = resume_trainer(
        TrialConfig.from_flat(FLAT), trial / "checkpoint_000001", siblings=False, warn=lines.append
    )
    assert trainer.epoch == 0 and "restarts from its first epoch" in lines[0]
