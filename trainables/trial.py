"""What one Ray Tune trial runs: train its config on the node's copy of the data, reporting and
checkpointing every epoch, resuming from Tune's checkpoint after a restart.

Its reports follow the protocol of ``trainables/trial_report.py``: each epoch's validation metrics, best
val SumR so far and mean loss terms, with a checkpoint of the full training state
(``trainables.training.checkpoint``, loaded weights-only); a trial that ends on its own (max epochs or
early stopping on patience) makes one more, final report with the test metrics of its best weights; a
trial stopped by the scheduler never does, which is how the searcher tells the two apart. A trial started
again after its end report (``trial_report.END_REPORT``) repeats that report instead of training again. A trial whose
own config or training fails (bad config, NaN loss, any exception that is not I/O, S3 or Ray) ends with an error
report instead of raising, so Ray does not retry it; infrastructure errors are raised and retried
(``trainables/failures.py``).

The trial does not talk to MLflow: the search's driver writes its child run from these reports
(``tracking/trial_runs.py``), so a trial's process never imports MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from ray import tune

from trainables import warm_up
from trainables.data.source import RemoteDataset, materialize
from trainables.failures import describe, is_infrastructure_error
from trainables.freed_memory import release_freed_memory
from trainables.training.loop import SELECTION_BRANCH, SELECTION_METRIC, DataSplits, EpochReport, train
from trainables.trial_report import (
    EARLIER_EPOCHS,
    END_REPORT,
    PLACEMENT,
    REPLAYED,
    TEST_RANKS,
    epoch_report,
    error_report,
    final_report,
    split_tags,
)
from trainables.tune_checkpoints import loads, newest_checkpoint

logger = logging.getLogger(__name__)


def device_for(requested: str, gpus: float, cuda_available: bool) -> str:
    """The torch device of a trial: ``auto`` becomes ``cuda`` when Ray assigned it a GPU (a fraction too)
    and CUDA works; Ray's ``CUDA_VISIBLE_DEVICES`` makes ``cuda`` that GPU. Anything else stays as asked."""
    return "cuda" if requested == "auto" and gpus > 0 and cuda_available else requested


