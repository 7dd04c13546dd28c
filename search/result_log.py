"""The trials' ``result.json`` in the search's storage, written once per report even when a trial ends twice.

A driver killed after a trial's end report reached ``result.json`` but before Tune's experiment snapshot
recorded the trial as ended resumes that trial; the trial then repeats its stored end report, marked
``REPLAYED`` (``trainables/trial.py``), instead of training again. Tune needs that report (it is the trial's
last result for the searcher, the scheduler and the result grid), but ``result.json`` already holds it:
:class:`ResultLog`, Ray's own JSON logger otherwise, writes a replayed report only when the file lacks
it (the driver died before writing it), without the mark. Tune adds its default JSON logger only when the
callbacks hold none, so this one takes its place.

Ray's logger also restores a resumed trial's ``result.json`` from the storage only when Tune has a checkpoint
of it on record; a trial resumed from a checkpoint Tune had no record of (``trainables/trial.py``) would
start an empty file, which the next upload writes over the stored one. This one restores it whenever the
storage has it and the driver's staging folder does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.logger import JsonLoggerCallback
from ray.tune.result import EXPR_RESULT_FILE

from trainables.trial_report import FINISHED, REPLAYED


def has_end_report(result_file: Path) -> bool:
    """Whether the last report in ``result_file`` (Tune's ``result.json`` of a trial) is an end report."""
    try:
        lines = [line for line in result_file.read_text().splitlines() if line.strip()]
        return bool(lines) and bool(json.loads(lines[-1]).get(FINISHED))
    except (OSError, json.JSONDecodeError):
        return False


def _staged(trial: Trial, file_name: str) -> Path:
    """The trial's file ``file_name`` in the driver's staging folder (Tune names the folder before loggers run)."""
    return Path(str(trial.local_path), file_name)


class ResultLog(JsonLoggerCallback):
    """Ray's ``JsonLoggerCallback`` that does not write a replayed end report a second time, and keeps the
    stored reports of a trial resumed without a checkpoint on record."""

    def _restore_from_remote(self, file_name: str, trial: Trial) -> None:
        from pyarrow import fs

        storage = trial.storage
        if trial.checkpoint is not None or storage is None or _staged(trial, file_name).exists():
            return super()._restore_from_remote(file_name, trial)
        remote = f"{storage.trial_fs_path}/{file_name}"
        if storage.storage_filesystem.get_file_info(remote).type == fs.FileType.File:
            fs.copy_files(remote, _staged(trial, file_name).as_posix(),
                          source_filesystem=storage.storage_filesystem)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        if result.get(REPLAYED):
            if trial not in self._trial_files:
                self.log_trial_start(trial)  # restores result.json from the storage
            self._trial_files[trial].flush()
            if has_end_report(_staged(trial, EXPR_RESULT_FILE)):
                return
            result = {k: v for k, v in result.items() if k != REPLAYED}
        super().log_trial_result(iteration, trial, result)


__all__ = ["ResultLog", "has_end_report"]
