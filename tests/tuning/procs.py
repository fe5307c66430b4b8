"""Start and stop exactly the processes a test owns (never ``ray stop``, never a kill by name)."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_TOKEN_FILES: dict[str, Path] = {}


def ray_token_file(name: str = "session") -> Path:
    """A Ray auth token of the tests' own (never the user's ``~/.ray/auth_token``), one per name
    and process, in a fresh folder removed at exit."""
    if name not in _TOKEN_FILES:
        folder = tempfile.mkdtemp(prefix="tdml-tok-", dir="/tmp")
        atexit.register(shutil.rmtree, folder, True)
        path = Path(folder) / "auth_token"
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
        _TOKEN_FILES[name] = path
    return _TOKEN_FILES[name]


def child_env(ray_tmp: str | None = None, token: Path | None = None) -> dict[str, str]:
    """The environment of a test's child process, with Ray's default security: no ``RAY_AUTH_MODE``
    (a local ``ray.init()`` turns token auth on), the token read from ``token`` (default: the
    session's own file) through ``RAY_AUTH_TOKEN_PATH``; nothing of the user's Ray auth settings."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARS}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        RAY_AUTH_TOKEN_PATH=str(token or ray_token_file()),
    )
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def bin_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this interpreter's scripts (ray, mlflow) first on PATH."""
    return env | {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}


def start_ray_node(
    cwd: Path, env: dict[str, str], log: Path, head_port: int, head: bool, num_cpus: int = 1
) -> subprocess.Popen:
    """``ray start --block`` of a head (on ``head_port``) or of a worker node joining it, on 127.0.0.1."""
    where = ["--head", f"--port={head_port}", "--include-dashboard=false"] if head else [f"--address=127.0.0.1:{head_port}"]
    args = ["ray", "start", "--block", *where, "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}"]
    return start([*args, "--disable-usage-stats"], cwd, bin_path(env), log)


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
    stop_trees([proc], timeout)


def stop_trees(procs: list[subprocess.Popen | psutil.Process], timeout: float = 15.0) -> None:
    """:func:`stop_tree` of several processes at once: every process of every tree is sent
    SIGTERM first, then all are waited for together (at most ``timeout`` in all, not each), and
    the ones still alive are killed."""
    tree: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            root = psutil.Process(proc.pid)
            tree.update((p.pid, p) for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            pass
    for p in tree.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(list(tree.values()), timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def listening(root: psutil.Process) -> set[tuple[str, str, int]]:
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


# ---- PostgreSQL and an MLflow server on it -------------------------------------------------------
def postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (package ``postgresql``), the newest version installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class Postgres:
    """A PostgreSQL of the test's own: ``initdb`` in a fresh folder, listening on 127.0.0.1 only
    (its unix socket in a short folder of its own), trust auth for one user; stopped by
    ``pg_ctl stop`` and its PID. As root it runs as the ``postgres`` user (PostgreSQL refuses root)."""

    user = "tuneddml"

    def __init__(self) -> None:
        bindir = postgres_bin()
        assert bindir is not None, "PostgreSQL binaries are installed by `make test` (apt-get install postgresql)"
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="tdml-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "postgres.log"
        self.pid: int | None = None
        self._as = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 60) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        log = self.log.read_text()[-1500:] if self.log.exists() else ""
        assert proc.returncode == 0, f"{args[0]}: {proc.stdout[-1500:]} {proc.stderr[-1500:]} {log}"

    def start(self) -> Postgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "mlflow")
        return self

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/mlflow"

    def stop(self) -> None:
        if self.pid is not None:
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            except AssertionError:
                pass
            try:
                stop_tree(psutil.Process(self.pid))
            except psutil.NoSuchProcess:
                pass
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)


def start_mlflow_server(backend_uri: str, folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on 127.0.0.1 (one worker, no job runner), artifacts under ``folder``;
    returns the process (stop it with :func:`stop_tree`) and its URL once it answers."""
    import urllib.request

    port = free_port()
    args = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]
    server = start(args, folder, env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, folder / "mlflow-server.log")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (folder / "mlflow-server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 120, "the MLflow server")
    except BaseException:
        stop_tree(server)
        raise
    return server, url