def _use_assigned_resources(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Torch threads = the trial's CPUs; the GPU Ray assigned (it sets CUDA_VISIBLE_DEVICES) if any.
    Also returns where the trial runs (node, GPU ids, resources), tags of its MLflow run."""
    import ray

    context = ray.get_runtime_context()
    resources = context.get_assigned_resources()
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    device = device_for(config.get("device", "auto"), resources.get("GPU", 0), torch.cuda.is_available())
    if device != config.get("device", "auto"):
        config = {**config, "device": device}
    placement = {"ray.node_id": context.get_node_id(), "ray.node_ip": ray.util.get_node_ip_address(),
                 "ray.cpus": f"{resources.get('CPU', 0):g}", "ray.gpus": f"{resources.get('GPU', 0):g}",
                 "ray.gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()), "ray.pid": str(os.getpid())}
    return config, placement


SCRATCH_PREFIX = "prvr-trial-"


def _scratch_dir() -> Path:
    """A private temp folder for the trial's checkpoint staging, named by its process id. Not in the
    trial's folder: Ray uploads that one with every checkpoint. A trial the scheduler kills cannot clean
    up, so folders of processes that no longer exist are removed first."""
    for stale in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = stale.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _unrecorded_checkpoint() -> tune.Checkpoint | None:
    """The trial's newest complete checkpoint on storage when Tune has none on record for it. Tune's
    experiment snapshot reaches storage after the checkpoints do: a driver killed in between resumes a
    trial that has checkpoints as if it had none, and its epochs would start over."""
    storage = tune.get_context().get_storage()
    newest = newest_checkpoint(storage.storage_filesystem, storage.trial_fs_path)
    if newest is None:
        return None
    logger.warning("no checkpoint of trial %s on record; resuming from %s, its newest on storage",
                   tune.get_context().get_trial_id(), newest)
    return tune.Checkpoint(newest, filesystem=storage.storage_filesystem)


def _resume_folder(folder: Path) -> Path | None:
    """``folder`` holding the checkpoint the trial resumes from: Tune's record, else its newest on storage
    (None: the trial starts at epoch 1). An unrecorded checkpoint may be one a killed driver was still
    copying; one that does not load is passed over with a warning instead of failing the trial."""
    recorded = tune.get_checkpoint()
    checkpoint = recorded or _unrecorded_checkpoint()
    if checkpoint is None:
        return None
    checkpoint.to_directory(str(folder))
    if recorded is None and not loads(folder):
        logger.warning("checkpoint %s does not load (cut short by a lost driver?): trial %s starts over",
                       checkpoint.path, tune.get_context().get_trial_id())
        return None
    return folder


def _write_to_storage(name: str, payload: dict[str, Any]) -> None:
    """``payload`` as the JSON file ``name`` of the trial's folder in the search's storage (for the driver,
    and for this trial if it is started again)."""
    storage = tune.get_context().get_storage()
    filesystem = storage.storage_filesystem
    filesystem.create_dir(storage.trial_fs_path, recursive=True)
    with filesystem.open_output_stream(f"{storage.trial_fs_path}/{name}") as stream:
        stream.write(json.dumps(payload).encode())


def stored_end_report() -> dict[str, Any] | None:
    """The end report this trial wrote to its folder (``END_REPORT``) before making it, if it ended once
    already; None if it never did, or if the file is unreadable (a worker killed while writing it)."""
    storage = tune.get_context().get_storage()
    try:
        with storage.storage_filesystem.open_input_stream(f"{storage.trial_fs_path}/{END_REPORT}") as stream:
            report = json.loads(stream.read())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return report if isinstance(report, dict) else None


def history_metrics(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The reports of a run's epochs rebuilt from its history, the best so far by the loop's rule."""
    out, best_score, best_epoch = [], float("-inf"), 0
    for entry in history:
        if entry["val"][SELECTION_BRANCH][SELECTION_METRIC] > best_score:
            best_score, best_epoch = entry["val"][SELECTION_BRANCH][SELECTION_METRIC], entry["epoch"]
        out.append(epoch_report(entry["epoch"], entry["val"]["fused"], entry["loss"], best_epoch, best_score))
    return out


def run_trial(config: dict[str, Any], data: DataSplits | RemoteDataset, allow_val_test_overlap: bool = False) -> None:
    """Ray Tune function trainable (``tune.with_parameters(run_trial, data=...)``). The search's driver
    keeps the trial's MLflow child run from these reports (``tracking.trial_runs``); the first report of
    each start of the trial also says where it runs (``PLACEMENT``). A val split that overlaps test
    fails the trial unless ``allow_val_test_overlap`` (``train``)."""
    config, _ = split_tags(config)
    config, placement = _use_assigned_resources(config)
    placement.update(warm_up.claim())  # this worker is taken; how long it had been ready for a trial
    first: dict[str, object] = {PLACEMENT: placement}

    def report(metrics: dict[str, Any], checkpoint: tune.Checkpoint | None = None) -> None:
        tune.report({**metrics, **first}, checkpoint=checkpoint)
        first.clear()

    def report_end(metrics: dict[str, Any]) -> None:
        _write_to_storage(END_REPORT, metrics)  # before the report: a driver lost after it cannot rerun the trial
        report(metrics)

    ended = stored_end_report()
    if ended is not None:  # it had ended; Tune's snapshot did not record it (a driver killed in between)
        logger.warning("trial %s had ended: its end report is made again, it does not train again",
                       tune.get_context().get_trial_id())
        report({**ended, REPLAYED: True})
        return

    scratch = _scratch_dir()
    try:
        resume_from = _resume_folder(scratch / "resume")

        def on_epoch(epoch: EpochReport) -> None:
            metrics = epoch_report(epoch.epoch, epoch.val["fused"], epoch.train_loss, epoch.best_epoch,
                                   epoch.best_score)
            if resume_from is not None and first:
                first[EARLIER_EPOCHS] = history_metrics(epoch.history[:-1])
            folder = scratch / f"epoch-{epoch.epoch}"
            epoch.save_checkpoint(folder)
            # from_directory returns a cls(...), annotated as ray.train's base Checkpoint
            report(metrics, cast(tune.Checkpoint, tune.Checkpoint.from_directory(str(folder))))
            shutil.rmtree(folder, ignore_errors=True)

        try:
            result = train(config, materialize(data), on_epoch=on_epoch, resume_from=resume_from,
                           allow_val_test_overlap=allow_val_test_overlap)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise  # Ray retries the trial from its last checkpoint (FailureConfig.max_failures)
            # the trial's own: its config, a NaN loss, a corrupt shard, a bug. The metric is there for the
            # scheduler's strict check; the searcher tells this trial as failed
            report_end(error_report(describe(exc)))
            return
        last = result.history[-1]
        _write_to_storage(TEST_RANKS, {"query_ids": materialize(data).test.query_ids,
                                       "ranks": result.test_ranks["fused"].tolist()})
        report_end(final_report(last["epoch"], last["val"]["fused"], result.val["fused"], result.test["fused"],
                            result.best_epoch, result.stopped_early))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        release_freed_memory()  # this worker runs the next trial: it starts without this one's freed heap
