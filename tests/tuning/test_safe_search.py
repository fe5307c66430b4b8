"""Safe by default, on one real search (quick space, 4 trials; ``conftest.py``'s, shared with
``test_search_e2e.py``):

- every socket it opens listens on 127.0.0.1 (Ray's GCS, raylet, object manager, runtime-env
  agent, the driver's and each worker's gRPC server; no dashboard), seen while it runs;
- ``--resume`` on a corrupt or foreign Ray state of it ends with exit 2 and one line naming the
  file, before Ray starts (never a hang, never a silent restart of the search)."""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tuning.procs import child_env, search_command
from tuneddml.errors import ConfigError
from tuneddml.tuning.resume_check import SEARCHER_STATE_FORMAT, check_resumable, refuse_silent_restart


@pytest.fixture
def watched(quick_search):
    """A real finished quick search (4 trials, the session's, which ``test_search_e2e.py`` reads
    too), and the LISTEN sockets its process tree opened."""
    cwd, _summary, seen = quick_search
    return cwd, seen


@pytest.fixture
def finished(watched) -> Path:
    return watched[0]


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # "::ffff:127.0.0.1": a dual-stack socket bound to it
    return (mapped or address).is_loopback


@pytest.mark.slow
@pytest.mark.ray
def test_a_local_search_listens_on_loopback_only(watched):
    _cwd, seen = watched
    names = {name for name, _ip, _port in seen}
    # the search really ran Ray: its GCS, raylet and workers were listening
    assert {"gcs_server", "raylet"} <= names and len(seen) >= 5, seen
    exposed = sorted(s for s in seen if not _loopback(s[1]))
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"


def _copy(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished / "runs", tmp_path / "runs")
    shutil.copy(finished / "mlflow.db", tmp_path / "mlflow.db")
    return tmp_path / "runs" / "s"


def _newest(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[-1]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and modification time, every folder's name (a folder's own mtime moves
    when the up-front check tries that the storage is writable, which writes nothing)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
        for p in root.rglob("*")
    }


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize(
    ("damage", "names"),
    [
        ("truncated_searcher_state", "searcher-state-"),
        ("random_bytes_searcher_state", "searcher-state-"),
        ("missing_experiment_state", "experiment_state-"),
    ],
)
def test_resume_on_a_damaged_state_exits_2_with_one_line_and_writes_nothing(
    finished, tmp_path, damage, names
):
    folder = _copy(finished, tmp_path)
    if damage == "truncated_searcher_state":
        _truncate(_newest(folder, "searcher-state-*.pkl"))
    elif damage == "random_bytes_searcher_state":
        _newest(folder, "searcher-state-*.pkl").write_bytes(bytes(range(256)) * 3)
    else:
        for state in folder.glob("experiment_state-*.json"):
            state.unlink()
    before = _listing(tmp_path)
    proc = subprocess.run(
        search_command("--space=quick", "--storage", str(tmp_path / "runs"), "--name", "s", "--resume"),
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,  # a hang is a failure, not a wait
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 200, proc.stderr
    assert lines[0].startswith("error: --resume: bad value 's/" + names), lines[0]
    assert proc.stdout == ""
    assert _listing(tmp_path) == before  # nothing written, the tracking store untouched


@pytest.mark.slow
@pytest.mark.ray
def test_check_resumable_names_each_damaged_file_and_passes_the_intact_search(finished, tmp_path):
    intact = finished / "runs" / "s"
    check_resumable(intact, "coordinate_descent")
    folder = _copy(finished, tmp_path)

    def refused(match: str, searcher: str = "coordinate_descent") -> None:
        with pytest.raises(ConfigError, match=match) as info:
            check_resumable(folder, searcher)
        assert "\n" not in str(info.value) and len(str(info.value)) < 200, str(info.value)

    # Optuna's searchers keep a pickle: the project's JSON state is foreign to them, and back
    refused(r"searcher-state-.*a complete Ray state file \(truncated or foreign\)", "tpe")
    searcher_state = _newest(folder, "searcher-state-*.pkl")
    good = searcher_state.read_bytes()
    state = json.loads(good)
    state["core_type"] = "BalanceSearch"  # another searcher's state
    searcher_state.write_text(json.dumps(state))
    refused(r"searcher-state-.*a state of CoordinateDescent \(it is BalanceSearch's\)")
    searcher_state.write_text(json.dumps({"format": "something else"}))
    refused(r"searcher-state-.*foreign content")
    searcher_state.write_bytes(b"\x80\x04K\x01.")  # a pickle planted where JSON belongs
    refused(r"searcher-state-.*it is a pickle, never loaded")
    searcher_state.unlink()
    refused(r"searcher-state-\*\.pkl.*missing")
    searcher_state.write_bytes(good)

    for pattern, match in [
        ("tuner.pkl", r"'s/tuner\.pkl'.*truncated or foreign"),
        ("search_gen_state-*.json", r"'s/search_gen_state-.*truncated or foreign"),
        ("experiment_state-*.json", r"'s/experiment_state-.*truncated or not JSON"),
    ]:
        path = _newest(folder, pattern)
        keep = path.read_bytes()
        _truncate(path)
        refused(match)
        path.write_bytes(keep)
    (folder / "tuner.pkl").unlink()
    refused(r"'s/tuner\.pkl'.*missing")
    shutil.rmtree(folder)
    refused(r"experiment folder is missing")


def test_the_state_format_is_the_searchers_own():
    pytest.importorskip("ray.tune")
    from tuneddml.searchers.ray_searcher import STATE_FORMAT

    assert SEARCHER_STATE_FORMAT == STATE_FORMAT


def test_a_restore_tune_swallows_is_raised_out_of_the_block():
    """Tune logs "Failed to restore the run state." and starts afresh: inside the block it raises."""
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    with pytest.raises(
        ConfigError, match=r"a state Ray can restore \(UnpicklingError: pickle data was truncated\)"
    ):
        with refuse_silent_restart():
            try:
                import pickle

                pickle.loads(pickle.dumps({"a": 1})[:5])
            except Exception:
                logger.exception("Failed to restore the run state.")
    own = ConfigError("searcher state", "searcher-state-x.pkl", "a complete JSON state")
    with pytest.raises(ConfigError) as info, refuse_silent_restart():
        try:
            raise own
        except ConfigError:
            logger.exception("Failed to restore the run state.")
    assert info.value is own  # the searcher's one line, not wrapped
    logger.error("Failed to restore the run state.")  # outside the block: only logged
