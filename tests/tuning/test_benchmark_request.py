"""``python -m tuneddml.benchmark``: bad input exits 2 with one line before anything starts, and
the spaces it runs (one search per loss over its own ranges; the final re-training of each best
configuration with fresh seeds) hold the protocol."""

from __future__ import annotations

import json
import os

import pytest

from tuneddml.benchmark import main
from tuneddml.errors import ConfigError
from tuneddml.searchers.space import load_space
from tuneddml.tuning.benchmark_request import (
    BENCHMARK_FILE,
    BENCHMARK_FORMAT,
    final_space,
    loss_space,
    prepare_benchmark,
    resolve_losses,
    write_space,
)

TINY = ["dataset=glyphs-tiny", "epochs=1", "steps_per_epoch=2", "batch_size=32"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--losses", "contrastive,nope"], "--losses"),
        (["--losses", "contrastive,contrastive"], "each loss once"),
        (["--losses", "pml:NTXentLoss"], "declares ranges"),
        (["--losses", "contrastive", "--trials", "0"], "--trials"),
        (["--losses", "contrastive", "--folds", "1"], "--folds"),
        (["--losses", "contrastive", "--seeds", "0"], "--seeds"),
        (["--losses", "contrastive", "--metric", "accuracy"], "map_at_r"),
        (["--losses", "contrastive", "--searcher", "hillclimb"], "--searcher"),
        (["--losses", "contrastive", "split=test"], "split"),
        (["--losses", "contrastive", "seed=3"], "--seeds"),
        (["--losses", "contrastive", "epochs=0"], "epochs"),
        (["--losses", "contrastive", "dataset=nope"], "dataset"),
        (["--losses", "contrastive", "--folds", "40"], "num_folds"),
        (["--losses", "contrastive", "--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri"),
        (["--losses", "contrastive", "--storage", "s3://bucket/x"], "--storage"),
        (["--resume", "--name", "never-ran"], "--name"),
        (["--losses", "contrastive", "--preset", "nope"], "--preset"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, capsys, args, needle):
    import ray

    with pytest.raises(SystemExit) as exit_info:
        main([*args, *TINY] if "--resume" not in args else args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not ray.is_initialized()
    assert os.listdir(workdir) == []  # no mlflow.db, no tuneddml_runs


def test_a_resume_may_not_change_the_benchmark(workdir, capsys):
    folder = workdir / "tuneddml_runs" / "b"
    folder.mkdir(parents=True)
    request = prepare_benchmark(losses="contrastive", overrides=dict(a.split("=") for a in TINY), name="b0")
    (folder / BENCHMARK_FILE).write_text(
        json.dumps({"format": BENCHMARK_FORMAT, "settings": request.settings()})
    )
    resumed = prepare_benchmark(resume=True, name="b")
    assert resumed.losses == ["contrastive"] and resumed.resume and resumed.seeds == [1, 2, 3]
    for kwargs in ({"trials": 3}, {"losses": "supcon"}, {"overrides": {"epochs": 2}}):
        with pytest.raises(ConfigError, match="--resume"):
            prepare_benchmark(resume=True, name="b", **kwargs)


def test_loss_sets():
    assert resolve_losses("contrastive, supcon") == ["contrastive", "supcon"]
    every = resolve_losses("seed_methods")
    assert {"contrastive", "triplet", "proxy_anchor", "ccp"} <= set(every)
    assert not any(n.startswith("pml:") for n in every)
    assert len(resolve_losses("reality_check")) >= 8


def test_each_loss_is_searched_over_its_own_ranges_with_the_same_budget(tmp_path):
    request = prepare_benchmark(
        losses="contrastive,npair", trials=5, folds=3, overrides={"dataset": "glyphs-tiny", "batch_size": 32}, storage=str(tmp_path)
    )
    spaces = {loss: load_space(write_space(tmp_path / f"{loss}.yaml", loss_space(request, loss))) for loss in request.losses}
    from tuneddml.losses import LOSSES

    for loss, space in spaces.items():
        assert space.num_samples == 5 and space.searcher == "tpe" and space.scheduler == "fifo"
        assert space.fixed["cross_validate"] is True and space.fixed["num_folds"] == 3
        assert space.fixed["split"] == "val"  # the search never sees the test classes
        declared = {f"loss.{k}" for k in LOSSES.get(loss, "loss").search}
        assert set(space.parameters) == {"loss", *declared}
    assert spaces["npair"].fixed["sampler"] == "npairs" and "sampler" not in spaces["contrastive"].fixed


def test_the_final_space_retrains_each_best_with_fresh_seeds_on_the_test_classes(tmp_path):
    request = prepare_benchmark(
        losses="contrastive,npair,supcon", seeds=2, overrides={"dataset": "glyphs-tiny", "batch_size": 32}, storage=str(tmp_path)
    )
    best = {
        "contrastive": {"loss": "contrastive", "loss.pos_margin": 0.7, "loss.neg_margin": 0.2},
        "npair": {"loss": "npair", "loss.temperature": 0.2},
    }  # supcon's search gave no result: it is left out
    space = load_space(write_space(tmp_path / "final.yaml", final_space(request, best)))
    assert space.searcher == "points" and space.num_samples == 4 and space.fixed["split"] == "test"
    points = space.start_points
    assert len(points) == 4
    assert sorted((p["loss"], p["seed"]) for p in points) == [
        ("contrastive", 1), ("contrastive", 2), ("npair", 1), ("npair", 2)
    ]
    # seeds 1 and 2: not the searches' seed 0, whose fold models the search already chose on
    for p in points:
        assert {k: v for k, v in best[p["loss"]].items()}.items() <= p.items()
        assert p["sampler"] == ("npairs" if p["loss"] == "npair" else "m_per_class")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--space=quick", "--reevaluate", "0"], "--reevaluate"),
        (["--space=quick", "--reevaluate", "2", "--reevaluate-seeds", "0"], "--reevaluate-seeds"),
    ],
)
def test_search_reevaluate_bad_input_exits_2(workdir, capsys, args, needle):
    from tuneddml.search import main as search_main

    with pytest.raises(SystemExit) as exit_info:
        search_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert os.listdir(workdir) == []


def test_reevaluation_ranks_configurations_by_their_mean_over_seeds(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuneddml.tuning.reevaluate import reevaluation_table, top_configs

    search = [  # the search: b had the luckiest draw
        {"status": "finished", "best.map_at_r": 0.50, "config.loss.lambda": 0.2, "config.seed": 0},
        {"status": "finished", "best.map_at_r": 0.60, "config.loss.lambda": 0.8, "config.seed": 0},
        {"status": "failed", "best.map_at_r": None, "config.loss.lambda": 0.5, "config.seed": 0},
        {"status": "finished", "best.map_at_r": 0.40, "config.loss.lambda": 0.4, "config.seed": 0},
    ]
    pq.write_table(pa.Table.from_pylist(search), tmp_path / "search.parquet")
    found = top_configs(tmp_path / "search.parquet", ["loss.lambda"], "map_at_r", "max", 2)
    assert found == [{"loss.lambda": 0.8, "_value": 0.60}, {"loss.lambda": 0.2, "_value": 0.50}]
    again = [
        {"status": "finished", "metric.map_at_r": v, "config.loss.lambda": lam, "config.seed": s}
        for lam, s, v in [(0.8, 1, 0.40), (0.8, 2, 0.44), (0.2, 1, 0.52), (0.2, 2, 0.48)]
    ]
    pq.write_table(pa.Table.from_pylist(again), tmp_path / "again.parquet")
    table = reevaluation_table(tmp_path / "again.parquet", found, ["loss.lambda", "seed"], "map_at_r", "max")
    assert [r["config"] for r in table] == [{"loss.lambda": 0.2}, {"loss.lambda": 0.8}]
    top = table[0]
    assert top["mean"] == pytest.approx(0.50) and top["n"] == 2 and top["first"] == 0.50
    # sd of (0.52, 0.48) = 0.02 * sqrt(2); half-width = t(0.975, 1) * sd / sqrt(2) = 12.706204736 * 0.02
    assert top["sd"] == pytest.approx(0.028284271, rel=1e-6)
    assert top["high"] - top["mean"] == pytest.approx(12.706204736 * 0.02, rel=1e-6)
