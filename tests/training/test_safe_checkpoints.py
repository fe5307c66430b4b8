"""Checkpoints hold tensors and plain data only and are read weights-only: every registered loss,
sampler and embedding augmenter survives the trip bit for bit, and a file carrying a pickled
callable is refused without running it."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneddml.config import TrialConfig
from tuneddml.losses import LOSSES
from tuneddml.sampling import EMBEDDING_AUGMENTERS, SAMPLERS
from tuneddml.training import Trainer, run_trial
from tuneddml.training.loop import UnreadableCheckpoint, read_checkpoint

FAST = {"dataset": "glyphs-tiny", "split": "test", "threads": 1, "steps_per_epoch": 2, "epochs": 2}
# parameters a sampler needs on glyphs-tiny (the defaults of the others fit)
SAMPLER_PARAMS = {
    "hierarchical": {"sampler.classes_per_group": 2, "sampler.group_size": 3},
    "npairs": {"batch_size": 32},
}


def same(a, b, where="state") -> None:
    """Equal values of equal types, tensors and arrays bit for bit."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where


def _round_trip(flat: dict, tmp_path: Path) -> None:
    flat = {**flat, "epochs": 1}
    trainer = Trainer(TrialConfig.from_flat(flat))
    trainer.run()  # samplers and augmenters have learnt something, the history has an entry
    trainer.save(tmp_path / "t.pt")
    state = trainer.state_dict()
    again = Trainer(TrialConfig.from_flat(flat))
    again.restore(tmp_path / "t.pt")
    same(state, again.state_dict())
    same(state, read_checkpoint(tmp_path / "t.pt"))  # numpy arrays and scalars come back as such


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler_state_survives_a_weights_only_checkpoint(sampler, tmp_path):
    _round_trip(
        {**FAST, "loss": "multi_similarity", "sampler": sampler, **SAMPLER_PARAMS.get(sampler, {})}, tmp_path
    )


@pytest.mark.parametrize("aug", [n for n in EMBEDDING_AUGMENTERS.names() if n != "none"])
def test_every_embedding_augmenter_state_survives_a_weights_only_checkpoint(aug, tmp_path):
    from tuneddml.sampling import EMBEDDING_AUGMENTERS

    makes_classes = getattr(EMBEDDING_AUGMENTERS.get(aug).factory, "makes_classes", False)
    loss = "proxy_anchor" if makes_classes else "multi_similarity"  # new classes need a proxy loss
    _round_trip({**FAST, "loss": loss, "embedding_aug": aug}, tmp_path)


def test_every_loss_state_survives_a_weights_only_checkpoint(tmp_path):
    from tuneddml.losses import build_loss
    from tuneddml.training.loop import _plain

    for name in LOSSES.names():
        torch.manual_seed(0)
        loss = build_loss(name, num_classes=4, embedding_size=8)
        emb = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
        loss(emb, torch.arange(4).repeat_interleave(4))["total"]  # buffers some losses fill lazily
        optimiser = torch.optim.Adam([p for p in loss.parameters() if p.requires_grad] or [torch.zeros(1)])
        state = {"loss": loss.state_dict(), "optimizer": optimiser.state_dict()}
        torch.save(_plain(state, "state"), tmp_path / f"{name}.pt")
        same(state, torch.load(tmp_path / f"{name}.pt", weights_only=True), name)


def test_a_restored_trainer_continues_bit_identically_with_a_stateful_sampler(tmp_path):
    flat = {**FAST, "loss": "multi_similarity", "sampler": "hierarchical"}
    flat.update(SAMPLER_PARAMS["hierarchical"], **{"sampler.grouping": "embedding"})
    straight = run_trial(TrialConfig.from_flat(flat))
    first = Trainer(TrialConfig.from_flat(flat))
    first.train_epoch()
    first.save(tmp_path / "t.pt")
    resumed = run_trial(TrialConfig.from_flat(flat), resume=tmp_path / "t.pt")
    assert resumed.metrics == straight.metrics


class _Payload:
    """Unpickling this writes the marker file: what a planted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_a_checkpoint_carrying_a_pickled_callable_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    trainer = Trainer(TrialConfig.from_flat(FAST))
    state = trainer.state_dict()
    state["model"] = _Payload(marker)
    torch.save(state, tmp_path / "planted.pt")

    with pytest.raises(UnreadableCheckpoint, match=r"planted\.pt: refused, it holds more than tensors"):
        trainer.restore(tmp_path / "planted.pt")
    assert not marker.exists()
    # the payload is real: the old weights_only=False load ran it
    torch.load(tmp_path / "planted.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "missing", "foreign"])
def test_an_unreadable_checkpoint_says_why_in_one_line(damage, tmp_path):
    trainer = Trainer(TrialConfig.from_flat(FAST))
    path = tmp_path / "t.pt"
    trainer.save(path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "missing":
        os.remove(path)
    else:
        torch.save({"weights": torch.zeros(3)}, path)  # a weights-only file, but not a trainer's
    with pytest.raises(UnreadableCheckpoint, match=r"^checkpoint .*t\.pt: ") as info:
        trainer.restore(path)
    assert "\n" not in str(info.value)
