"""cluster/gpu.yaml passes Ray's own cluster-config validator, offline, and broken copies fail it.

``prepare_config`` merges the YAML with Ray's packaged ``autoscaler/aws/defaults.yaml`` (a file
read, no boto3, no credentials); ``validate_config`` checks it against ``ray-schema.json`` (unknown
fields are errors) and the node-type rules. The AWS-side bootstrap (key pair, IAM, subnets) is
``ray up``'s job and needs the cloud, so it is not run here.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster" / "gpu.yaml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_passes_rays_validator(config):
    prepared = _validate(config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda c: _rename(c, "max_workers", "max_workerz"), "max_workerz"),
        (
            lambda c: _rename(c["available_node_types"]["gpu_1x_a10g"], "max_workers", "max_workerz"),
            "max_workerz",
        ),
        (lambda c: _rename(c, "setup_commands", "setup_comands"), "setup_comands"),
        (lambda c: c.__setitem__("head_node_type", "head_gpu"), "head_node_type"),
        (lambda c: c["available_node_types"]["gpu_1x_a10g"]["resources"].__setitem__("GPU", "one"), "'one'"),
        (lambda c: c["available_node_types"]["gpu_4x_a10g"].__setitem__("min_workers", 99), "min_workers"),
    ],
    ids=[
        "misspelled-top-level",
        "misspelled-node-type",
        "misspelled-commands",
        "wrong-head-type",
        "non-numeric-resource",
        "min-above-max",
    ],
)
def test_broken_copies_fail(config, breakage, message):
    from jsonschema import ValidationError

    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises((ValidationError, ValueError)) as exc:
        _validate(broken)
    assert message in str(exc.value)


def _commands(config: dict[str, Any], key: str) -> str:
    return "\n".join(config[key])


def test_gpu_workers_autoscale_and_head_runs_no_trials(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head.get("max_workers", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(
        t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 < t["max_workers"] for t in workers
    )
    assert sum(t["max_workers"] for t in workers) >= config["max_workers"]
    # one AMI for every node type, so the setup commands meet the same Python and driver
    assert len({t["node_config"]["ImageId"] for t in types.values()}) == 1


def test_installs_the_pinned_torch_from_the_cuda_index(config):
    project = (ROOT / "pyproject.toml").read_text()
    setup = _commands(config, "setup_commands")
    torch_line = next(line for line in config["setup_commands"] if "torch==" in line)
    words = shlex.split(torch_line)
    for package in ("torch", "torchvision"):  # the builds the project pins, from the CUDA index
        pinned = re.search(rf'"{package}==([\d.]+)"', project).group(1)
        assert f"{package}=={pinned}" in words
    index = words[words.index("--index-url") + 1]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index)
    # torch first, then the project (synced by file_mounts) with its own pins
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert setup.index("torch==") < setup.index(f"-e {mount}")


def test_mlflow_server_on_head_is_local_only_on_postgres_with_shared_artifacts(config):
    start = _commands(config, "head_start_ray_commands")
    server = next(line for line in config["head_start_ray_commands"] if "mlflow server" in line)
    assert "--host 127.0.0.1" in server and "--port 5000" in server
    # runs in the head's PostgreSQL, over its unix socket (peer auth: no password, no TCP)
    assert '--backend-store-uri "postgresql:///mlflow?host=/var/run/postgresql"' in server
    head_setup = _commands(config, "head_setup_commands")
    assert "apt-get install -y -q postgresql" in head_setup and "createdb -O" in head_setup
    # the driver for SQLAlchemy's postgresql:// (psycopg 3) is the project's `postgres` extra
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("psycopg") for r in extras["postgres"])
    assert "-e ~/tuneddml'[postgres]'" in _commands(config, "setup_commands")
    assert '--default-artifact-root "$TUNEDDML_BUCKET/' in server  # artifacts on S3, shared
    assert "TUNEDDML_BUCKET=s3://" in _commands(config, "setup_commands")
    assert "ray start --head" in start and "--dashboard-host=127.0.0.1" in start
    assert "ray start --address=$RAY_HEAD_IP:6379" in _commands(config, "worker_start_ray_commands")


def test_every_node_gets_the_clusters_token_and_turns_token_auth_on(config):
    """Ray 2.60: a node joining by address sends the token only with RAY_AUTH_MODE=token; the token
    is Ray's default path on every node, copied from a git-ignored file of the laptop's checkout."""
    local = config["file_mounts"]["~/.ray/auth_token"]
    assert local == "cluster/auth_token"
    ignored = (ROOT / "cluster" / ".gitignore").read_text().split()
    assert Path(local).name in ignored  # a secret: rsync_filter (.gitignore) keeps it out of "."
    assert ".gitignore" in config["rsync_filter"]
    setup = config["setup_commands"]  # every node, before its start commands
    assert any("export RAY_AUTH_MODE=token" in line and ".bashrc" in line for line in setup)
    assert any("chmod 600 ~/.ray/auth_token" in line for line in setup)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=disabled" not in _commands(config, key)
