"""``--address``: is it a Ray cluster this driver can join, with Ray's token authentication?

Ray 2.60 turns token auth on for ``ray start --head`` whenever a token exists (``RAY_AUTH_TOKEN``,
the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``, in that order; any local
``ray.init()`` writes the last one), but a driver that joins by an explicit address only sends the
token when ``RAY_AUTH_MODE=token`` is exported. :func:`check_address` asks the cluster's GCS
itself, in a short subprocess (this module and its caller import no Ray), and tells apart: nothing
listening, something that is not a Ray GCS, a Ray GCS that refuses the token (or its absence), and
a Ray GCS that answers. When the GCS refuses a driver without the token, ``RAY_AUTH_MODE`` is
unset and a token is at hand, it retries with the token, and on success exports
``RAY_AUTH_MODE=token`` in this process so that the driver's ``ray.init(address=...)`` sends it.
The token is sent only to a server that has shown it is a Ray GCS asking for one.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from pathlib import Path

from tuneddml.errors import ConfigError

AUTH_MODE = "RAY_AUTH_MODE"
AUTH_TOKEN = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
#: seconds the GCS has to answer once the probe has imported Ray's client (a Ray head answers in
#: milliseconds; the client, left alone, waits 40 s on a port that is not Ray)
PROBE_TIMEOUT = 5.0
IMPORT_TIMEOUT = 60.0  # importing Ray's client takes about 0.5 s, more on a loaded machine
CONNECT_TIMEOUT = 3.0

_PROBE = """
import os, sys
from ray._raylet import AuthenticationTokenLoader, Config, GcsClient
from ray.exceptions import AuthenticationError
print("ready", flush=True)
def ask():
    GcsClient(address=sys.argv[1]).internal_kv_get(b"tuneddml-probe", None, timeout=5)
try:
    ask()
    print("ok", flush=True)
except AuthenticationError:
    if sys.argv[2] != "retry":
        raise SystemExit(print("auth", flush=True))
    os.environ["RAY_AUTH_MODE"] = "token"  # what Ray itself does to turn token auth on in a process
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        ask()
        print("ok-token", flush=True)
    except AuthenticationError:
        print("auth", flush=True)
except Exception as exc:
    print("other", type(exc).__name__, flush=True)
"""


def default_token_path() -> Path:
    """Where ``ray.init()`` and ``ray get-auth-token --generate`` keep the token."""
    return Path.home() / ".ray" / "auth_token"


def local_token() -> str | None:
    """The token Ray would send from here, read the way Ray reads it (no Ray import)."""
    if os.environ.get(AUTH_TOKEN, "").strip():
        return os.environ[AUTH_TOKEN].strip()
    path = Path(os.environ[AUTH_TOKEN_PATH]) if os.environ.get(AUTH_TOKEN_PATH) else default_token_path()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--address", address, "auto or HOST:PORT of a running Ray head")
    return host.strip("[]"), int(port)


def probe(
    address: str, env: dict[str, str] | None = None, retry_with_token: bool = False, timeout: float = PROBE_TIMEOUT
) -> str:
    """Ask the GCS at ``address``: ``ok``, ``auth`` (token missing or refused), or ``not-ray``
    (no Ray answer within ``timeout`` s of the probe being ready). With ``retry_with_token``, a
    refusal is retried in the same probe with ``RAY_AUTH_MODE=token``: ``ok-token`` if accepted."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", _PROBE, address, "retry" if retry_with_token else "once"],
        env=env if env is not None else dict(os.environ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # Ray's C++ client logs its retries there
        text=True,
    )
    try:
        if _line(proc, IMPORT_TIMEOUT) != "ready":
            raise RuntimeError(f"could not run Ray's GCS client ({sys.executable} -c 'import ray._raylet')")
        verdict = _line(proc, timeout)
    finally:
        proc.kill()
        proc.wait()
    # a client that timed out, or crashed on what the port sent back, did not meet a Ray GCS
    return verdict if verdict in ("ok", "ok-token", "auth") else "not-ray"


def _line(proc: subprocess.Popen, timeout: float) -> str:
    """The first word of the process's next line, or "" if none comes within ``timeout`` s."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    words = proc.stdout.readline().split() if ready else []
    return words[0] if words else ""


def check_address(address: str) -> None:
    """Raise ConfigError (one line naming ``--address``) unless a Ray driver can join ``address``.

    ``auto`` is left to Ray (it finds a cluster started on this machine and its token by itself);
    a ``ray://`` (Ray Client) address is only checked for reachability.
    """
    if address == "auto":
        return
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise ConfigError("--address", address, f"a reachable Ray head ({exc.strerror or exc})") from None
    if address.startswith("ray://"):
        return
    mode = os.environ.get(AUTH_MODE)
    # the token is offered only to a Ray GCS that has just refused this driver without it
    retry = mode is None and local_token() is not None
    verdict = probe(address, retry_with_token=retry)
    if verdict == "ok":
        return
    if verdict == "ok-token":
        os.environ[AUTH_MODE] = "token"  # so that the driver's ray.init(address=...) sends the token
        return
    if verdict == "not-ray":
        raise ConfigError(
            "--address", address, "the GCS address of a Ray head (ray start --head --port, 6379 by default): this port is not Ray"
        )
    if mode is not None and mode.lower() != "token":
        raise ConfigError("--address", address, f"{AUTH_MODE} unset or token: that cluster requires Ray's token auth")
    raise ConfigError(
        "--address",
        address,
        f"the cluster's token: set {AUTH_TOKEN} or ~/.ray/auth_token to the head's `ray get-auth-token`",
    )
