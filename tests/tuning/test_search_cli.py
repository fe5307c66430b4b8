"""Bad input to ``python -m tuneddml.search``: exit 2, one line, before Ray or MLflow start."""

from __future__ import annotations

import io
import os
import re

import pytest

from tuneddml.search import main


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--space=nope"], "quick"),
        (["--space=quick", "--searcher", "hillclimb"], "coordinate_descent"),
        (["--space=quick", "--scheduler", "hyperband"], "asha"),
        (["--space=quick", "--num-samples", "0"], "--num-samples"),
        (["--space=quick", "--cpus-per-trial", "0"], "--cpus-per-trial"),
        (["--space=quick", "--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri"),
        (["--space=quick", "--address", "127.0.0.1:9"], "--address"),
        (["--space=quick", "--resume", "--name", "never-ran"], "--name"),
        (["--space=quick", "loss.lambda=2"], "lambda"),
        (["--space=quick", "epochs=0"], "epochs"),
        (["--space=quick", "nonsense"], "KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, capsys, args, needle):
    import ray

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not ray.is_initialized()
    assert os.listdir(workdir) == []  # no mlflow.db, no tuneddml_runs


def test_invalid_space_file_names_the_file_and_key(workdir, capsys):
    bad = workdir / "bad.yaml"
    bad.write_text("metric: map_at_r\nparameters:\n  loss.lambda: {uniform: [0.9, 0.1]}\n")
    with pytest.raises(SystemExit) as exit_info:
        main([f"--space={bad}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "loss.lambda" in err
    assert sorted(os.listdir(workdir)) == ["bad.yaml"]


def test_cluster_storage_uri_goes_to_ray_and_records_stay_local(workdir):
    from tuneddml.tuning.request import prepare_search

    request = prepare_search(space="quick", storage="s3://bucket/tuneddml/", name="s")
    assert request.ray_storage == "s3://bucket/tuneddml"
    assert request.folder == workdir / "tuneddml_runs" / "s"
    assert os.listdir(workdir) == []  # prepare_search starts and writes nothing


def test_unknown_storage_scheme(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--space=quick", "--storage", "ftp://host/x"])
    assert exit_info.value.code == 2 and "--storage" in capsys.readouterr().err


def test_validating_a_request_imports_neither_ray_nor_mlflow(tmp_path):
    """prepare_search lives in a module without Ray, and checks the tracking URI without MLflow."""
    import subprocess
    import sys

    from tests.tuning.procs import ROOT, child_env

    code = (
        "import sys; from tuneddml.tuning.request import prepare_search; "
        "prepare_search(space='quick', storage=sys.argv[1], name='s'); "
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "runs")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# quick's data, with a searched choice one of its 3 grid points cannot run: the 'mlp' backbone
# refuses image data when the trial builds its model (after every up-front check: they build none)
ONE_FAILS = """description: glyphs-tiny, three backbones, of which 'mlp' fails
metric: map_at_r
mode: max
searcher: grid
num_samples: 3
scheduler: fifo
fixed: {dataset: glyphs-tiny, split: val, epochs: 2}
parameters:
  backbone: {choice: [small_cnn, mlp]}
  backbone.width: {choice: [8, 16], when: {backbone: small_cnn}}
"""


@pytest.mark.slow
@pytest.mark.ray
def test_a_search_with_a_failing_trial_says_why_in_a_few_lines(tmp_path):
    """The whole console (stdout and stderr) of a real 3-trial search, one of whose trials fails:
    under 40 lines, the failed trial's label and reason on one line, no Ray traceback, each trial
    saying what it was and how it ended, the steps after the trials named as they begin."""
    import shutil
    import subprocess

    from tests.tuning.procs import child_env, search_command, short_tmp

    space = tmp_path / "one_fails.yaml"
    space.write_text(ONE_FAILS)
    ray_tmp = short_tmp("rc")
    try:
        proc = subprocess.run(
            search_command(f"--space={space}", "--num-samples", "3", "epochs=2", "steps_per_epoch=3"),
            cwd=tmp_path,
            env=child_env(ray_tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=420,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    console = proc.stdout
    lines = console.splitlines()
    assert proc.returncode == 0, console[-3000:]
    assert len(lines) < 40, console
    assert "Traceback" not in console and "RayTaskError" not in console, console
    failed = [line for line in lines if " failed: " in line]
    assert len(failed) == 1 and re.fullmatch(
        r"t0[1-3] backbone=mlp failed: ConfigError: backbone: bad value 'mlp' "
        r"\(expected 'mlp' for vector data; an image backbone such as small_cnn\)",
        failed[0],
    ), console
    finished = [line for line in lines if re.fullmatch(r"t0[1-3] backbone=small_cnn width=(8|16) finished after 2 epochs: map_at_r=0\.\d{4}", line)]
    assert len(finished) == 2, console
    best = r"best map_at_r=0\.\d{4} \(t0[1-3] backbone=small_cnn width=(8|16)\)"
    assert re.search(r"trials 3/3 done \(1 failed\), 0 running \| " + best, console), console
    steps = ["writing the results table ...", "drawing the report ...", "sending the search's end to MLflow ..."]
    assert [line for line in lines if line in steps] == steps, console


def test_verbose_gives_ray_its_own_output_back(tmp_path, monkeypatch):
    """``--verbose``: Ray's logs and the trials' output reach the driver; by default neither."""
    import ray

    import tuneddml.tuning.driver as driver
    from tuneddml.tuning.request import prepare_search

    class Started(Exception):
        pass

    seen: list[dict] = []

    def init(**kwargs):
        seen.append(kwargs)
        raise Started

    def no_parent_run(request):
        raise RuntimeError("not needed here")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(driver, "_start_parent_run", no_parent_run)
    monkeypatch.chdir(tmp_path)
    for verbose in (False, True):
        request = prepare_search(space="quick", storage=str(tmp_path / "runs"), name=f"v{verbose}")
        with pytest.raises(Started):
            driver.run_search(request, stream=io.StringIO(), verbose=verbose)
    quiet, loud = seen
    assert (quiet["log_to_driver"], quiet["logging_level"]) == (False, "ERROR")
    assert (loud["log_to_driver"], loud["logging_level"]) == (True, "INFO")


def test_the_closing_line_opens_the_experiment_in_mlflows_model_training_view():
    from tuneddml.search import ui_hint

    served = ui_hint("http://127.0.0.1:5000/", "7")
    assert served == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    local = ui_hint("sqlite:////tmp/x/mlflow.db", "1")
    assert local.startswith("mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db")
    assert local.endswith("http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning")
