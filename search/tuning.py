"""What every Ray Tune run of the project shares (a search, an ablation): the trainable with its data,
tracking, resources and checkpoint fallback, the run config (storage, retries, one kept checkpoint,
status lines), the local Ray's size, and fitting or restoring the Tuner."""

from __future__ import annotations

import math
from typing import Any

from tracking.mlflow_runs import Tracking
from tracking.storage import SearchStorage


def trial_dirname(trial: Any) -> str:
    from trainables.trial import trial_dirname as dirname

    return dirname(trial.trial_id)


def local_resources(concurrency: int, cpus_per_trial: float, gpus_per_trial: float) -> dict[str, Any]:
    """``num_cpus``/``num_gpus`` of a private local Ray that runs ``concurrency`` trials at once."""
    return {"num_cpus": max(1, int(round(concurrency * cpus_per_trial))),
            "num_gpus": max(1, math.ceil(concurrency * gpus_per_trial)) if gpus_per_trial else None}


def trainable(data: Any, tracking: Tracking, storage: SearchStorage, cpus: float, gpus: float) -> Any:
    """``run_trial`` with its parameters and resources, restoring a lost checkpoint's newest sibling."""
    from ray import tune

    from search.checkpoints import with_checkpoint_fallback
    from trainables.trial import run_trial

    return tune.with_resources(
        with_checkpoint_fallback(tune.with_parameters(run_trial, data=data, tracking=tracking, results_uri=storage.uri)),
        {"cpu": cpus, "gpu": gpus})


def fit(trainable: Any, tune_config: Any, name: str, storage: SearchStorage, tracking: Tracking,
        max_failures: int, resume: bool = False) -> Any:
    """Run (or, with ``resume``, restore and continue) the Tuner; returns its ResultGrid."""
    from ray import tune

    from search.results import TrialStatus

    if resume:
        tuner = tune.Tuner.restore(storage.path, trainable, resume_errored=True, storage_filesystem=storage.filesystem)
    else:
        tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=tune.RunConfig(
            name=name, storage_path=storage.storage_path, storage_filesystem=storage.filesystem,
            callbacks=[TrialStatus(tracking)], verbose=1, failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    return tuner.fit()


__all__ = ["fit", "local_resources", "trainable", "trial_dirname"]
