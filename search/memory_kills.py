"""A trial whose worker Ray's memory monitor killed: retried like a lost worker, not a crashed search.

When a node's memory use passes ``RAY_memory_usage_threshold`` (0.95 by default), Ray's memory monitor
kills a worker (the newest task's, by its default policy) and the task's future raises
``ray.exceptions.OutOfMemoryError``. Ray Tune 2.60's actor manager knows two task failures only,
``RayActorError`` (the worker died: the trial is retried, ``FailureConfig.max_failures``) and
``RayTaskError`` (the trainable raised); anything else it re-raises as ``RuntimeError: Caught unexpected
exception``, which ends ``Tuner.fit`` and the whole search with a traceback (a worker killed while it
starts fails its trial with Ray's 60-line message instead). A memory kill is a dead
worker, so ``report_memory_kills_as_dead_workers`` hands it to Tune as one: the trial is retried from
its last checkpoint (the kill depends on what else ran on the node then) and, once its retries are spent,
fails with a one-line message that says what happened and what to change.
"""

from __future__ import annotations

import re
from typing import Any

from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError

from search import ray_version

#: what to change, appended to the message of every memory kill
ADVICE = "run fewer trials at once (--concurrency), or lower batch_size / hidden_size for this backbone"


class WorkerKilledForMemory(RayActorError):
    """A trial's worker killed by Ray's memory monitor, as Tune's actor manager handles a dead worker."""

    def __init__(self, kill: OutOfMemoryError) -> None:
        super().__init__(error_msg=describe_kill(str(kill)))
        self.kill = kill


def describe_kill(message: str) -> str:
    """One line for Ray's many-line memory-kill message: the node's use and limit when Ray gave them."""
    usage = re.search(r"was ([\d.]+\s*[KMGT]?B) used / ([\d.]+\s*[KMGT]?B) limit", message)
    where = f" (node memory {usage.group(1)} used of {usage.group(2)})" if usage else ""
    return f"the trial's worker was killed by Ray's memory monitor{where}: {ADVICE}"


def _as_dead_worker(exception: Exception) -> Exception:
    if isinstance(exception, OutOfMemoryError) and not isinstance(exception, (RayActorError, RayTaskError)):
        return WorkerKilledForMemory(exception)
    return exception


def _actor_task_failed(self: Any, tracked_actor_task: Any, exception: Exception) -> None:
    _RAYS_METHODS["_actor_task_failed"](self, tracked_actor_task, _as_dead_worker(exception))


def _actor_start_failed(self: Any, tracked_actor: Any, exception: Exception) -> None:
    _RAYS_METHODS["_actor_start_failed"](self, tracked_actor, _as_dead_worker(exception))


#: Ray's own methods of ``RayActorManager`` that the ones above wrap: a running trial's task failed (Ray
#: re-raises a memory kill), and a trial worker's start failed (Ray fails the trial with the raw message)
_RAYS_METHODS: dict[str, Any] = {}


def report_memory_kills_as_dead_workers() -> bool:
    """Makes this process's Tune runs treat a memory kill as a dead worker (idempotent); False, and nothing
    changed, on a Ray other than ``VERIFIED_RAY`` (whose actor manager may differ)."""
    if not ray_version.is_verified_ray():
        return False
    from ray.air.execution._internal.actor_manager import RayActorManager

    for name, wrapper in (("_actor_task_failed", _actor_task_failed), ("_actor_start_failed", _actor_start_failed)):
        if name not in _RAYS_METHODS:
            _RAYS_METHODS[name] = getattr(RayActorManager, name)
            setattr(RayActorManager, name, wrapper)  # a deliberate patch of Ray's method
    return True


__all__ = ["ADVICE", "WorkerKilledForMemory", "describe_kill", "report_memory_kills_as_dead_workers"]
