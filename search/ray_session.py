"""Starting and stopping the Ray a search runs on: a private local Ray on 127.0.0.1, or a running cluster.

A local Ray binds to the machine's outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is
set before it starts; this module sets it (with token authentication and usage stats off), gives Ray a
private temp folder, and stops only the Ray it started (never ``ray stop``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: environment of a local, loopback-only Ray (set before ray starts; passed on to its workers)
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
#: the driver's Tune settings: no warning about frequent experiment snapshots (one per epoch is the point)
DRIVER_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
#: settings of the local Ray's own processes (read by its raylet when it starts): trial workers at the
#: driver's CPU priority. Ray starts workers at niceness 15, so on a machine with any other load a trial
#: got less CPU than the same training in the driver: 6% slower epochs in a plain actor, 8-12% in a
#: trial (benchmarks/overhead.py, on a 2-core machine shared with other jobs), and a slower start.
LOCAL_RAY_SYSTEM_ENV = {"RAY_worker_niceness": "0"}


#: hosts that name each machine itself: a trial on another node would reach its own, not the driver's
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def cluster_tracking_uri(uri: str, driver_ip: str) -> str:
    """The tracking server URI for a search on a cluster: a loopback host (``http://127.0.0.1:5000`` on
    the head) becomes the driver node's address, so trials on every node reach the same server."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS or driver_ip in LOOPBACK_HOSTS:
        return uri
    host = f"[{driver_ip}]" if ":" in driver_ip else driver_ip
    return parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()


def single_machine_warnings(tracking_uri: str, storage_uri: str) -> list[str]:
    """Warnings for a search on a cluster whose MLflow store or results are files on the driver's machine:
    trials on other nodes would write their own copies (fine only on a shared filesystem)."""
    warnings = []
    if urllib.parse.urlsplit(tracking_uri).scheme not in ("http", "https", "databricks"):
        warnings.append(f"--tracking-uri {tracking_uri} is a store on this machine: trials on other nodes log to "
                        "their own copy unless it is on a shared filesystem; use a tracking server "
                        "(search/tracking_server.py on the head, --tracking-uri http://...)")
    if "://" not in storage_uri:
        warnings.append(f"--storage {storage_uri} is a folder on this machine: Ray needs it on a shared filesystem "
                        "for trials on other nodes; use s3://bucket/prefix")
    return warnings


def on_cluster(tracking_uri: str, storage_uri: str) -> str:
    """The tracking URI trials on every node of the cluster reach; warns about stores only this machine has."""
    import ray

    reachable = cluster_tracking_uri(tracking_uri, ray.util.get_node_ip_address())
    if reachable != tracking_uri:
        print(f"tracking URI for the trials: {reachable} (this node's address; {tracking_uri} is each node's own)")
    for warning in single_machine_warnings(reachable, storage_uri):
        print(f"warning: {warning}", file=sys.stderr)
    return reachable


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: float | None = None,
                object_store_memory: int | None = None) -> Iterator[dict[str, Any]]:
    """``ray.init`` for the duration of the block: ``address`` of a running cluster, or (None) a new local
    Ray on 127.0.0.1 with ``num_cpus``/``num_gpus`` (logical GPUs are fine) in a private temp folder."""
    import ray

    temp_dir = None
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    if address is None:
        os.environ.update(LOCAL_RAY_ENV)
        for key, value in LOCAL_RAY_SYSTEM_ENV.items():
            os.environ.setdefault(key, value)
        temp_dir = tempfile.mkdtemp(prefix="prvr-ray-")
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                           object_store_memory=object_store_memory, _temp_dir=temp_dir,
                           runtime_env={"env_vars": dict(LOCAL_RAY_ENV)}, logging_level="WARNING",
                           log_to_driver=True)
    else:
        context = ray.init(address=address, logging_level="WARNING")
    try:
        yield {"address": context.address_info.get("address"), "local": address is None,
               "resources": ray.cluster_resources()}
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
