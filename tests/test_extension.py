"""A new metric and a new loss, each one registration and nothing else, reach every output: the
catalog, a space (seed_methods takes the loss, a space may search the metric), a trial's record,
MLflow, the results table, the best trial's summary, the search CLI's summary and the report.

Both are registered at runtime here (and taken back); the search's pieces run in this process,
with a stand-in for Ray's trial objects: a component registered in the test process would not
exist in Ray's worker processes.
"""

from __future__ import annotations

import io
import json
import time
from types import SimpleNamespace
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
import torch

from tuneddml.evaluation import METRICS, Metric, metric_keys
from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import pair_masks, similarity

pytest.importorskip("ray.tune")

METRIC, LOSS = "dummy_spread", "dummy_pair"


class DummySpread(Metric):
    """Dummy: the mean per-channel standard deviation of the query embeddings."""

    def keys(self, options):
        return [METRIC]

    def __call__(self, ranking):
        return {METRIC: float(ranking.q.std(axis=0).mean())}


class DummyPairLoss(BaseLoss):
    """Dummy: ``pos = mean (1 - s_ip)``, ``neg = mean relu(s_in - margin)``, balanced by lambda."""

    family: ClassVar[Family] = "pair"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "neg")
    balance: ClassVar[Balance | None] = Balance("pos", "neg", "pull positives", "push negatives")

    def __init__(self, *, lam: float = 0.5, margin: float = 0.2) -> None:
        super().__init__()
        self.lam, self.margin = lam, margin

    def forward(self, embeddings, labels):
        s = similarity(embeddings)
        pos, neg = pair_masks(labels)
        terms = {"pos": (1 - s)[pos].mean(), "neg": torch.relu(s - self.margin)[neg].mean()}
        return self.combine(terms)


@pytest.fixture
def registered():
    METRICS.register(METRIC)(DummySpread)
    LOSSES.register(
        LOSS,
        ranges={"lam": "[0, 1]", "margin": "[-1, 1]"},
        search={"lambda": {"uniform": [0.1, 0.9]}, "margin": {"uniform": [0.0, 0.4], "start": 0.2}},
    )(DummyPairLoss)
    yield
    METRICS.remove(METRIC)
    LOSSES.remove(LOSS)


def _trial(trial_id, config):
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=None, error_file=None, checkpoint=None)


def test_a_registered_metric_and_loss_reach_every_output(registered, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tuneddml.catalog import catalog
    from tuneddml.config import TrialConfig
    from tuneddml.report import main as report_main
    from tuneddml.results import best_value, trial_row, trial_status
    from tuneddml.search import print_summary
    from tuneddml.searchers.space import load_space
    from tuneddml.training import Trainer
    from tuneddml.tuning.driver import _summarise
    from tuneddml.tuning.mlflow_callback import MlflowCallback
    from tuneddml.tuning.request import prepare_search

    monkeypatch.chdir(tmp_path)
    # the catalog and the spaces
    listed = catalog()
    assert METRIC in listed["metric"] and METRIC in listed["metric_keys"]
    assert listed["loss"][LOSS]["family"] == "pair" and "margin" in listed["loss"][LOSS]["search"]
    seed_methods = load_space("seed_methods")  # no edit there: the loss is a branch with its ranges
    assert LOSS in seed_methods.parameters["loss"][0].choices
    assert any(LOSS in dict(d.when).get("loss", ()) for d in seed_methods.parameters["loss.margin"])
    space_file = tmp_path / "dummy.yaml"
    space_file.write_text(
        f"metric: {METRIC}\nsearcher: random\nnum_samples: 2\nscheduler: fifo\n"
        "fixed: {dataset: glyphs-tiny, epochs: 1, steps_per_epoch: 2, eval_ap: false}\n"
        f"parameters:\n  loss: {{branches: {{{LOSS}: own, supcon: {{}}}}, start: {LOSS}}}\n"
    )
    request = prepare_search(
        space=str(space_file), storage=str(tmp_path / "runs"), name="ext", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"
    )

    # one trial, as a Ray worker runs it: its records carry the metric and the loss's terms
    flat = {**request.fixed, **request.space.config_of(request.space.start_point())}
    trainer = Trainer(TrialConfig.from_flat(flat))
    records = []
    trainer.run(lambda report, _: records.append({**report.flat(), "diverged": 0, "node_id": "n"}))
    assert METRIC in records[-1] and "loss/pos" in records[-1] and trainer.config.loss == LOSS
    last = {**records[-1], "time_total_s": 1.0, "pid": 1}

    # MLflow, through the driver's callback
    from tuneddml.tracking import SearchRun

    run = SearchRun.start(request.tracking_uri, request.space.name, request.name, tags={}, params={})
    callback = MlflowCallback(run)
    trial = _trial("t1", flat)
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_result(0, [trial], trial, last)
    trial.last_result = last
    callback.on_trial_complete(0, [trial], trial)
    child = MlflowClient(request.tracking_uri).get_run(callback.run_ids["t1"])
    assert {METRIC, "loss/pos"} <= set(child.data.metrics)
    assert child.data.params["loss"] == LOSS and child.data.params["loss.margin"] == "0.2"

    # the results table, the best trial's summary and the search CLI's last lines
    search = {"search": "ext", "space": "dummy", "searcher": "random", "metric": METRIC, "mode": "max"}
    row = trial_row(
        search={**search, "parent_run_id": run.parent_run_id},
        trial_id="t1",
        order=0,
        status=trial_status(last, 1, False),
        config=flat,
        last=last,
        best=best_value([r[METRIC] for r in records], "max"),
        seconds=1.0,
        mlflow_run_id=callback.run_ids["t1"],
    )
    request.folder.mkdir(parents=True)
    run.use_outbox(request.folder)  # the driver's background sender, as a search has it
    summary = _summarise([row], {}, request, run, time.monotonic(), io.StringIO())
    table = pq.read_table(summary.results_file).to_pylist()
    assert table[0][f"metric.{METRIC}"] == pytest.approx(last[METRIC])
    assert table[0][f"best.{METRIC}"] == pytest.approx(last[METRIC]) and table[0]["config.loss"] == LOSS
    assert summary.best_metrics[METRIC] == pytest.approx(last[METRIC])
    assert summary.best_metrics[f"best_{METRIC}"] == pytest.approx(last[METRIC])
    out = io.StringIO()
    print_summary(summary, request.space.parameters, out)
    assert f"{METRIC}=" in out.getvalue() and f"loss={LOSS}" in out.getvalue()
    parent = MlflowClient(request.tracking_uri).get_run(run.parent_run_id)
    assert parent.data.metrics[f"best_{METRIC}"] == pytest.approx(last[METRIC])

    # the report ranks by it
    capture = io.StringIO()
    monkeypatch.setattr("sys.stdout", capture)
    assert report_main([str(summary.results_file), "--sort", METRIC, "--json", "--no-plots"]) == 0
    report = json.loads(capture.getvalue().strip().splitlines()[-1])
    assert report["sort"] == f"best.{METRIC}" and report["metric"] == METRIC
    assert report["top"][0]["loss"] == LOSS and report["top"][0]["value"] == pytest.approx(last[METRIC])
    assert METRIC in metric_keys()
