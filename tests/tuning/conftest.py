"""The one small real search that the end-to-end and the safe-by-default checks both read (a
real search costs half a minute here: the driver's imports, Ray's start, the trials' workers)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import psutil
import pytest

from tests.tuning.procs import child_env, listening, search_command, short_tmp, stop_tree

TINY = ["epochs=2", "steps_per_epoch=3"]


@pytest.fixture(scope="session")
def quick_search(tmp_path_factory):
    """A real finished quick search (4 trials, named ``s``) in a folder of its own: the folder,
    the ``--json`` summary, and the LISTEN sockets its process tree opened while it ran."""
    cwd = tmp_path_factory.mktemp("search")
    args = ["--space=quick", "--num-samples", "4", "--storage", str(cwd / "runs"), "--name", "s", *TINY, "--json"]
    ray_tmp = short_tmp("rs")
    with open(cwd / "stdout", "w") as out, open(cwd / "log", "w") as err:
        proc = subprocess.Popen(
            search_command(*args), cwd=cwd, env=child_env(ray_tmp), stdout=out, stderr=err, start_new_session=True
        )
    seen: set[tuple[str, str, int]] = set()
    try:
        root = psutil.Process(proc.pid)
        deadline = time.monotonic() + 420
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= listening(root)
            time.sleep(0.5)
        assert proc.wait(timeout=30) == 0, (cwd / "log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            stop_tree(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    summary = json.loads((cwd / "stdout").read_text().strip().splitlines()[-1])
    return cwd, summary, seen
