"""Starting and stopping the Ray a search runs on: a private local Ray on 127.0.0.1, or a running cluster.

A local Ray binds to the machine's outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is
set before it starts; this module sets it (with token authentication and usage stats off), gives Ray a
private temp folder, and stops only the Ray it started (never ``ray stop``). A driver killed with SIGKILL
cannot clean up: Ray's agents outlive it for minutes and its temp folder stays; the next local session
stops the processes that still hold files in such a folder (by their PIDs) and removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from trainables.errors import InputError

if TYPE_CHECKING:
    from ray._private.worker import RayContext

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


#: how long a ``--ray-address`` has to accept a connection (Ray itself keeps dialling for minutes)
CONNECT_TIMEOUT_S = 10.0


def check_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S, name: str = "--ray-address") -> None:
    """Refuses (one-line InputError naming ``name``, the option or variable that gave it) a ``host:port`` or
    ``ray://host:port`` that accepts no TCP connection within ``timeout`` seconds; ``auto`` (Ray finds the
    cluster it started) is left to Ray."""
    if address is None or address == "auto":
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{name} {address!r}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise InputError(f"{name} {address}: no Ray cluster answers there ({reason}; waited up to "
                         f"{timeout:g}s)") from None


def single_machine_warnings(storage_uri: str) -> list[str]:
    """Warnings for a search on a cluster whose results are a folder on the driver's machine: trials on
    other nodes would write their own copies (fine only on a shared filesystem). The MLflow store needs
    none: only the driver writes to it (``tracking/trial_runs.py``)."""
    if "://" in storage_uri:
        return []
    return [f"--storage {storage_uri} is a folder on this machine: Ray needs it on a shared filesystem "
            "for trials on other nodes; use s3://bucket/prefix"]


def on_cluster(storage_uri: str) -> None:
    """Warns about a search's results folder that only this machine has."""
    for warning in single_machine_warnings(storage_uri):
        print(f"warning: {warning}", file=sys.stderr)


#: a local session's private temp folder, and the file in it naming the driver that owns it
TEMP_PREFIX, OWNER_FILE = "prvr-ray-", "prvr-owner.json"


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; with the PID, unique), None if it is gone
    (or a zombie: dead, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc(5), after the command name
    return None if fields[0] == "Z" else int(fields[19])  # state, starttime (field 22)


def holders(folder: Path) -> list[int]:
    """The processes (other than this one) with a file or their working folder in ``folder``."""
    inside = str(folder)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            links = [os.readlink(proc / "cwd"), *(os.readlink(fd) for fd in (proc / "fd").iterdir())]
        except OSError:  # gone meanwhile, or another user's
            continue
        if any(link == inside or link.startswith(inside + os.sep) for link in links):
            found.append(int(proc.name))
    return found


def _stop(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL for what is still there after ``grace_s`` seconds. Each process is known by
    its PID and start time, so a PID the kernel reused meanwhile for another process is never signalled."""
    started = {pid: _start_time(pid) for pid in pids}

    def alive() -> list[int]:
        return [pid for pid, start in started.items() if start is not None and _start_time(pid) == start]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and alive():
            time.sleep(0.1)


def clean_stale_sessions(root: Path | None = None) -> list[str]:
    """Stops the processes left in, and removes, each private Ray folder in ``root`` (the temp folder)
    whose owning driver is gone; a folder whose owner lives, or names none, is left alone. Returns what
    it cleaned, one line each."""
    cleaned = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
            pid, start = int(owner["pid"]), int(owner["start"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _start_time(pid) == start:
            continue
        left = holders(folder)
        _stop(left)
        shutil.rmtree(folder, ignore_errors=True)
        cleaned.append(f"{folder} of driver {pid}: {len(left)} processes stopped, folder removed")
    return cleaned


def _private_temp_dir() -> str:
    """A new private temp folder for a local Ray, naming this process as its owner."""
    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    (Path(temp_dir) / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
    return temp_dir


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
                object_store_memory: int | None = None, warm_workers: int = 0) -> Iterator[dict[str, Any]]:
    """``ray.init`` for the duration of the block: ``address`` of a running cluster, or (None) a new local
    Ray on 127.0.0.1 with ``num_cpus``/``num_gpus`` (logical GPUs are fine) in a private temp folder,
    whose workers import what a trial needs when they start, ``warm_workers`` of them started at once
    for the first trials (``search/warm_workers.py``). Yields the GCS address, whether the Ray is local, the
    cluster's resources and its live nodes. Which Ray to ask for: ``search/ray_target.py``."""
    import ray

    from search.warm_workers import SETUP_HOOK, prestart

    temp_dir = None
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    if address is None:
        os.environ.update(LOCAL_RAY_ENV)
        for key, value in LOCAL_RAY_SYSTEM_ENV.items():
            os.environ.setdefault(key, value)
        for line in clean_stale_sessions():
            print(f"cleaned up after a killed local search: {line}", file=sys.stderr)
        temp_dir = _private_temp_dir()
        try:
            context = cast("RayContext", ray.init(  # a local Ray: a RayContext
                address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                object_store_memory=object_store_memory, _temp_dir=temp_dir,
                runtime_env={"env_vars": dict(LOCAL_RAY_ENV), "worker_process_setup_hook": SETUP_HOOK},
                logging_level="WARNING",  # type: ignore[arg-type]  # annotated int; ray takes level names too
                log_to_driver=True))
            prestart(warm_workers)
        except BaseException:  # a Ray that did not start, or half did, leaves nothing behind
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
    else:
        # a RayContext (a ray:// address would give a Ray Client ClientContext, which has no address_info)
        context = cast("RayContext", ray.init(
            address=address,
            logging_level="WARNING"))  # type: ignore[arg-type]  # annotated int; ray takes level names too
    try:
        yield {"address": context.address_info.get("address"), "local": address is None,
               "resources": ray.cluster_resources(), "nodes": sum(1 for node in ray.nodes() if node["Alive"])}
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
