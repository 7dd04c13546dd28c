"""A trial's checkpoints where Ray Tune stores them (``<search>/trial_<id>/checkpoint_NNNNNN/``, on a local
folder or S3 through a pyarrow filesystem): which are complete and which is the newest.

Tune's experiment snapshot, the record of each trial's latest checkpoint, reaches storage later than the
checkpoints themselves; after a killed driver it can name a checkpoint that is already deleted, or none
for a trial that has one. The trial (``trainables/trial.py``) and the restore fallback
(``search/checkpoints.py``) then go by what is really on storage, through these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainables.training.checkpoint import CHECKPOINT_NAME, load_checkpoint


def _checkpoint_file(filesystem: Any, folder: str) -> Any | None:
    """The FileInfo of ``folder``'s checkpoint file when it is there and not empty (an S3 object is there
    whole or not at all; a local one is renamed into place when written), else None."""
    from pyarrow import fs

    info = filesystem.get_file_info(f"{folder.rstrip('/')}/{CHECKPOINT_NAME}")
    return info if info.type == fs.FileType.File and info.size > 0 else None


def is_complete(filesystem: Any, folder: str) -> bool:
    """``folder`` holds a checkpoint file."""
    return _checkpoint_file(filesystem, folder) is not None


def newest_checkpoint(filesystem: Any, trial_path: str) -> str | None:
    """The newest ``checkpoint_*`` folder under ``trial_path`` that holds a complete checkpoint file: by the
    file's modification time, then by Tune's index (a trial resumed from an unrecorded checkpoint
    numbers its next ones from the recorded index again, so names alone can mislead)."""
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(trial_path, allow_not_found=True))
    files = {i.path: _checkpoint_file(filesystem, i.path) for i in infos
             if i.type == fs.FileType.Directory and i.base_name.startswith("checkpoint_")}
    complete = {folder: info for folder, info in files.items() if info is not None}
    return max(complete, key=lambda f: (complete[f].mtime_ns or 0, f), default=None)


def loads(folder: str | Path) -> bool:
    """The checkpoint in a local ``folder`` loads (weights-only): not cut short, not another format."""
    try:
        load_checkpoint(folder)
    except (OSError, ValueError):
        return False
    return True


__all__ = ["is_complete", "loads", "newest_checkpoint"]
