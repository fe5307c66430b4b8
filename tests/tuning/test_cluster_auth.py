"""``--address`` is checked by asking Ray: a closed port, a port that answers but is not a Ray GCS,
and a malformed address each end with exit 2 and one line, before anything is written or started.
(The token cases need a Ray head: see ``test_search_e2e.py``'s two-node cluster.)"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.tuning.procs import free_port
from tuneddml.search import main
from tuneddml.tuning import ray_address


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def not_ray():
    """A plain TCP server on a free loopback port: it accepts and holds connections, says nothing."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def _refused(args: list[str], capsys) -> str:
    import ray

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --address") and len(err[0]) < 200, err
    assert not ray.is_initialized()
    return err[0]


@pytest.mark.slow
def test_a_port_that_answers_but_is_not_ray_exits_2_in_seconds_and_writes_nothing(workdir, capsys, not_ray):
    began = time.monotonic()
    line = _refused(["--space=quick", "--address", not_ray], capsys)
    assert time.monotonic() - began < 60  # it used to write mlflow.db and search.json, then hang
    assert "not Ray" in line and "ray start --head" in line
    assert os.listdir(workdir) == []


def test_a_closed_port_exits_2(workdir, capsys):
    line = _refused(["--space=quick", "--address", f"127.0.0.1:{free_port()}"], capsys)
    assert "reachable Ray head" in line
    assert os.listdir(workdir) == []


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":6379"])
def test_a_malformed_address_exits_2(workdir, capsys, address):
    assert "HOST:PORT" in _refused(["--space=quick", "--address", address], capsys)
    assert os.listdir(workdir) == []


def test_the_local_token_is_read_as_ray_reads_it(tmp_path, monkeypatch):
    """RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH names, then ~/.ray/auth_token."""
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_address.local_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert ray_address.local_token() == "home-token"
    (tmp_path / "other").write_text("path-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "other"))
    assert ray_address.local_token() == "path-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert ray_address.local_token() == "env-token"
