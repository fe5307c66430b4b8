"""``python -m tuneddml.report``: tables, figures, MLflow artifacts and bad input, on synthetic results."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tuneddml.report import load_results, main, make_report, parent_runs

METRIC = "map_at_r"


def _map(loss: str, lam: float | None, temperature: float | None, margin: float | None) -> float:
    """A known landscape: contrastive peaks at lambda=0.3, supcon at lambda=0.6 and temperature=0.1."""
    if loss == "contrastive":
        return 0.50 - (lam - 0.3) ** 2 - 0.2 * abs((margin or 0.3) - 0.3)
    if loss == "supcon":
        return 0.55 - (lam - 0.6) ** 2 - 0.05 * abs(math.log10(temperature / 0.1))
    return 0.30 - 0.1 * abs((margin or 0.2) - 0.2)


def trial_rows(search: str, searcher: str, n: int, seed: int, *, parent: str = "parent-0") -> list[dict]:
    """Rows as the search driver writes them; trial 2 fails, trial 4 diverges after an epoch."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        loss = ("contrastive", "supcon", "triplet")[i % 3]
        lam = round(rng.uniform(0.05, 0.95), 3) if loss != "triplet" else None
        temperature = round(10 ** rng.uniform(-2, 0), 4) if loss == "supcon" else None
        margin = round(rng.uniform(0.1, 0.5), 3) if loss != "supcon" else None
        status = "failed" if i == 2 else "diverged" if i == 4 else "finished"
        value = None if status == "failed" else _map(loss, lam, temperature, margin)
        rows.append(
            {
                "search": search,
                "space": "contrastive_balance",
                "searcher": searcher,
                "metric": METRIC,
                "mode": "max",
                "trial_id": f"{searcher[:3]}_{i:05d}",
                "order": i,
                "status": status,
                "epochs": 0 if status == "failed" else 3,
                "seconds": 10.0 + i,
                "mlflow_run_id": f"run-{i}",
                "parent_run_id": parent,
                "config.loss": loss,
                "config.loss.lambda": lam,
                "config.loss.temperature": temperature,
                "config.loss.neg_margin": margin,
                "config.batch_size": (32, 64)[i % 2],
                "config.epochs": 3,
                f"metric.{METRIC}": value,
                "metric.recall_at_1": None if value is None else value + 0.2,
                f"best.{METRIC}": value,
            }
        )
    return rows


def write_search(storage: Path, search: str, searcher: str, n: int, seed: int, **meta: str) -> Path:
    folder = storage / search
    folder.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(trial_rows(search, searcher, n, seed, **meta)), folder / "results.parquet"
    )
    return folder


def best_of(rows: list[dict]) -> dict:
    return max((r for r in rows if r[f"best.{METRIC}"] is not None), key=lambda r: r[f"best.{METRIC}"])


