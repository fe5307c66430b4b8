"""Bad input to ``python -m tuneddml.search``: exit 2, one line, before Ray or MLflow start."""

from __future__ import annotations

import os

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
