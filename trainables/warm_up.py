"""A trial worker's warm-up: the modules a trial needs, imported when its Ray worker process starts.

A trial runs in a Ray worker process of its own. Started cold, that process spends 3-5 s before the
trial's first epoch importing torch (~1 s), Ray Tune (~0.8 s) and ``torch._dynamo`` (~1 s, which
``torch.optim`` imports on an optimiser's first use), all of it on the trial's clock (MLflow is the
driver's: ``tracking/trial_runs.py``). A local Ray runs ``import_trial_modules`` as its workers'
``worker_process_setup_hook`` and starts workers ahead of the trials (``search/warm_workers.py``), so a
trial finds a worker that has already paid for them while the driver was setting up its search.

A ready worker leaves a marker file named by its process id in the session's ``warm-workers`` folder;
the trial that takes the worker removes it (``claim``), so the markers present are the ready workers.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: what a trial imports on its way to its first epoch, heaviest first
TRIAL_MODULES = ("torch", "torch._dynamo", "ray.tune", "trainables.trial")
#: the folder of ready workers' markers, under the Ray session's folder
MARKERS = "warm-workers"

#: when this process finished its warm-up (``time.time()``); None: it did not run one
ready_at: float | None = None


def markers_dir() -> Path | None:
    """The ready workers' markers folder of the Ray session this process belongs to (None: no session)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return None if node is None else Path(node.get_session_dir_path()) / MARKERS


def import_trial_modules() -> None:
    """Ray's ``worker_process_setup_hook``: import ``TRIAL_MODULES`` and mark this worker ready. Never
    raises (a hook that raises kills the worker): a module that fails here fails again in the trial,
    which reports the error as its own."""
    global ready_at
    start = time.perf_counter()
    for name in TRIAL_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the trial's own import reports it
            logger.warning("trial worker warm-up: importing %s failed: %s", name, exc)
            return
    ready_at = time.time()
    folder = markers_dir()
    if folder is not None:
        try:
            folder.mkdir(exist_ok=True)
            (folder / str(os.getpid())).write_text(f"{time.perf_counter() - start:.3f}\n")
        except OSError as exc:
            logger.warning("trial worker warm-up: no ready marker: %s", exc)


def claim() -> dict[str, str]:
    """Called by a trial when it starts: this worker is no longer free. Returns tags for the trial's run:
    ``ray.worker_ready_s``, how long the worker had been ready before this trial began (0 for a worker
    started for the trial; more for one started ahead). Only the worker's first trial gets it: a trial
    in a reused worker did not wait for its warm-up."""
    global ready_at
    if ready_at is None:
        return {}
    waited, ready_at = max(0.0, time.time() - ready_at), None
    folder = markers_dir()
    if folder is not None:
        (folder / str(os.getpid())).unlink(missing_ok=True)
    return {"ray.worker_ready_s": f"{waited:.2f}"}


__all__ = ["MARKERS", "TRIAL_MODULES", "claim", "import_trial_modules", "markers_dir"]
