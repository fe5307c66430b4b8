"""The one small real search that the end-to-end and the safe-by-default checks both read (a
real search costs half a minute here: the driver's imports, Ray's start, the trials' workers)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import psutil
import pytest

from tests.tuning.procs import (
    child_env,
    free_port,
    listening,
    port_open,
    ray_token_file,
    search_command,
    short_tmp,
    start_ray_node,
    stop_tree,
    stop_trees,
    wait_for,
)

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


@pytest.fixture(scope="session")
def auth_cluster(tmp_path_factory):
    """A 2-node loopback Ray cluster (one for the session: the search and benchmark end-to-end tests
    share it) with Ray's default security. Its token is the tests' own
    (``RAY_AUTH_TOKEN_PATH``, never the user's ``~/.ray``); the head is started with no
    ``RAY_AUTH_MODE`` and turns token auth on because a token exists (as it does on any machine
    where a local search has run); the joining worker node exports ``RAY_AUTH_MODE=token``, which
    Ray requires of a node joining by address."""
    folder = tmp_path_factory.mktemp("cluster")
    ray_tmp = short_tmp("rt")
    env = child_env(ray_tmp, token=ray_token_file("cluster"))
    port = free_port()
    head = start_ray_node(folder, env, folder / "head.log", port, head=True)
    worker = None
    try:
        wait_for(lambda: port_open(port), 60, "the Ray head")
        worker = start_ray_node(folder, env | {"RAY_AUTH_MODE": "token"}, folder / "worker.log", port, head=False)
        wait_for(lambda: _nodes_alive(port, env | {"RAY_AUTH_MODE": "token"}) >= 2, 90, "two live nodes")
        yield f"127.0.0.1:{port}", env
    finally:
        stop_trees([proc for proc in (worker, head) if proc is not None])
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _nodes_alive(port: int, env: dict[str, str]) -> int:
    code = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes())); ray.shutdown()"
    )
    proc = subprocess.run(
        [search_command()[0], "-c", code, f"127.0.0.1:{port}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return int(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0
