"""Everything a search can know before Ray starts is checked before Ray starts: the data, the
sampler against the class sizes, the loss (and its pml parameters' ranges), the metric, the tracking
URI, the storage, duplicate keys, seeds, and ``--resume`` with flags that would change the search.
Each bad input: exit 2, one line under 200 characters naming the field, nothing written, no Ray."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tuneddml.errors import ConfigError
from tuneddml.search import main


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs kept outside the working folder: image folders and space files."""
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for c in "abc":
        (root / "img" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "img" / c / f"{i}.png")
    (root / "img" / "b" / "broken.png").write_bytes(b"not a png")
    (root / "flat").mkdir()
    (root / "no-cache").mkdir()  # a glyphs cache folder without the render: the dataset is not built
    (root / "flat" / "x.png").write_bytes(b"")  # images but no class folders
    spaces = {
        "dup_top": "fixed: {dataset: glyphs-tiny}\nparameters:\n  lr: {uniform: [0.001, 0.01]}\n"
        "parameters:\n  lr: {uniform: [0.1, 0.2]}\n",
        "dup_nested": "fixed: {dataset: glyphs-tiny}\nparameters:\n  lr: {uniform: [0.001, 0.01], uniform: [0.1, 0.2]}\n",
        "pml_margin": "fixed: {dataset: glyphs-tiny, loss: 'pml:TripletMarginLoss'}\n"
        "parameters:\n  loss.margin: {uniform: [-1, 1]}\n",
        "pml_triplets": "fixed: {dataset: glyphs-tiny, loss: 'pml:TripletMarginLoss'}\n"
        "parameters:\n  loss.triplets_per_anchor: {uniform: [1, 5]}\n",
        "pml_unloaded": "fixed: {dataset: glyphs, data_root: '%s', loss: 'pml:TripletMarginLoss'}\n"
        "parameters:\n  loss.triplets_per_anchor: {uniform: [1, 5]}\n" % (root / "no-cache"),
        "term": "metric: loss/nope\nfixed: {dataset: glyphs-tiny}\nparameters:\n  lr: {uniform: [0.001, 0.01]}\n",
        "big_k": "fixed: {dataset: glyphs-tiny, batch_size: 64}\n"
        "parameters:\n  sampler.samples_per_class: {choice: [4, 32]}\n",
    }
    for name, text in spaces.items():
        (root / f"{name}.yaml").write_text(text)
    return root


