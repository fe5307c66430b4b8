"""Start and stop exactly the processes a test owns (never ``ray stop``, never a kill by name)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def child_env(ray_tmp: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",
        PYTHONUNBUFFERED="1",
    )
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
    return env


def short_tmp(prefix: str) -> str:
    """Ray's unix sockets need short paths: a fresh folder directly under /tmp."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def start(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_tree(proc: subprocess.Popen | psutil.Process, timeout: float = 15.0) -> None:
    """Stop a process and every process it started (Ray's raylet, GCS, workers), by PID."""
    pid = proc.pid
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def kill_tree_hard(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL the driver alone (as a crash would) and return its orphans for later clean-up."""
    root = psutil.Process(proc.pid)
    orphans = root.children(recursive=True)
    root.kill()
    proc.wait(timeout=10)
    return orphans


def search_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuneddml.search", *args]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
