"""bench/gpu_check.py: every phase of the prepared GPU check runs (``--smoke``: CPU, tiny sizes),
and the shell script's way out on a machine without CUDA."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_goes_through_every_phase(tmp_path):
    out = tmp_path / "smoke.md"
    threads = torch.get_num_threads()
    try:
        assert _gpu_check().main(["--smoke", "--out", str(out), "--data", str(tmp_path / "cub")]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]
    phases = {row[0].lstrip("| ") for row in rows}
    assert {"data", "loader", "model", "evaluation", "trial", "sharing"} <= phases
    assert not [row for row in rows if row[1] == "error"], text
    assert f"- torch: {torch.__version__}" in text and "GPU: none (smoke run on the CPU)" in text
    figures = {row[1]: row[2] for row in rows}
    assert float(figures["small_cnn training images/s"].replace(",", "")) > 0
    assert figures["same neighbours as faiss (CPU)"] == "1.000000"
    assert figures["final map_at_r / recall_at_1"].count("/") == 1
    assert (tmp_path / "cub" / "CUB_200_2011" / "images.txt").is_file()


def test_search_width_is_what_the_evaluation_asks_its_backend_for():
    from tuneddml.evaluation import TorchKnn, evaluate

    gpu_check = _gpu_check()
    from bench_eval import make_data  # the check's evaluation data (bench/ is on the path now)

    x, labels = make_data(300, 16, noise=1.2, seed=3)
    asked = []

    class Spy(TorchKnn):
        def search(self, query, gallery, k):
            asked.append(k)
            return super().search(query, gallery, k)

    evaluate(x, labels, with_nmi=False, knn=Spy())
    assert asked[0] == gpu_check.search_width(labels)
    assert np.bincount(labels).max() <= 12


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the whole check")
def test_shell_script_without_cuda_writes_one_line_and_exits_0(tmp_path):
    out = tmp_path / "sub" / "gpu_check.md"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "no CUDA device: skipped\n"
    assert done.stdout.rstrip().endswith("no CUDA device: skipped")
