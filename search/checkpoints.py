"""Restoring a trial whose recorded checkpoint is gone: fall back to its newest checkpoint that exists.

Ray Tune deletes a trial's older checkpoint (``CheckpointConfig.num_to_keep``) as soon as a new one is
registered, and uploads the experiment snapshot that refers to the new one asynchronously afterwards. A
driver killed in between leaves a snapshot on storage that points at a deleted (or half-deleted)
checkpoint, and Tune then fails the trial on ``--resume`` ("Could not recover from checkpoint as it does
not exist on storage anymore", or a checkpoint folder without its file; seen in about one resume in
three from S3 in the tests). :func:`with_checkpoint_fallback` wraps the trainable
so that such a trial restores the newest complete checkpoint in its folder instead (or starts over when
there is none): a trial's epochs never restart once a checkpoint of it exists.
"""

from __future__ import annotations

import logging
from typing import Any

from trainables.tune_checkpoints import is_complete, newest_checkpoint

logger = logging.getLogger(__name__)


def stand_in(filesystem: Any, checkpoint_path: str) -> bool:
    """Make ``checkpoint_path`` hold a complete checkpoint: itself when it is complete, else a copy of the
    trial's newest complete one. False when the trial has none (it then starts over)."""
    if is_complete(filesystem, checkpoint_path):
        return True
    newest = newest_checkpoint(filesystem, checkpoint_path.rstrip("/").rsplit("/", 1)[0])
    if newest is None:
        logger.warning("checkpoint %s is gone or incomplete and the trial has no other: it starts over",
                       checkpoint_path)
        return False
    logger.warning("checkpoint %s is gone or incomplete: restoring %s in its place", checkpoint_path, newest)
    from pyarrow import fs

    filesystem.create_dir(checkpoint_path, recursive=True)  # a local copy does not create its target folder
    fs.copy_files(newest, checkpoint_path, source_filesystem=filesystem, destination_filesystem=filesystem)
    return True


def with_checkpoint_fallback(trainable: Any) -> type:
    """``trainable`` (a Tune function trainable, or its class) as a class whose restore puts the trial's
    newest complete checkpoint where the experiment snapshot expects one that is gone, then restores it
    (so Tune's own bookkeeping, including deleting that checkpoint later, stays consistent)."""
    from ray.tune.trainable.function_trainable import wrap_function

    if not isinstance(trainable, type):
        trainable = wrap_function(trainable)

    class CheckpointFallback(trainable):
        def restore(self, checkpoint_path: Any) -> None:
            checkpoint = getattr(checkpoint_path, "checkpoint", None)
            if checkpoint is not None and not stand_in(checkpoint.filesystem, checkpoint.path):
                return None
            return super().restore(checkpoint_path)

    CheckpointFallback.__name__ = CheckpointFallback.__qualname__ = trainable.__name__
    return CheckpointFallback
