from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray's default security, with the tests' own token: in-process ``ray.init()`` never reads or
# writes the user's ~/.ray/auth_token (child processes get the same from ``procs.child_env``)
for _name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
    os.environ.pop(_name, None)
from tests.tuning.procs import ray_token_file  # noqa: E402

os.environ["RAY_AUTH_TOKEN_PATH"] = str(ray_token_file())


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