def test_prints_best_trials_in_order_and_best_per_loss(tmp_path, capsys):
    write_search(tmp_path, "cb-tpe", "tpe", 12, seed=1)
    rows = trial_rows("cb-tpe", "tpe", 12, seed=1)
    assert main(["--storage", str(tmp_path), "--top", "3", "--no-plots"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    expected = sorted(
        (r for r in rows if r[f"best.{METRIC}"] is not None), key=lambda r: -r[f"best.{METRIC}"]
    )
    for rank, (line, row) in enumerate(zip(lines[header + 1 : header + 4], expected), start=1):
        cells = line.split()
        assert cells[:3] == [str(rank), row["trial_id"], row["config.loss"]]
        assert float(cells[4]) == pytest.approx(row[f"best.{METRIC}"], rel=1e-3)
    assert "best 3 of 12 trials" in out and "12 trials (1 diverged, 1 failed, 10 finished)" in out
    # batch_size and the loss parameters vary; epochs does not and is not shown
    assert "loss.lambda=" in out and "batch_size=" in out and "epochs=" not in out
    per_loss = lines[next(i for i, line in enumerate(lines) if line.startswith("best trial per loss")) + 2 :]
    best_loss = {line.split()[0]: line.split()[2] for line in per_loss if line.strip()}
    for loss in ("contrastive", "supcon", "triplet"):
        assert best_loss[loss] == best_of([r for r in rows if r["config.loss"] == loss])["trial_id"]


def test_json_compares_two_searchers_and_sort_by_other_metric(tmp_path, capsys):
    a = write_search(tmp_path, "cb-tpe", "tpe", 9, seed=1)
    b = write_search(tmp_path, "cb-cd", "coordinate_descent", 7, seed=2)
    assert main([str(a), str(b / "results.parquet"), "--json", "--no-plots", "--sort", "recall_at_1"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["sort"] == "metric.recall_at_1" and summary["trials"] == 16
    assert {s["search"]: s["searcher"] for s in summary["searches"]} == {
        "cb-tpe": "tpe",
        "cb-cd": "coordinate_descent",
    }
    rows = trial_rows("cb-tpe", "tpe", 9, seed=1) + trial_rows("cb-cd", "coordinate_descent", 7, seed=2)
    assert summary["top"][0]["trial_id"] == best_of(rows)["trial_id"]
    values = [t["value"] for t in summary["top"]]
    assert values == sorted(values, reverse=True)
    header = next(line for line in captured.err.splitlines() if line.startswith("rank"))
    assert header.split() == ["rank", "trial", "loss", "status", "search", "recall_at_1", "params"]


def test_make_report_writes_readable_pngs(tmp_path):
    tables = [
        pa.Table.from_pylist(trial_rows("cb-tpe", "tpe", 12, seed=1)),
        pa.Table.from_pylist(trial_rows("cb-random", "random", 10, seed=3)),
    ]
    paths = make_report(tables, tmp_path / "report")
    assert [p.name for p in paths] == [
        "balance_landscape.png",
        "best_so_far.png",
        "param_importance.png",
        "parallel_coordinates.png",
    ]
    for path in paths:
        assert path.stat().st_size > 15_000
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 500 and image.height > 300
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colors is not None and len(colors) > 50  # not a blank canvas


def test_figures_that_do_not_apply_are_skipped(tmp_path):
    rows = [r for r in trial_rows("t", "random", 6, seed=4) if r["config.loss"] == "triplet"]
    for row in rows:
        row["config.loss.neg_margin"], row["config.batch_size"] = 0.2, 32  # nothing varies, no lambda
    paths = make_report([pa.Table.from_pylist(rows)], tmp_path)
    assert [p.name for p in paths] == ["best_so_far.png"]


def test_best_so_far_ignores_failed_trials(tmp_path):
    import numpy as np

    from tuneddml.plots import _running_best

    values = np.array([0.2, np.nan, 0.1, 0.4, np.nan, 0.3])
    assert _running_best(values, "max").tolist() == [0.2, 0.2, 0.2, 0.4, 0.4, 0.4]
    assert _running_best(values, "min").tolist() == [0.2, 0.2, 0.1, 0.1, 0.1, 0.1]


def test_cli_writes_figures_into_search_folder(tmp_path, capsys):
    folder = write_search(tmp_path, "cb-tpe", "tpe", 6, seed=1)
    assert main(["--storage", str(tmp_path), "--name", "cb-tpe", "--top", "2"]) == 0
    out = capsys.readouterr().out
    listed = [Path(line.strip()) for line in out.splitlines() if line.strip().endswith(".png")]
    assert {p.name for p in listed} == {
        "balance_landscape.png",
        "best_so_far.png",
        "parallel_coordinates.png",
    }
    assert all(p.parent == folder / "report" and p.is_file() for p in listed)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["{tmp}/nowhere"], "RESULTS"),
        (["--storage", "{tmp}"], "--storage"),
        (["--storage", "{tmp}", "--name", "nope"], "--name"),
        (["{tmp}/broken.parquet"], "readable Parquet"),
        (["{tmp}/ok", "--sort", "nonsense"], "--sort"),
        (["{tmp}/ok", "--top", "0"], "--top"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    write_search(tmp_path, "ok", "tpe", 3, seed=1)
    if argv == ["--storage", "{tmp}"]:
        tmp_path = tmp_path / "ok" / "empty"
        tmp_path.mkdir()
    with pytest.raises(SystemExit) as exc:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("error: ")


@pytest.mark.slow
def test_logs_figures_to_parent_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("contrastive_balance")).info.run_id
    folder = write_search(tmp_path / "runs", "cb-tpe", "tpe", 6, seed=1, parent=parent)
    (folder / "search.json").write_text(
        json.dumps(
            {"name": "cb-tpe", "space": "contrastive_balance", "tracking_uri": uri, "parent_run_id": parent}
        )
    )
    assert main([str(folder), "--json"]) == 0  # read-only without --log
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["logged_to"] == []
    assert client.list_artifacts(parent) == []
    assert main([str(folder), "--json", "--log"]) == 0  # tracking URI and run from search.json
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["logged_to"] == [parent]
    logged = sorted(Path(a.path).name for a in client.list_artifacts(parent, "report"))
    assert logged == ["balance_landscape.png", "best_so_far.png", "parallel_coordinates.png"]
    # an explicit --tracking-uri that does not hold the run is bad input
    with pytest.raises(SystemExit) as exc:
        main([str(folder), "--log", "--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}"])
    assert exc.value.code == 2 and parent in capsys.readouterr().err


def test_parent_runs_from_table_with_explicit_uri():
    results = load_results([pa.Table.from_pylist(trial_rows("s", "tpe", 3, seed=1, parent="abc"))])
    assert parent_runs(results, None) == []
    assert parent_runs(results, "http://127.0.0.1:5000") == [("http://127.0.0.1:5000", "abc")]


def test_reads_the_table_the_search_driver_writes(tmp_path, capsys):
    """Contract with tuneddml.results.write_results, which the driver writes with (mixed-type columns
    become strings there)."""
    from tuneddml.results import write_results

    rows = trial_rows("cb-tpe", "tpe", 7, seed=5)
    for row in rows:  # keys absent for a trial are missing from its row, as the driver builds them
        for key in [k for k, v in row.items() if v is None and k.startswith("config.")]:
            del row[key]
    rows[1]["config.loss.base"], rows[3]["config.loss.base"] = "proxy_anchor", 0.5
    (tmp_path / "cb-tpe").mkdir()
    write_results(rows, tmp_path / "cb-tpe" / "results.parquet")
    assert main(["--storage", str(tmp_path), "--json", "--no-plots"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["top"][0]["trial_id"] == best_of(rows)["trial_id"]
    assert {b["loss"] for b in summary["best_per_loss"]} == {"contrastive", "supcon", "triplet"}


def test_reads_searches_by_uri_as_from_s3(tmp_path, capsys, monkeypatch):
    """Remote storage (s3:// on a cluster) goes through pyarrow.fs; file:// takes the same path here."""
    write_search(tmp_path / "runs", "cb-tpe", "tpe", 6, seed=1)
    monkeypatch.chdir(tmp_path)
    assert main(["--storage", f"file://{tmp_path / 'runs'}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["files"] == [f"file://{tmp_path / 'runs' / 'cb-tpe' / 'results.parquet'}"]
    # remote searches get their figures in the working folder
    assert {Path(f).parent for f in summary["figures"]} == {tmp_path / "report-cb-tpe"}
    with pytest.raises(SystemExit) as exc:
        main([f"file://{tmp_path / 'runs' / 'missing'}"])
    assert exc.value.code == 2


def test_one_corrupt_table_does_not_hide_the_searches_beside_it(tmp_path, capsys):
    write_search(tmp_path, "good", "tpe", 4, seed=1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.parquet").write_bytes(b"truncated")
    assert main(["--storage", str(tmp_path), "--no-plots", "--json"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(tmp_path / "bad" / "results.parquet") in warnings[0]
    assert json.loads(captured.out.strip().splitlines()[-1])["trials"] == 4


def test_a_stale_recorded_sqlite_store_is_not_created(tmp_path, capsys):
    folder = write_search(tmp_path / "runs", "s", "tpe", 4, seed=1)
    stale = tmp_path / "gone" / "mlflow.db"
    stale.parent.mkdir()
    (folder / "search.json").write_text(
        json.dumps({"tracking_uri": f"sqlite:///{stale}", "parent_run_id": "p"})
    )
    assert main([str(folder)]) == 0  # without --log the recorded store is not touched
    assert not stale.exists() and (folder / "report").is_dir()
    assert capsys.readouterr().err == ""
    shutil.rmtree(folder / "report")
    with pytest.raises(SystemExit) as exc:  # with it, a store that is gone is bad input
        main([str(folder), "--log"])
    assert exc.value.code == 2 and "an existing sqlite store holding run p" in capsys.readouterr().err
    assert not stale.exists() and not (folder / "report").exists()


@pytest.mark.parametrize("bad", ["tracking", "out"])
def test_the_report_writes_nothing_before_it_fails(tmp_path, capsys, bad):
    folder = write_search(tmp_path / "runs", "s", "tpe", 4, seed=1)
    (tmp_path / "a-file").write_text("")
    if bad == "tracking":
        argv = [str(folder), "--log", "--tracking-uri", f"sqlite:///{tmp_path / 'missing.db'}"]
    else:
        argv = [str(folder), "--out", str(tmp_path / "a-file" / "report")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("--tracking-uri" if bad == "tracking" else "--out") in err[0]
    assert sorted(p.name for p in folder.iterdir()) == ["results.parquet"]  # no report/ folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "runs"]  # no missing.db


@pytest.mark.slow
def test_log_is_needed_and_checked_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """Read-only by default; --log with a bad tracking URI exits 2 before a figure is drawn."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    folder = write_search(tmp_path / "runs", "s", "tpe", 6, seed=1)
    bad = f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"
    for argv in ([str(folder), "--log", "--tracking-uri", bad], [str(folder), "--tracking-uri", bad]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--tracking-uri" in err[0]
        assert sorted(p.name for p in folder.iterdir()) == ["results.parquet"]  # no report/ folder
    with pytest.raises(SystemExit) as exc:  # nothing recorded to log to
        main([str(folder), "--log"])
    assert exc.value.code == 2 and "--log" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["results.parquet"]
