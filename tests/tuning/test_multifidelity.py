"""``python -m tuneddml.multifidelity``: rungs parsed and checked (bad input exits 2 with one line,
before anything starts), the space of a later rung built from the rows promoted out of the one
before, the ancestor links, and one tiny real multi-fidelity search end to end (three rungs and the
check on glyphs-tiny): its folder, promotion keeping the top-k, the MLflow links, the report, and a
resume that does nothing new."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.tuning.procs import ROOT, child_env, short_tmp
from tuneddml.errors import ConfigError
from tuneddml.multifidelity import main
from tuneddml.searchers.space import load_space
from tuneddml.tuning.benchmark_request import write_space
from tuneddml.tuning.multifidelity_request import (
    MULTIFIDELITY_FILE,
    MULTIFIDELITY_FORMAT,
    Rung,
    check_space,
    parse_rung,
    prepare_multifidelity,
    resolve_rungs,
    rung_space,
)
from tuneddml.tuning.multifidelity_rows import ancestor_links, point_of, promoted

#: the cheapest real trial: a 4-wide one-stage CNN on 16x16 glyphs, 3 steps of one epoch
TINY = [
    "image_size=16", "backbone=small_cnn", "backbone.width=4", "backbone.depth=1", "epochs=1",
    "steps_per_epoch=3", "batch_size=32", "eval_nmi=false",
]
TINY_SETTINGS = {"image_size": 16, "backbone": "small_cnn", "backbone.width": 4, "backbone.depth": 1, "epochs": 1}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_rung_is_settings_and_a_count():
    assert parse_rung("features=cached:64") == ({"features": "cached"}, 64)
    assert parse_rung("epochs=1,steps_per_epoch=10:32") == ({"epochs": 1, "steps_per_epoch": 10}, 32)
    assert parse_rung("full:8") == ({}, 8)
    assert parse_rung("full") == ({}, None)
    assert parse_rung("epochs=1") == ({"epochs": 1}, None)
    assert parse_rung("dataset=glyphs-tiny:4") == ({"dataset": "glyphs-tiny"}, 4)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "SETTINGS:N"),
        ("epochs1:4", "SETTINGS:N"),
        ("epochs=1:", "SETTINGS:N"),
        ("epochs=1:0", "N >= 1"),
        ("=3:4", "SETTINGS:N"),
        ("epochs=1,epochs=2:4", "each key once"),
        ("split=test:4", "not split"),
        ("seed=3:4", "not seed"),
    ],
)
def test_a_bad_rung_is_refused_naming_the_flag_and_the_form(text, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        parse_rung(text)
    assert info.value.field == "--rung"


def test_the_default_rungs_are_cheap_then_full():
    assert resolve_rungs(None, 16) == [Rung({"features": "cached"}, 64), Rung({}, 4)]
    assert resolve_rungs([], 6) == [Rung({"features": "cached"}, 24), Rung({}, 2)]
    assert resolve_rungs(None, 1) == [Rung({"features": "cached"}, 4), Rung({}, 2)]
    # N left off: rung 0 runs the space's budget, a later rung a quarter of the one before
    assert resolve_rungs(["epochs=1", "full"], 16) == [Rung({"epochs": 1}, 16), Rung({}, 4)]
    assert resolve_rungs(["epochs=1:8", "epochs=2", "full"], 99) == [
        Rung({"epochs": 1}, 8), Rung({"epochs": 2}, 2), Rung({}, 1)
    ]


@pytest.mark.parametrize(
    ("texts", "needle"),
    [
        (["epochs=1:4"], "at least two rungs"),
        (["epochs=1:4", "epochs=2:2"], "last rung that is full"),
        (["epochs=1:4", "full:4"], "strictly decreasing"),
        (["epochs=1:4", "epochs=2:8", "full:1"], "strictly decreasing"),
        (["full:4", "full:2"], "full only as the last rung"),
        (["loss.lambda=0.5:4", "full:2"], "does not search"),
        (["epochs=1:1", "full"], "strictly decreasing"),
    ],
)
def test_rungs_that_make_no_bracket_are_refused(texts, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        resolve_rungs(texts, 8, {"loss", "loss.lambda"})
    assert info.value.field == "--rung"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--space", "quick", "--rung", "featurs=cached:4", "--rung", "full:2"], "--rung: bad value 'featurs=cached:4'"),
        (["--space", "quick", "--rung", "epochs=0:4", "--rung", "full:2"], "--rung: bad value 'epochs=0:4'"),
        (["--space", "quick", "--rung", "epochs=1:4", "--rung", "full:4"], "strictly decreasing"),
        (["--space", "quick", "--rung", "epochs=1:4", "--rung", "epochs=2:2"], "last rung that is full"),
        (["--space", "quick", "--rung", "epochs1:4", "--rung", "full:2"], "SETTINGS:N"),
        (["--space", "quick", "--rung", "epochs=1:4", "--rung", "full:2", "epochs=0"], "epochs"),
        (["--space", "quick", "--rung", "epochs=1:4", "--rung", "full:2", "loss=supcon"], "does not search"),
        (["--space", "nope", "--rung", "epochs=1:4", "--rung", "full:2"], "--space"),
        (["--rung", "epochs=1:4", "--rung", "full:2"], "--space"),
        (["--space", "quick", "--storage", "s3://bucket/x"], "--storage"),
        (["--space", "quick", "--rung", "epochs=1:4", "--rung", "full:2", "--cpus-per-trial", "0"], "--cpus-per-trial"),
        (["--space", "quick", "--rung", "epochs=1:4", "--rung", "full:2", "--seed", "-1"], "--seed"),
        (["--resume", "--name", "never-ran"], "--name"),
        (["--resume", "--name", "x", "--space", "quick"], "no --space with --resume"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, capsys, args, needle):
    import ray

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "dataset=glyphs-tiny"] if "--resume" not in args else args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert "tuneddml-multifidelity-" not in err[0]  # the scratch folder's files are never named
    assert not ray.is_initialized()
    assert os.listdir(workdir) == []  # no mlflow.db, no tuneddml_runs


def test_validating_it_imports_neither_ray_nor_mlflow(tmp_path):
    code = (
        "import sys; from tuneddml.tuning.multifidelity_request import prepare_multifidelity; "
        "prepare_multifidelity(space='quick', rungs=['epochs=1:4', 'full:2'], check=True, storage=sys.argv[1], name='m'); "
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]" and os.listdir(tmp_path) == []


def _rows():
    """A results table of rung 0: three configurations (one run twice), a failed and a NaN trial."""
    def row(trial, loss, lam, value, status="finished", temperature=None):  # type: ignore[no-untyped-def]
        return {
            "trial_id": trial, "status": status, "mlflow_run_id": f"run-{trial}", "config.loss": loss,
            "config.loss.lambda": lam, "config.loss.temperature": temperature, "config.epochs": 1,
            "best.map_at_r": value,
        }

    return [
        row("a", "supcon", 0.5, 0.30, temperature=0.1),
        row("b", "contrastive", 0.7, 0.50),
        row("c", "contrastive", 0.3, 0.40),
        row("d", "contrastive", 0.7, 0.45),  # b's configuration again, worse
        row("e", "supcon", 0.9, 0.90, status="failed"),
        row("f", "supcon", 0.1, math.nan),
    ]


def test_promotion_keeps_the_best_k_configurations_once_each():
    keys = ["loss", "loss.lambda", "loss.temperature"]
    top = promoted(_rows(), keys, "map_at_r", "max", 2)
    assert [r["trial_id"] for r in top] == ["b", "c"]
    assert [r["trial_id"] for r in promoted(_rows(), keys, "map_at_r", "max", None)] == ["b", "c", "a"]
    assert [r["trial_id"] for r in promoted(_rows(), keys, "map_at_r", "min", 1)] == ["a"]
    # an inactive conditional key is left out of the start point; a fixed setting is not a key
    assert point_of(top[0], keys) == {"loss": "contrastive", "loss.lambda": 0.7}
    assert point_of(_rows()[0], keys) == {"loss": "supcon", "loss.lambda": 0.5, "loss.temperature": 0.1}


def test_each_promoted_trial_is_linked_to_the_best_trial_of_its_configuration_a_rung_before():
    keys = ["loss", "loss.lambda"]
    later = [
        {"trial_id": "x", "mlflow_run_id": "run-x", "config.loss": "contrastive", "config.loss.lambda": 0.7, "config.epochs": 2},
        {"trial_id": "y", "mlflow_run_id": "run-y", "config.loss": "contrastive", "config.loss.lambda": 0.3, "config.epochs": 2},
        {"trial_id": "z", "mlflow_run_id": "", "config.loss": "supcon", "config.loss.lambda": 0.5, "config.epochs": 2},
    ]
    links = ancestor_links(_rows(), later, keys, "map_at_r", "max", 1, "epochs=2")
    assert links == [
        {"run_id": "run-x", "trial": "x", "ancestor_run_id": "run-b", "ancestor_trial": "b", "rung": 1, "fidelity": "epochs=2"},
        {"run_id": "run-y", "trial": "y", "ancestor_run_id": "run-c", "ancestor_trial": "c", "rung": 1, "fidelity": "epochs=2"},
        # z's run was not in MLflow when its table was written: found later by its trial id
        {"run_id": None, "trial": "z", "ancestor_run_id": "run-a", "ancestor_trial": "a", "rung": 1, "fidelity": "epochs=2"},
    ]


def test_a_later_rung_is_a_points_search_of_the_promoted_configurations(workdir):
    request = prepare_multifidelity(
        space="quick", rungs=["steps_per_epoch=1:4", "steps_per_epoch=2:2", "full:1"], overrides=TINY_SETTINGS, name="m"
    )
    assert os.listdir(workdir) == []  # checked, nothing written
    keys = ["loss", "loss.lambda"]
    points = [point_of(r, keys) for r in promoted(_rows(), keys, request.metric, request.mode, request.rungs[1].n)]
    first = rung_space(request, 0)
    assert first["searcher"] == "coordinate_descent" and first["num_samples"] == 4
    assert first["fixed"] == {"dataset": "glyphs-tiny", "split": "val", **TINY_SETTINGS, "steps_per_epoch": 1}
    space = rung_space(request, 1, points)
    assert space["searcher"] == "points" and space["num_samples"] == 2 and space["scheduler"] == "fifo"
    assert space["start_points"] == [{"loss": "contrastive", "loss.lambda": 0.7}, {"loss": "contrastive", "loss.lambda": 0.3}]
    assert space["fixed"]["steps_per_epoch"] == 2 and space["fixed"]["epochs"] == 1
    assert "steps_per_epoch" not in rung_space(request, 2, points[:1])["fixed"]  # full: the space's own
    check = check_space(request, points)
    assert check["scheduler"] == "fifo" and check["num_samples"] == 2 and "steps_per_epoch" not in check["fixed"]
    loaded = load_space(write_space(workdir / "rung1.yaml", space))  # a space file search reads
    assert [dict(p) for p in loaded.start_points] == space["start_points"]


def test_a_resume_may_not_change_it(workdir):
    request = prepare_multifidelity(space="quick", rungs=["epochs=1:4", "full:2"], overrides={"epochs": 2}, name="m0")
    folder = workdir / "tuneddml_runs" / "m"
    folder.mkdir(parents=True)
    (folder / MULTIFIDELITY_FILE).write_text(json.dumps({"format": MULTIFIDELITY_FORMAT, "settings": request.settings()}))
    resumed = prepare_multifidelity(space=None, resume=True, name="m")
    assert resumed.resume and resumed.rungs == request.rungs and resumed.base == request.base
    for kwargs in ({"rungs": ["epochs=1:3", "full:1"]}, {"check": True}, {"overrides": {"epochs": 3}}, {"seed": 2}):
        with pytest.raises(ConfigError, match="--resume"):
            prepare_multifidelity(space=None, resume=True, name="m", **kwargs)


def test_links_mlflow_could_not_take_are_kept_and_applied_again(capsys):
    from tuneddml.tuning.multifidelity import _apply_links

    class Down:
        def link(self, links):  # type: ignore[no-untyped-def]
            raise ConnectionError("store unreachable")

    class Up:
        def __init__(self) -> None:
            self.applied: list = []
            self.missing = 1  # a run the store does not have yet

        def link(self, links):  # type: ignore[no-untyped-def]
            self.applied.extend(links)
            return self.missing

    state = {"links": {"rung1": {"links": [{"run_id": "r", "ancestor_run_id": "a"}], "applied": False}}}
    _apply_links(Down(), state, "rung1", sys.stdout)
    assert state["links"]["rung1"]["applied"] is False
    assert "not linked to their ancestors" in capsys.readouterr().out
    up = Up()
    _apply_links(up, state, "rung1", sys.stdout)
    assert state["links"]["rung1"]["applied"] is False and "1 trial runs of rung1" in capsys.readouterr().out
    up.missing = 0
    _apply_links(up, state, "rung1", sys.stdout)
    assert state["links"]["rung1"]["applied"] is True and up.applied[-1] == {"run_id": "r", "ancestor_run_id": "a"}


def test_the_reports_correlations_and_regrets_become_metrics():
    from tuneddml.tuning.multifidelity import report_metrics

    report = {"pairs": [{"spearman": 0.5, "n": 3}, {"spearman": None}], "check": {"regret": 0.01, "top_k": 2}, "x": math.nan}
    assert report_metrics(report) == {"pairs.0.spearman": 0.5, "check.regret": 0.01}


def _run(args, cwd, env):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "tuneddml.multifidelity", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=400,
    )


@pytest.mark.slow
@pytest.mark.ray
def test_a_tiny_multi_fidelity_search_end_to_end(tmp_path):
    from mlflow.tracking import MlflowClient

    from tuneddml.results.fidelity import config_key
    from tuneddml.tuning.multifidelity_rows import read_rows

    ray_tmp = short_tmp("mf")
    env = child_env(ray_tmp) | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "runs"
    common = ["--storage", str(storage), "--name", "m", "--json"]
    try:
        proc = _run(
            ["--space", "quick", "--rung", "steps_per_epoch=1:4", "--rung", "steps_per_epoch=2:2", "--rung", "full:1",
             "--check", "--max-concurrent", "2", "--tracking-uri", uri, *common, *TINY],
            tmp_path, env,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        folder = storage / "m"
        for name in ("multifidelity.json", "fidelity.json", "fidelity.md", "fidelity.png", "spaces/rung0.yaml",
                     "spaces/rung1.yaml", "spaces/rung2.yaml", "spaces/check.yaml"):
            assert (folder / name).is_file(), name
        state = json.loads((folder / MULTIFIDELITY_FILE).read_text())
        assert [r["status"] for r in state["rungs"]] == ["done"] * 3 and state["check"]["status"] == "done"
        assert [r["configs"] for r in state["rungs"]] == [4, 2, 1] and state["check"]["configs"] == 4

        # each rung ran exactly the top-k configurations of the rung before
        keys = ["loss", "loss.lambda"]
        tables = [read_rows(folder / "searches" / f"rung{i}") for i in range(3)]
        assert len(tables[0]) == 4 and all(r["config.steps_per_epoch"] == 1 for r in tables[0])
        for i, k in ((1, 2), (2, 1)):
            top = {config_key(r, keys) for r in promoted(tables[i - 1], keys, "map_at_r", "max", k)}
            assert {config_key(r, keys) for r in tables[i]} == top and len(tables[i]) == k
        assert {r["config.steps_per_epoch"] for r in tables[2]} == {3}  # the full fidelity: the overrides'
        check = read_rows(folder / "searches" / "check")
        assert {config_key(r, keys) for r in check} == {config_key(r, keys) for r in tables[0]}
        assert "rung2 (full)" in proc.stderr and "check (not counted)" in proc.stderr

        # MLflow: one parent, each rung's search under it, each promoted run naming its ancestor
        client = MlflowClient(uri)
        (experiment,) = [e for e in client.search_experiments() if e.name == "m"]
        runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], max_results=500)}
        parent = runs[summary["parent_run_id"]]
        assert parent.info.status == "FINISHED" and parent.data.tags["tuneddml.multifidelity"] == "m"
        searches = {r.info.run_name: r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert set(searches) == {"rung0", "rung1", "rung2", "check"}
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"fidelity.json", "fidelity.md", "fidelity.png"}
        assert any("spearman" in k for k in parent.data.metrics)
        by_run = {r["mlflow_run_id"]: r for t in tables for r in t}
        for i in (1, 2):
            for row in tables[i]:
                tags = runs[row["mlflow_run_id"]].data.tags
                ancestor = by_run[tags["tuneddml.ancestor_run_id"]]
                assert ancestor in tables[i - 1] and config_key(ancestor, keys) == config_key(row, keys)
                assert tags["tuneddml.ancestor_trial"] == ancestor["trial_id"] and tags["tuneddml.rung"] == str(i)
                assert tags["tuneddml.fidelity"] == ("steps_per_epoch=2" if i == 1 else "full")
                assert runs[ancestor["mlflow_run_id"]].data.tags["tuneddml.promoted_to"] == row["mlflow_run_id"]
        count = len(runs)

        # a resume after the end does nothing new
        written = {p: p.stat().st_mtime_ns for p in folder.rglob("results.parquet")}
        again = _run(["--resume", *common], tmp_path, env)
        assert again.returncode == 0, again.stderr[-4000:]
        assert again.stderr.count("done before, not run again") == 3
        assert {p: p.stat().st_mtime_ns for p in folder.rglob("results.parquet")} == written
        assert len(client.search_runs([experiment.experiment_id], max_results=500)) == count

        # the last rung's driver died mid-rung (its search started, no outcome recorded): resumed
        # as search --resume resumes it, its ended trial not trained again, the report written again
        state["rungs"][2] = None
        state.pop("report")
        (folder / MULTIFIDELITY_FILE).write_text(json.dumps(state))
        (folder / "fidelity.md").unlink()
        again = _run(["--resume", *common], tmp_path, env)
        assert again.returncode == 0, again.stderr[-4000:]
        assert again.stderr.count("done before, not run again") == 2 and "resuming search rung2" in again.stderr
        assert json.loads((folder / MULTIFIDELITY_FILE).read_text())["rungs"][2]["status"] == "done"
        assert (folder / "fidelity.md").is_file()
        assert len(client.search_runs([experiment.experiment_id], max_results=500)) == count  # no trial run twice
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_link_whose_run_was_not_in_mlflow_is_found_by_its_trial_id_later(tmp_path):
    from tuneddml.tracking.mlflow_store import client
    from tuneddml.tracking.multifidelity_run import MultiFidelityRun

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = MultiFidelityRun.start(uri, "e", "m", {"rungs": "[]"})
    mlflow = client(uri)

    def child(parent, **tags):  # type: ignore[no-untyped-def]
        return mlflow.create_run(run.experiment_id, tags={"mlflow.parentRunId": parent, **tags}).info.run_id

    search0, search1 = child(run.parent_run_id), child(run.parent_run_id)
    ancestor = child(search0, **{"tuneddml.trial_id": "t0"})
    links = [{"run_id": None, "trial": "t1", "ancestor_run_id": ancestor, "ancestor_trial": "t0", "rung": 1,
              "fidelity": "epochs=2", "search_run_id": search1, "ancestor_search_run_id": search0}]
    assert run.link(links) == 1 and links[0]["run_id"] is None  # not sent yet: left undone
    late = child(search1, **{"tuneddml.trial_id": "t1"})  # python -m tuneddml.tracking.sync sent it
    assert run.link(links) == 0 and links[0]["run_id"] == late
    tags = mlflow.get_run(late).data.tags
    assert tags["tuneddml.ancestor_run_id"] == ancestor and tags["tuneddml.rung"] == "1"
    assert tags["tuneddml.fidelity"] == "epochs=2" and tags["tuneddml.ancestor_trial"] == "t0"
    assert mlflow.get_run(ancestor).data.tags["tuneddml.promoted_to"] == late


def test_no_rung_with_a_result_ends_the_parent_run_failed_with_no_report(workdir, capsys):
    from tuneddml.tuning.multifidelity import _finish

    class Run:
        parent_run_id = "p"
        status = None

        def finish(self, *, files, metrics, status):  # type: ignore[no-untyped-def]
            Run.status = status

    request = prepare_multifidelity(space="quick", rungs=["epochs=1:4", "full:2"], name="m")
    state = {"rungs": [{"status": "no_result", "fidelity": "epochs=1", "configs": 0}, None], "check": None}
    summary = _finish(request, state, Run(), 0.0, sys.stdout)
    assert Run.status == "FAILED" and summary.best_config is None and summary.files == {}
    assert "no rung gave a result" in capsys.readouterr().out
