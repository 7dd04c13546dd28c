"""What every Ray Tune run of the project shares (a search, an ablation): the trainable with its data,
tracking, resources and checkpoint fallback, the run config (storage, retries, one kept checkpoint,
status lines, Ray's own output off), the local Ray's size, and fitting or restoring the Tuner."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tracking.mlflow_runs import Tracking
from tracking.storage import SearchStorage
from trainables.errors import InputError

#: a finished trial's worker process runs the next trial that asks for the same resources: no new process
#: importing torch and the trainable (a trial after the first on a node starts its first epoch in about
#: 1 s instead of 3-4 s; benchmarks/overhead.py)
REUSE_ACTORS = True

#: Ray Tune's output engine: "0" is the one whose ``verbose=0`` prints nothing. Ray's default engine prints,
#: even silent, a TensorBoard hint at a driver staging folder that is deleted when the run ends; the
#: search's own lines (search/progress.py, search/results.py) say what a person needs. Set it to 1 to
#: get Ray's engine back (``fit`` only sets it when it is unset).
RAY_OUTPUT_ENV, RAY_QUIET_OUTPUT = "RAY_AIR_NEW_OUTPUT", "0"


def _second_interrupt(signum: int, frame: Any) -> None:
    """SIGINT while a Tune run is being stopped: what Python does by default (Tune's own handler, on the
    first Ctrl-C, stops the run gracefully and then puts back the handler it found: this one)."""
    raise KeyboardInterrupt


@contextmanager
def watching_interrupts() -> Iterator[None]:
    """For the duration of a Tune run: makes ``interrupt_received`` tell whether Tune got a Ctrl-C (its
    handler returns the run's results as if it ended, every trial TERMINATED). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _second_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupt_received() -> bool:
    """Inside ``watching_interrupts`` (during or right after the Tune run): whether Tune received SIGINT,
    i.e. whether its handler (installed when the run starts) has put this module's back."""
    in_main = threading.current_thread() is threading.main_thread()
    return in_main and signal.getsignal(signal.SIGINT) is _second_interrupt


def trial_dirname(trial: Any) -> str:
    from trainables.trial_report import trial_dirname as dirname

    return dirname(trial.trial_id)


def ray_resources(address: str | None, concurrency: int, cpus_per_trial: float, gpus_per_trial: float
                  ) -> dict[str, Any]:
    """``ray_session`` arguments: none for a running cluster (its own resources and autoscaler); for a
    private local Ray, CPUs for ``concurrency`` trials, the machine's GPUs (Ray detects them; a trial
    asking for a GPU on a machine with none would wait forever, so that is an error here) and a worker
    started ahead for each of the first ``concurrency`` trials."""
    if address is not None:
        return {}
    if gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--gpus-per-trial {gpus_per_trial:g}: this machine has no GPU (CUDA is not available); "
                             "run on a cluster with GPUs (--ray-address) or leave it at 0")
    return {"num_cpus": max(1, int(round(concurrency * cpus_per_trial))), "num_gpus": None,
            "warm_workers": concurrency}


def trainable(data: Any, cpus: float, gpus: float, allow_val_test_overlap: bool = False) -> Any:
    """``run_trial`` with its data and resources, restoring a lost checkpoint's newest sibling; a val split
    that overlaps test fails each trial unless ``allow_val_test_overlap``."""
    from ray import tune

    from search.checkpoints import with_checkpoint_fallback
    from trainables.trial import run_trial

    return tune.with_resources(with_checkpoint_fallback(tune.with_parameters(
        run_trial, data=data, allow_val_test_overlap=allow_val_test_overlap)),
                               {"cpu": cpus, "gpu": gpus})


def trial_callbacks(tracking: Tracking, storage: SearchStorage, scheduler: Any = None) -> list[Any]:
    """The Tune callbacks every search has: the trials' result log (Tune's JSON logger, without replayed end
    reports), their MLflow child runs and their status lines (a trial that ``scheduler`` stopped is tagged
    with its rung when the scheduler has rungs: ``rung_at``)."""
    from search.result_log import ResultLog
    from search.results import TrialStatus
    from tracking.trial_runs import TrialRuns

    return [ResultLog(), TrialRuns(tracking, storage.uri),
            TrialStatus(tracking, getattr(scheduler, "rung_at", None))]


def fit(trainable: Any, tune_config: Any, name: str, storage: SearchStorage, tracking: Tracking,
        max_failures: int, resume: bool = False, callbacks: list[Any] | None = None, stage: str | None = None,
        trust_storage: bool = False) -> Any:
    """Run (or, with ``resume``, restore and continue) the Tuner; returns its ResultGrid. ``callbacks``:
    Tune callbacks besides the status lines (e.g. a benchmark's timings; not kept for a restore). The
    digests of the state Tune writes are recorded in the parent run as ``stage``'s (None: the search's), and
    a restore first checks the stored state against them unless ``trust_storage`` (search/trusted_state.py)."""
    import sys

    from ray import tune

    from search import trusted_state
    from search.memory_kills import report_memory_kills_as_dead_workers
    from search.tune_state import VERIFIED_RAY, write_experiment_state_atomically
    from search.warm_workers import wait_until_ready

    if not write_experiment_state_atomically():  # a driver killed mid-save must leave a state to resume from
        print(f"warning: Ray is not {VERIFIED_RAY}: the Tune state is not recorded in MLflow, and --resume will "
              f"need {trusted_state.TRUST_FLAG}", file=sys.stderr)
    if not report_memory_kills_as_dead_workers():  # else a memory kill ends the whole run (search/memory_kills.py)
        print(f"warning: Ray is not {VERIFIED_RAY}: a trial whose worker Ray's memory monitor kills ends the Tune "
              "run", file=sys.stderr)
    recorder = trusted_state.StateRecorder(tracking, stage)
    wait_until_ready()  # the workers a local session started ahead, before Tune asks for trial workers
    if resume:
        if not trust_storage:  # checked before Ray too (search/run.py); again here, just before it is loaded
            tags = tracking.client().get_run(tracking.parent_run_id).data.tags
            trusted_state.check_state(storage, tags, stage, tracking.search)
        tuner = tune.Tuner.restore(storage.path, trainable, resume_errored=True, storage_filesystem=storage.filesystem)
    else:
        tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=tune.RunConfig(
            name=name, storage_path=storage.storage_path, storage_filesystem=storage.filesystem,
            callbacks=[*trial_callbacks(tracking, storage, tune_config.scheduler), *(callbacks or [])], verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        recorder.record(trusted_state.stored_digests(storage))  # tuner.pkl, written by the Tuner to the storage
    trusted_state.current = recorder.record
    os.environ.setdefault(RAY_OUTPUT_ENV, RAY_QUIET_OUTPUT)  # read by Tuner.fit, on this driver
    try:
        return tuner.fit()
    finally:
        trusted_state.current = None


__all__ = ["REUSE_ACTORS", "fit", "interrupt_received", "watching_interrupts", "ray_resources", "trainable",
           "trial_callbacks", "trial_dirname"]
