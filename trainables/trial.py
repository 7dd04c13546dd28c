"""What one Ray Tune trial runs: train its config on the node's copy of the data, reporting and
checkpointing every epoch, resuming from Tune's checkpoint after a restart.

Each epoch reports the validation metrics of that epoch (``val_*``), the best validation SumR so far
(``best_val_sumr``, the metric the searcher and ASHA use) and the mean loss terms, with a checkpoint of
the full training state (``trainables.training.checkpoint``, loaded weights-only). A trial that ends on
its own (max epochs or early stopping on patience) makes one more report with ``finished: True`` and the
test metrics of its best weights; a trial stopped by the scheduler never does, which is how the searcher
tells the two apart. A trial whose own config or training fails (bad config, NaN loss, any exception
that is not I/O) ends with one report carrying ``trial_error`` instead of raising, so Ray does not retry
it; infrastructure errors are raised and retried (``trainables/failures.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from tracking.mlflow_runs import Tracking, child_run, end_run, log_dict, log_metrics, set_tags
from trainables.data.source import RemoteDataset, materialize
from trainables.evaluation.metrics import RECALL_KS
from trainables.plugins import list_plugins
from trainables.failures import describe, is_infrastructure_error
from trainables.training.loop import DataSplits, EpochReport, train
from trainables.training.stored_checkpoints import loads, newest_checkpoint

METRIC = "best_val_sumr"
MODE = "max"
TIME_ATTR = "epoch"
logger = logging.getLogger(__name__)
COLUMNS = [f"R@{k}" for k in RECALL_KS] + ["SumR"]
#: config keys ``tag.<name>`` are not settings: they become tags of the trial's child run (an ablation's cell)
TAG_PREFIX = "tag."
#: the child run's artifact of per-query test ranks (fused score; ablation statistics are paired on them)
TEST_RANKS = "test_ranks.json"


def metric_key(prefix: str, column: str) -> str:
    """``val`` + ``R@1`` -> ``val_r1``; ``test`` + ``SumR`` -> ``test_sumr``."""
    return f"{prefix}_{column.lower().replace('@', '')}"


def flat_metrics(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {metric_key(prefix, c): float(metrics[c]) for c in COLUMNS}


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


def trial_dirname(trial_id: str) -> str:
    """The folder of a trial's results and checkpoints under the search's storage."""
    return f"trial_{trial_id}"


def run_trial(config: dict[str, Any], data: DataSplits | RemoteDataset, tracking: Tracking | None = None,
              results_uri: str | None = None) -> None:
    """Ray Tune function trainable (``tune.with_parameters(run_trial, data=..., tracking=...)``); with
    ``tracking``, the trial logs to its own child run of the search's parent run, tagged with where its
    checkpoints are (under ``results_uri``, the search's storage: a local folder or ``s3://...``)."""
    tags = {k[len(TAG_PREFIX):]: v for k, v in config.items() if k.startswith(TAG_PREFIX)}
    config, placement = _use_assigned_resources({k: v for k, v in config.items() if not k.startswith(TAG_PREFIX)})
    context = tune.get_context()
    run_id = None
    if tracking is not None:
        run_id = child_run(tracking, context.get_trial_id(), config, list_plugins(), tags)
        where = context.get_trial_dir() if results_uri is None else \
            f"{results_uri.rstrip('/')}/{trial_dirname(context.get_trial_id())}"
        set_tags(tracking, run_id, {"checkpoints": where, **placement})  # a restarted trial: where it runs now

    def log(metrics: dict[str, Any], step: int) -> None:
        if run_id is not None:
            log_metrics(tracking, run_id, metrics, step, int(time.time() * 1000))

    scratch = _scratch_dir()
    try:
        resume_from = _resume_folder(scratch / "resume")

        def on_epoch(report: EpochReport) -> None:
            metrics = {TIME_ATTR: report.epoch, METRIC: report.best_score, "best_epoch": report.best_epoch,
                       **flat_metrics("val", report.val["fused"]),
                       **{f"loss_{name}": value for name, value in report.train_loss.items()}}
            folder = scratch / f"epoch-{report.epoch}"
            report.save_checkpoint(folder)
            log(metrics, report.epoch)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))
            shutil.rmtree(folder, ignore_errors=True)

        try:
            result = train(config, materialize(data), on_epoch=on_epoch, resume_from=resume_from)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise  # Ray retries the trial from its last checkpoint (FailureConfig.max_failures)
            error = describe(exc)  # the trial's own: its config, a NaN loss, a corrupt shard, a bug
            if run_id is not None:
                set_tags(tracking, run_id, {"error": error})
                end_run(tracking, run_id, "FAILED")
            # the metric is there for the scheduler's strict check; the searcher tells this trial as failed
            tune.report({"trial_error": error, "finished": True, METRIC: float("-inf")})
            return
        last = result.history[-1]
        final = {TIME_ATTR: last["epoch"], METRIC: result.val.get("fused", {}).get("SumR", float("nan")),
                 "best_epoch": result.best_epoch, **flat_metrics("val", last["val"]["fused"]),
                 **flat_metrics("best_val", result.val["fused"]), **flat_metrics("test", result.test["fused"])}
        if run_id is not None:
            log({k: v for k, v in final.items() if k.startswith(("best_val_", "test_"))}, last["epoch"])
            log_dict(tracking, run_id, {"query_ids": materialize(data).test.query_ids,
                                        "ranks": result.test_ranks["fused"].tolist()}, TEST_RANKS)
            end_run(tracking, run_id, "FINISHED")
        tune.report({**final, "finished": True, "stopped_early": result.stopped_early})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
