"""Trial workers started ahead of the trials on a local Ray, warmed up while the driver sets up its search.

Tune starts each trial's actor in a new Ray worker process, which imports torch, Ray Tune and
``torch._dynamo`` (about 3 s) before the trial's first epoch (``trainables/warm_up.py``). Ray can start
workers before anyone asks for them (its raylet's ``PrestartWorkers`` call), but it hands an actor only a
worker started for the same runtime environment, and Tune gives its actors one of their own
(``ray.tune.execution.class_cache``: the job's environment variables plus ``PL_DISABLE_FORK`` and the AWS
variables set in the driver). So the local session's job carries the warm-up as its
``worker_process_setup_hook`` and ``prestart`` asks the raylet for workers with exactly the runtime
environment a Tune actor of this driver gets: when Tune launches a trial, a worker that has already
imported everything is waiting. Anything that goes wrong here costs only the head start: a warning, and
trials start their workers as before.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from trainables.warm_up import markers_dir

if TYPE_CHECKING:
    from ray._private.node import Node

#: the job's ``worker_process_setup_hook``: every worker of a local search imports what a trial needs
SETUP_HOOK = "trainables.warm_up.import_trial_modules"
#: how long Ray keeps a started-ahead worker even when idle (it stays until the session ends anyway
#: while there are no more idle workers than CPUs)
KEEP_ALIVE_S = 3600
#: the longest the first Tune run of a session waits for its started-ahead workers (they take 3-5 s)
READY_TIMEOUT_S = 30.0

#: workers started ahead in this session and not yet waited for (``wait_until_ready``)
_pending = 0


def tune_actor_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables Ray Tune gives its trial actors (``_ActorClassCache.get``)."""
    from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE

    environ = os.environ if environ is None else environ
    return {**DEFAULT_ENV_VARS, **{k: environ[k] for k in ENV_VARS_TO_PROPAGATE if k in environ}}


def trial_runtime_env(job_runtime_env: dict[str, Any], environ: Mapping[str, str] | None = None) -> str:
    """The serialized runtime environment of a Tune trial actor in a job with ``job_runtime_env``: Ray
    merges the actor's environment variables into the job's and serializes the result as compact JSON
    with sorted keys; the raylet matches workers to actors by a hash of exactly this string."""
    merged = {**job_runtime_env,
              "env_vars": {**job_runtime_env.get("env_vars", {}), **tune_actor_env_vars(environ)}}
    return json.dumps(merged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prestart(count: int, keep_alive_s: int = KEEP_ALIVE_S) -> bool:
    """Ask this node's raylet to start ``count`` workers for this driver's Tune trials; they warm up in
    the background. False (with a warning) when that is not possible."""
    global _pending
    if count < 1:
        return False
    try:
        import grpc
        import ray
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2

        # ray leaves _global_node unannotated (= None until ray.init, which the session has run); a None would
        # fail below with an AttributeError, caught as any other error
        node = cast("Node", ray._private.worker._global_node)
        serialized = trial_runtime_env(dict(ray.get_runtime_context().runtime_env))
        # the generated *_pb2 modules build their message classes at import: mypy sees none of them
        request = node_manager_pb2.PrestartWorkersRequest(  # type: ignore[attr-defined]  # built at import
            language=common_pb2.Language.PYTHON,  # type: ignore[attr-defined]  # built at import
            job_id=bytes.fromhex(ray.get_runtime_context().get_job_id()),
            runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(  # type: ignore[attr-defined]  # built at import
                serialized_runtime_env=serialized),
            keep_alive_duration_secs=keep_alive_s, num_workers=count)
        with grpc.insecure_channel(f"{node.node_ip_address}:{node.node_manager_port}") as channel:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
        _pending = count
    except Exception as exc:  # noqa: BLE001 - an optimisation: trials start their own workers instead
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"warning: no trial workers started ahead ({type(exc).__name__}: {first}); each trial starts its own",
              file=sys.stderr)
        return False
    return True


def ready_workers() -> list[int]:
    """Process ids of this session's started-ahead workers that have warmed up and await a trial."""
    folder = markers_dir()
    return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) if folder and folder.is_dir() else []


def wait_until_ready(timeout_s: float = READY_TIMEOUT_S, poll_s: float = 0.1) -> int:
    """Before the session's first Tune run: wait until the workers started ahead are ready (at most
    ``timeout_s``); returns how many are. A trial launched while they still import would make Ray start
    another worker beside them, twice the work on a busy machine; waiting costs nothing, since a worker
    started for the trial would take longer than the head-started one still needs."""
    global _pending
    expected, _pending = _pending, 0
    deadline = time.monotonic() + timeout_s
    while expected and len(ready_workers()) < expected and time.monotonic() < deadline:
        time.sleep(poll_s)
    ready = len(ready_workers()) if expected else 0
    if ready < expected:
        print(f"warning: {ready} of {expected} trial workers started ahead were ready after {timeout_s:g} s; "
              "the trials start their own", file=sys.stderr)
    return ready


__all__ = ["KEEP_ALIVE_S", "SETUP_HOOK", "prestart", "ready_workers", "trial_runtime_env", "tune_actor_env_vars",
           "wait_until_ready"]
