"""The trial function end to end on glyphs-tiny (real data, real model, real faiss evaluation)."""

from __future__ import annotations

import math

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
