"""A cross-validated trial (``cross_validate=true``): one model per class-disjoint fold, their
mean as the trial's value, the test classes scored per fold model and as the concatenated
ensemble, and its checkpoint resumed exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tuneddml.config import TrialConfig
from tuneddml.data.splits import class_folds
from tuneddml.evaluation import evaluate
from tuneddml.training import FoldsTrainer, Trainer, make_trainer, run_trial
from tuneddml.training.folds import concatenated

FAST = {
    "dataset": "glyphs-tiny",
    "cross_validate": True,
    "num_folds": 2,
    "batch_size": 32,
    "threads": 1,
    "steps_per_epoch": 2,
    "epochs": 1,
    "eval_nmi": False,
    "eval_ap": False,
}


def test_the_fold_models_train_on_disjoint_folds_and_the_value_is_their_mean():
    config = TrialConfig.from_flat({**FAST, "num_folds": 3, "fold_seed": 5})
    trainer = make_trainer(config)
    assert isinstance(trainer, FoldsTrainer) and len(trainer.folds) == 3
    result = trainer.run()
    train_classes = np.unique(trainer.folds[0].data.train.labels)
    assert train_classes.size > 0
    # each fold model is scored on its own fold's classes, never on the classes it trained on
    from tuneddml.data import DATASETS

    dataset = DATASETS.build("glyphs-tiny", {}, field="dataset", root=None, image_size=32)
    folds = class_folds(np.unique(dataset.train.labels), 3, 5)
    for i, fold_trainer in enumerate(trainer.folds):
        assert fold_trainer.config.fold == i and fold_trainer.config.split == "val"
        assert len(fold_trainer.data.query) == int(np.isin(dataset.train.labels, folds[i]).sum())
        assert len(fold_trainer.data.train) == int((~np.isin(dataset.train.labels, folds[i])).sum())
    # the value is the mean of the fold models' own values, each of which is their evaluation
    metrics = result.metrics
    for key in ("map_at_r", "recall_at_1", "r_precision"):
        per_fold = [trainer.folds[i].evaluate()[key] for i in range(3)]
        assert [metrics[f"fold{i}/{key}"] for i in range(3)] == pytest.approx(per_fold)
        assert metrics[key] == pytest.approx(sum(per_fold) / 3)
    # the fold models are different models (trained on different classes)
    w = [next(t.model.parameters()).detach() for t in trainer.folds]
    assert not torch.equal(w[0], w[1])


def test_concatenation_of_normalised_embeddings_averages_the_cosines():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    b = F.normalize(torch.randn(6, 3, generator=g), dim=1)
    both = concatenated([a, b])
    assert both.shape == (6, 7)
    assert torch.allclose(both.norm(dim=1), torch.ones(6))
    # cos_concat(x, y) = (cos_a + cos_b) / 2 for two normalised parts, by hand
    expected = (a @ a.T + b @ b.T) / 2
    assert torch.allclose(both @ both.T, expected, atol=1e-6)


def test_a_test_trial_scores_each_fold_model_and_their_ensemble_on_the_test_classes():
    config = TrialConfig.from_flat({**FAST, "split": "test"})
    trainer = FoldsTrainer(config)
    metrics = trainer.run().metrics
    test = trainer.test
    assert test is not None
    # the test queries are the dataset's test classes: none of them was trained on
    queries = [t.embed(test.query) for t in trainer.folds]
    for i, q in enumerate(queries):
        alone = evaluate(q, test.query.labels, seed=config.seed, with_ap=False, with_nmi=False)
        assert metrics[f"fold{i}/map_at_r"] == pytest.approx(alone["map_at_r"])
    assert metrics["map_at_r"] == pytest.approx(np.mean([metrics[f"fold{i}/map_at_r"] for i in range(2)]))
    joint = F.normalize(torch.cat(queries, dim=1), dim=1)
    ensemble = evaluate(joint, test.query.labels, seed=config.seed, with_ap=False, with_nmi=False)
    assert metrics["concat/map_at_r"] == pytest.approx(ensemble["map_at_r"])
    val = [t.evaluate()["map_at_r"] for t in trainer.folds]
    assert metrics["val/map_at_r"] == pytest.approx(np.mean(val))
    assert all(math.isfinite(v) for v in metrics.values())


def test_a_cross_validated_trial_resumes_exactly(tmp_path):
    config = TrialConfig.from_flat({**FAST, "epochs": 2})
    straight = run_trial(config)
    first = FoldsTrainer(config.replace(epochs=1))
    first.run()
    first.save(tmp_path / "trainer.pt")
    resumed = run_trial(config, resume=tmp_path / "trainer.pt")
    assert [r.epoch for r in resumed.history] == [1, 2]
    assert resumed.metrics == pytest.approx(straight.metrics, abs=1e-6)
    assert resumed.history[-1].terms == pytest.approx(straight.history[-1].terms, abs=1e-6)


def test_a_single_model_trainer_refuses_a_fold_checkpoint(tmp_path):
    folds = FoldsTrainer(TrialConfig.from_flat(FAST))
    folds.save(tmp_path / "trainer.pt")
    from tuneddml.training.loop import read_checkpoint

    state = read_checkpoint(tmp_path / "trainer.pt")
    single = Trainer(TrialConfig.from_flat({**FAST, "cross_validate": False}))
    with pytest.raises(TypeError):
        single.load_state_dict(state)
    with pytest.raises(ValueError, match="3-fold"):
        FoldsTrainer(TrialConfig.from_flat({**FAST, "num_folds": 3})).load_state_dict(state)
