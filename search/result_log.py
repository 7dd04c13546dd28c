"""The trials' ``result.json`` in the search's storage, written once per report even when a trial ends twice.

A driver killed after a trial's end report reached ``result.json`` but before Tune's experiment snapshot
recorded the trial as ended resumes that trial; the trial then repeats its stored end report, marked
``REPLAYED`` (``trainables/trial.py``), instead of training again. Tune needs that report (it is the trial's
last result for the searcher, the scheduler and the result grid), but ``result.json`` already holds it:
:class:`ResultLog`, Ray's own JSON logger otherwise, writes a replayed report only when the file lacks
it (the driver died before writing it), without the mark. Tune adds its default JSON logger only when the
callbacks hold none, so this one takes its place.

Ray's logger also restores a resumed trial's ``result.json`` from the storage only when Tune has a checkpoint
of it on record, into the driver's staging folder; a trial resumed from a checkpoint Tune had no record of
(``trainables/trial.py``) would start from whatever that folder holds: nothing (the next upload then writes
an empty file over the stored one), or, on a cluster, where the resumed driver's staging folder is the killed
driver's (the same Ray session and experiment), the killed driver's copy with reports it never uploaded,
of epochs the trial then runs again. This one starts every trial from the storage's copy when there is one.

A trial resumed from an older checkpoint than its last reported epoch (Tune's record of its checkpoint lags
its results: a killed driver's last upload, a Ray task that can finish after the driver died, may bring
results newer than its snapshot) runs those epochs again: the file keeps the first report of each epoch
(training resumes exactly, ``tests/test_resume_exact.py``), so it holds each epoch once, in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.logger import JsonLoggerCallback
from ray.tune.result import EXPR_RESULT_FILE

from trainables.trial_report import FINISHED, REPLAYED, TIME_ATTR


def read_reports(result_file: Path) -> list[dict[str, Any]]:
    """The reports in ``result_file`` (Tune's ``result.json`` of a trial; a line being written is left out;
    [] when there is no file)."""
    try:
        lines = result_file.read_text().splitlines()
    except OSError:
        return []
    reports = []
    for line in lines:
        try:
            reports.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return reports


def last_epoch(result_file: Path) -> int:
    """The last epoch ``result_file`` (Tune's ``result.json`` of a trial) holds a report of (0: none)."""
    epochs = [r.get(TIME_ATTR) for r in read_reports(result_file)]
    return max([e for e in epochs if isinstance(e, int)], default=0)


def has_end_report(result_file: Path) -> bool:
    """Whether the last report in ``result_file`` (Tune's ``result.json`` of a trial) is an end report."""
    reports = read_reports(result_file)
    return bool(reports) and bool(reports[-1].get(FINISHED))


def _staged(trial: Trial, file_name: str) -> Path:
    """The trial's file ``file_name`` in the driver's staging folder (Tune names the folder before loggers run)."""
    return Path(str(trial.local_path), file_name)


class ResultLog(JsonLoggerCallback):
    """Ray's ``JsonLoggerCallback`` that does not write a replayed end report a second time, and starts each
    trial's file from the storage's copy (not from a staging folder's, nor empty), nor an epoch it holds."""

    def __init__(self) -> None:
        super().__init__()
        self._last_epochs: dict[str, int] = {}  # trial id -> the last epoch its file holds

    def _restore_from_remote(self, file_name: str, trial: Trial) -> None:
        from pyarrow import fs

        storage = trial.storage
        if storage is None:
            return super()._restore_from_remote(file_name, trial)
        remote = f"{storage.trial_fs_path}/{file_name}"
        if storage.storage_filesystem.get_file_info(remote).type == fs.FileType.File:
            fs.copy_files(remote, _staged(trial, file_name).as_posix(), source_filesystem=storage.storage_filesystem)

    def log_trial_start(self, trial: Trial) -> None:
        super().log_trial_start(trial)
        self._last_epochs[trial.trial_id] = last_epoch(_staged(trial, EXPR_RESULT_FILE))

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        if trial not in self._trial_files:
            self.log_trial_start(trial)
        epoch = result.get(TIME_ATTR)
        if not result.get(FINISHED) and isinstance(epoch, int) and epoch <= self._last_epochs.get(trial.trial_id, 0):
            return  # an epoch on record, run again from an older checkpoint (a killed driver's record lagged)
        if isinstance(epoch, int):
            self._last_epochs[trial.trial_id] = max(epoch, self._last_epochs.get(trial.trial_id, 0))
        if result.get(REPLAYED):
            self._trial_files[trial].flush()
            if has_end_report(_staged(trial, EXPR_RESULT_FILE)):
                return
            result = {k: v for k, v in result.items() if k != REPLAYED}
        super().log_trial_result(iteration, trial, result)


__all__ = ["ResultLog", "has_end_report", "last_epoch", "read_reports"]
