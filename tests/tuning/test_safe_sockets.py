"""Every socket a default local search opens listens on 127.0.0.1 (Ray's GCS, raylet, object
manager, runtime-env agent, the driver's and each worker's gRPC server; no dashboard), seen on a
real search's process tree while it runs."""

from __future__ import annotations

import ipaddress
import time

import psutil
import pytest

from tests.tuning.procs import child_env, search_command, short_tmp, start, stop_tree

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _listening(root: psutil.Process) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every LISTEN socket of ``root``'s process tree."""
    try:
        tree = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for conn in psutil.net_connections(kind="inet"):  # one scan of the system's sockets
        if conn.status == psutil.CONN_LISTEN and conn.pid in tree:
            try:
                name = tree[conn.pid].name()
            except psutil.Error:  # a worker that just ended
                name = "?"
            found.add((name, conn.laddr.ip, conn.laddr.port))
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # "::ffff:127.0.0.1": a dual-stack socket bound to it
    return (mapped or address).is_loopback


def test_a_local_search_listens_on_loopback_only(tmp_path):
    ray_tmp = short_tmp("rs")
    args = ["--space=quick", "--num-samples", "1", "--storage", str(tmp_path / "runs"), "epochs=2"]
    proc = start(search_command(*args, "steps_per_epoch=3"), tmp_path, child_env(ray_tmp), tmp_path / "log")
    seen: set[tuple[str, str, int]] = set()
    try:
        root = psutil.Process(proc.pid)
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= _listening(root)
            time.sleep(0.5)
        assert proc.wait(timeout=30) == 0, (tmp_path / "log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    names = {name for name, _ip, _port in seen}
    # the search really ran Ray: its GCS, raylet and workers were listening
    assert {"gcs_server", "raylet"} <= names and len(seen) >= 5, seen
    exposed = sorted(s for s in seen if not _loopback(s[1]))
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
