"""``ray.init`` settings for a local search: Ray's processes listen on 127.0.0.1 only.

By default every server a local Ray 2.60 node opens (GCS, the raylet's node manager and object
manager, the runtime-env agent, each worker's and the driver's gRPC server) listens on all
interfaces ("::", dual stack), reachable from the network. Ray binds them to loopback only when the
node's IP is 127.0.0.1, but ``ray.init`` turns a ``_node_ip_address`` of 127.0.0.1 into the
machine's routable IP, unless Ray runs as a single-machine Ray, the mode it uses on macOS and
Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read into ``ray._private.ray_constants``: the node IP is
then the loopback address). :func:`local_init_kwargs` turns that mode on in the driver's process
and names the node 127.0.0.1; the dashboard stays off (and would bind to 127.0.0.1).
``tests/tuning/test_safe_sockets.py`` lists the listening sockets of a real search.

A search on a cluster (``--address``) does not use this: its nodes must reach each other.
"""

from __future__ import annotations

import os
from typing import Any

LOOPBACK = "127.0.0.1"


def local_init_kwargs() -> dict[str, Any]:
    """The ``ray.init`` arguments of a local search (one node: this machine's CPUs, its GPUs),
    every socket on 127.0.0.1. Call it just before ``ray.init``; Ray may already be imported."""
    import ray._private.ray_constants as constants  # Ray reads this flag at each call

    # the single-machine mode, for this process only: Ray's own processes are given the node IP
    # on their command lines, and a later `ray start` (a worker node) must not inherit it
    constants.ENABLE_RAY_CLUSTER = False
    return {
        "address": "local",
        "num_cpus": os.cpu_count(),
        "num_gpus": None,
        "_node_ip_address": LOOPBACK,
        "include_dashboard": False,
        "dashboard_host": LOOPBACK,
    }