CASES = {
    "data_root missing": (["dataset=imagefolder", "data_root=/nonexistent/images"], "data_root"),
    "wrong layout": (["dataset=imagefolder", "data_root={root}/flat"], "data_root"),
    "image not decodable": (
        ["dataset=imagefolder", "data_root={root}/img", "batch_size=4", "sampler.samples_per_class=2"],
        "broken.png",
    ),
    "K above the class sizes": (["sampler.samples_per_class=32"], "sampler.samples_per_class"),
    "K above the class sizes, searched": (["--space={root}/big_k.yaml"], "sampler.samples_per_class"),
    "one class per batch": (["batch_size=64", "sampler.samples_per_class=64"], "two classes"),
    "batch above the classes": (["batch_size=4096"], "batch_size"),
    "unknown loss term metric": (["--space={root}/term.yaml"], "loss/pos"),
    "tracking garbage": (["--tracking-uri", "garbage"], "postgresql"),
    "tracking database down or driver missing": (
        ["--tracking-uri", "postgresql://u:secret@127.0.0.1:9/db"],
        "postgresql",
    ),
    "tracking two drivers": (["--tracking-uri", "mysql+a+b://127.0.0.1/db"], "--tracking-uri"),
    "storage not writable": (["--storage", "/proc/tuneddml-runs"], "--storage"),
    "seed negative": (["--seed", "-1"], "--seed"),
    "seed too large": (["--seed", str(2**32)], "2**32"),
    "trial seed negative": (["seed=-1"], "seed"),
    "fold seed too large": (["fold_seed=4294967296"], "fold_seed"),
    "duplicate KEY=VALUE": (["epochs=1", "epochs=2"], "epochs"),
    "duplicate top-level YAML key": (["--space={root}/dup_top.yaml"], "parameters"),
    "duplicate nested YAML key": (["--space={root}/dup_nested.yaml"], "uniform"),
    "pml margin below 0": (["--space={root}/pml_margin.yaml"], "loss.margin"),
    "pml count searched as a float": (["--space={root}/pml_triplets.yaml"], "triplets_per_anchor"),
    "loss built where the data is not cheap to load": (["--space={root}/pml_unloaded.yaml"], "triplets_per_anchor"),
    "backbone weights file missing": (
        ["backbone=timm", "backbone.model=test_resnet", "backbone.weights=/nonexistent/w.safetensors"],
        "backbone.weights",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_anything_starts(workdir, files, capsys, case):
    import ray

    args, needle = CASES[case]
    args = [a.replace("{root}", str(files)) for a in args]
    if not any(a.startswith("--space") for a in args):
        args = ["--space=quick", *args]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and len(err[0]) < 200, err
    assert needle in err[0]
    assert "secret" not in err[0]
    assert not ray.is_initialized()
    assert os.listdir(workdir) == []  # no mlflow.db, no tuneddml_runs, no mlruns


def test_pretrained_weights_offline_and_not_cached_are_refused_before_anything_starts(
    workdir, tmp_path, capsys, monkeypatch
):
    import ray

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--space=quick", "backbone=hf", "backbone.model=facebook/dinov2-small"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: backbone.model") and "facebook/dinov2-small" in line, line
    assert not ray.is_initialized() and os.listdir(workdir) == []


def _recorded_search(storage, tracking_uri, **changes):
    from tuneddml.searchers.space import load_space

    folder = storage / "s"
    folder.mkdir(parents=True)
    meta = {
        "name": "s",
        "space": "quick",
        "space_file": str(load_space("quick").path),
        "searcher": "coordinate_descent",
        "tracking_uri": tracking_uri,
        "metric": "map_at_r",
        "mode": "max",
        "num_samples": 6,
        "scheduler": "fifo",
        "overrides": {},
        "cpus_per_trial": 1.0,
        **changes,
    }
    (folder / "search.json").write_text(json.dumps(meta))
    return meta


def test_resume_refuses_the_flags_that_would_change_the_search(workdir, tmp_path, capsys):
    storage = tmp_path / "runs"
    _recorded_search(storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(SystemExit) as exit_info:
        main(["--space=quick", "--resume", "--name=s", f"--storage={storage}", "--num-samples=10", "--searcher=tpe"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) < 200
    assert "--num-samples 10" in err[0] and "--searcher tpe" in err[0] and "--resume" in err[0]
    assert sorted(os.listdir(storage / "s")) == ["search.json"] and os.listdir(workdir) == []


@pytest.mark.parametrize("flag", ["--seed=3", "--gpus-per-trial=1", "--max-concurrent=2", "--space=margins"])
def test_resume_refuses_a_flag_it_did_not_record_or_another_space(workdir, tmp_path, capsys, flag):
    storage = tmp_path / "runs"
    _recorded_search(storage, f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["--resume", "--name=s", f"--storage={storage}", flag]
    with pytest.raises(SystemExit) as exit_info:
        main(args if flag.startswith("--space") else ["--space=quick", *args])
    assert exit_info.value.code == 2
    assert flag.split("=")[0] in capsys.readouterr().err


def test_resume_accepts_flags_equal_to_the_record(workdir, tmp_path, monkeypatch):
    from tuneddml.tuning import request as request_module

    storage = tmp_path / "runs"
    _recorded_search(storage, f"sqlite:///{tmp_path / 'mlflow.db'}", seed=0)
    # a record without Ray's state: this test is about the flags (test_safe_search checks the state)
    monkeypatch.setattr(request_module, "check_resumable", lambda folder, searcher: None)
    request = request_module.prepare_search(
        space="quick", resume=True, name="s", storage=str(storage), searcher="coordinate_descent",
        num_samples=6, cpus_per_trial=1.0, seed=0,
    )  # fmt: skip
    assert request.num_samples == 6 and request.searcher == "coordinate_descent"
    assert os.listdir(workdir) == [] and not (tmp_path / "mlflow.db").exists()


def test_resume_takes_gpus_concurrency_and_seed_from_the_record(workdir, tmp_path, monkeypatch):
    from tuneddml.tuning import request as request_module

    storage = tmp_path / "runs"
    _recorded_search(storage, f"sqlite:///{tmp_path / 'mlflow.db'}", gpus_per_trial=0.5, max_concurrent=3, seed=7)
    monkeypatch.setattr(request_module, "check_resumable", lambda folder, searcher: None)
    request = request_module.prepare_search(space="quick", resume=True, name="s", storage=str(storage))
    assert (request.gpus_per_trial, request.max_concurrent, request.seed) == (0.5, 3, 7)
    with pytest.raises(ConfigError, match="--seed 8"):  # the record is what a flag is compared with
        request_module.prepare_search(space="quick", resume=True, name="s", storage=str(storage), seed=8)


def test_a_sound_search_passes_and_the_checks_write_nothing(workdir, tmp_path):
    from tuneddml.tuning.request import prepare_search

    request = prepare_search(space="quick", storage=str(tmp_path / "runs"), name="s", seed=2**32 - 1)
    assert request.seed == 2**32 - 1 and request.cpus_per_trial == 1.0 and request.gpus_per_trial == 0.0
    assert os.listdir(workdir) == [] and not (tmp_path / "runs").exists()


def test_yaml_and_json_loaders_refuse_duplicate_keys_at_any_depth():
    from tuneddml.cli import DuplicateKey, load_json, load_yaml

    assert load_yaml("a: 1\nb: {c: [{d: 1}]}\n") == {"a": 1, "b": {"c": [{"d": 1}]}}
    assert load_yaml("base: &b {x: 1}\nother:\n  <<: *b\n  x: 2\n") == {"base": {"x": 1}, "other": {"x": 2}}
    for text, key in [("a: 1\na: 2\n", "a"), ("a:\n  b: 1\n  b: 2\n", "b"), ("l: [{e: 1, e: 2}]\n", "e")]:
        with pytest.raises(DuplicateKey) as info:
            load_yaml(text)
        assert info.value.key == key
    with pytest.raises(DuplicateKey):
        load_json('{"a": {"b": 1, "b": 2}}')


def test_trial_config_file_with_a_duplicate_key_is_refused(tmp_path):
    from tuneddml.config import TrialConfig
    from tuneddml.errors import ConfigError

    path = tmp_path / "trial.json"
    path.write_text('{"epochs": 1, "lr": 0.1, "epochs": 3}')
    with pytest.raises(ConfigError, match="epochs"):
        TrialConfig.from_file(path)


def test_tracking_schemes_are_mlflows():
    """The schemes check_tracking_uri knows are those of MLflow's own tracking-store registry."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    from tuneddml.tracking.mlflow_store import TRACKING_SCHEMES

    assert sorted(TRACKING_SCHEMES) == sorted(_tracking_store_registry._registry)


@pytest.mark.parametrize(
    "uri", ["sqlite:///{tmp}/mlflow.db", "sqlite+pysqlite:///{tmp}/m.db", "{tmp}", "file:{tmp}/mlruns", "databricks"]
)
def test_tracking_uris_mlflow_accepts_pass_and_create_nothing(tmp_path, uri):
    from tuneddml.tracking import check_tracking_uri

    check_tracking_uri(uri.replace("{tmp}", str(tmp_path)))
    assert os.listdir(tmp_path) == []


def test_on_a_cluster_a_data_folder_missing_here_is_left_to_the_nodes():
    from tuneddml.errors import ConfigError
    from tuneddml.searchers.space import load_space
    from tuneddml.tuning.preflight import check_trials

    space = load_space("quick")
    fixed = {**space.fixed, "dataset": "imagefolder", "data_root": "/only/on/the/workers"}
    with pytest.raises(ConfigError, match="data_root"):
        check_trials(space, fixed)
    check_trials(space, fixed, cluster=True)  # the loss is still built; the data is the nodes'
