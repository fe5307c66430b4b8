"""The trial function end to end on glyphs-tiny (real data, real model, real faiss evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tuneddml.config import TrialConfig
from tuneddml.errors import TrialDiverged
from tuneddml.training import Trainer, run_trial

FAST = {"dataset": "glyphs-tiny", "split": "test", "threads": 1, "steps_per_epoch": 3, "epochs": 2}


def test_training_beats_the_untrained_model_on_unseen_classes():
    config = TrialConfig.from_flat({**FAST, "steps_per_epoch": 15, "epochs": 3, "loss": "supcon"})
    trainer = Trainer(config)
    untrained = trainer.evaluate()
    result = trainer.run()
    assert result.metrics["recall_at_1"] > untrained["recall_at_1"] + 0.05
    assert result.metrics["map_at_r"] > untrained["map_at_r"] + 0.03


def test_reports_every_epoch_with_terms_metrics_and_time():
    reports = []
    result = run_trial(TrialConfig.from_flat(FAST), lambda r, _t: reports.append(r))
    assert [r.epoch for r in reports] == [1, 2]
    for r in reports:
        assert set(r.terms) == {"pos", "ent", "total"}
        assert {
            "recall_at_1",
            "recall_at_2",
            "recall_at_4",
            "recall_at_8",
            "map_at_r",
            "r_precision",
            "nmi",
        } <= set(r.metrics)
        assert r.train_seconds > 0 and r.eval_seconds > 0 and r.elapsed >= r.train_seconds
        flat = r.flat()
        assert flat["loss/total"] == r.terms["total"] and flat["epoch"] == r.epoch
    assert reports[-1].eta == 0 and result.metrics == reports[-1].metrics


def test_seeded_runs_reproduce_and_seeds_differ():
    a = run_trial(TrialConfig.from_flat(FAST)).metrics
    b = run_trial(TrialConfig.from_flat(FAST)).metrics
    c = run_trial(TrialConfig.from_flat({**FAST, "seed": 1})).metrics
    assert a == b
    assert a != c


def test_checkpoint_resume_continues_exactly(tmp_path):
    config = TrialConfig.from_flat({**FAST, "loss": "proxy_anchor"})
    straight = run_trial(config).metrics

    first = Trainer(config)
    first.train_epoch()
    first.save(tmp_path / "state.pt")
    resumed = run_trial(config, resume=tmp_path / "state.pt")
    assert resumed.metrics == straight
    assert [r.epoch for r in resumed.history] == [2]


def test_a_nan_loss_stops_the_trial_with_the_epoch(monkeypatch):
    trainer = Trainer(TrialConfig.from_flat(FAST))
    real_forward = trainer.loss.forward
    calls = {"n": 0}

    def poisoned(embeddings, labels):
        out = real_forward(embeddings, labels)
        calls["n"] += 1
        if calls["n"] == 5:  # second step of epoch 2
            out["total"] = out["total"] * math.nan
        return out

    monkeypatch.setattr(trainer.loss, "forward", poisoned)
    with pytest.raises(TrialDiverged, match=r"diverged at epoch 2 \(step 2\)") as info:
        trainer.run()
    assert info.value.epoch == 2 and math.isnan(info.value.terms["total"])
    assert trainer.epoch == 1  # the diverged epoch is not counted as done


def test_proxies_get_their_own_learning_rate():
    trainer = Trainer(TrialConfig.from_flat({**FAST, "loss": "proxy_anchor", "lr": 0.001, "proxy_lr": 0.05}))
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.001, 0.05]
    proxies = {id(p) for p in trainer.loss.parameters()}
    assert {id(p) for p in groups[1]["params"]} == proxies


def test_embeddings_are_normalised_for_evaluation():
    trainer = Trainer(TrialConfig.from_flat(FAST))
    emb = trainer.embed(trainer.data.query)
    assert emb.shape == (len(trainer.data.query), 64)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(emb)))


class _IndexRecorder(torch.nn.Module):
    """A loss that keeps per-sample state would get these: it records each batch's indices and labels."""

    uses_indices = True
    expects_normalized = True

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[list[int], list[int]]] = []

    def batch_terms(self, embeddings, labels, indices):
        from tuneddml.losses.base import BaseLoss

        return BaseLoss.batch_terms(self, embeddings, labels, indices)

    def forward(self, embeddings, labels, indices=None):
        self.seen.append((indices.tolist(), labels.tolist()))
        return {"total": (embeddings * 0.0).sum()}

    def on_epoch_start(self, epoch, context):
        pass


def _sampler_batches(config, labels, epochs):
    """The sampler's batches, drawn again as the trainer draws them: its seed, steps per epoch."""
    from tuneddml.sampling import SAMPLERS

    sampler = SAMPLERS.build(config.sampler, config.sampler_params, field="sampler")
    rng = np.random.default_rng(config.seed)
    out = []
    for _ in range(epochs):
        epoch = []
        while len(epoch) < config.steps_per_epoch:
            for batch in sampler.batches(labels, config.batch_size, rng):
                epoch.append(np.asarray(batch).tolist())
                if len(epoch) == config.steps_per_epoch:
                    break
        out.extend(epoch)
    return out


def test_the_loss_gets_each_batch_training_set_indices_and_minus_one_for_synthetic_rows():
    from tuneddml.sampling.base import EmbeddingAugmenter

    class Doubler(EmbeddingAugmenter):
        def forward(self, embeddings, labels):
            return torch.cat([embeddings, embeddings.flip(0)]), torch.cat([labels, labels.flip(0)])

    config = TrialConfig.from_flat(FAST)
    trainer = Trainer(config)
    trainer.loss = _IndexRecorder()
    trainer.train_epoch()
    trainer.embedding_aug = Doubler()
    trainer.train_epoch()
    labels = trainer.data.train.labels
    expected = _sampler_batches(config, labels, epochs=2)
    assert len(trainer.loss.seen) == len(expected) == 2 * config.steps_per_epoch
    for step, ((indices, got_labels), batch) in enumerate(zip(trainer.loss.seen, expected)):
        real = indices[: len(batch)]
        assert real == batch and got_labels[: len(batch)] == labels[batch].tolist()
        synthetic = indices[len(batch) :]
        assert synthetic == ([-1] * len(batch) if step >= config.steps_per_epoch else [])


def test_lsd_bank_is_checkpointed_and_resume_continues_exactly(tmp_path):
    config = TrialConfig.from_flat({**FAST, "loss": "lsd", "loss.teacher": "bank"})
    first = Trainer(config)
    first.train_epoch()
    assert first.loss.bank.shape[0] == len(first.data.train.labels) and first.loss.stored.sum() > 0
    first.save(tmp_path / "state.pt")
    resumed = Trainer(config)
    resumed.restore(tmp_path / "state.pt")
    assert torch.equal(resumed.loss.bank, first.loss.bank) and torch.equal(resumed.loss.stored, first.loss.stored)
    straight_terms, resumed_terms = first.train_epoch(), resumed.train_epoch()
    assert resumed_terms == straight_terms and torch.equal(resumed.loss.bank, first.loss.bank)
    assert resumed_terms["lsd"] > 0  # the second epoch distils the first's stored embeddings
