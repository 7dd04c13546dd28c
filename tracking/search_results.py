"""A finished (or interrupted) search as Ray Tune left it in its storage, read without Ray.

Layout (``search/run.py``): ``<storage>/<name>/trial_<id>/`` holds ``params.json`` (the trial's config),
``result.json`` (one JSON line per report: every epoch, then a final report with ``finished`` and the
test metrics) and ``checkpoint_*/checkpoint.pt``. The confirmation stage (``search/confirmation.py``) is a
second Tune run in ``<storage>/<name>/confirmation/``, whose trials are laid out alike and carry the id of
the search trial they retrain (config key ``tag.confirmation_of``). Works on a local folder and on
``s3://bucket/prefix`` through the same pyarrow filesystem Ray used. Used by the report and the export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tracking.storage import SearchStorage, search_storage
from trainables.data.s3 import StorageSettings
from trainables.errors import InputError
from trainables.trial_report import FINISHED, METRIC, TIME_ATTR, TRIAL_DIR_PREFIX, is_failed, is_finished

TRIAL_PREFIX = TRIAL_DIR_PREFIX
#: the confirmation stage's Tune run: a folder of the search's folder
CONFIRMATION = "confirmation"
#: the config key of a confirmation trial naming the search trial whose config it retrains with another
#: seed (a ``tag.`` key: a tag of its MLflow run, not a setting; trainables.trial_report.TAG_PREFIX)
CONFIRMATION_OF = "tag.confirmation_of"


#: config keys every trial has and tables leave out (the search's fixed settings)
QUIET_KEYS = frozenset({"epochs", "patience", "seed", "device"})


def compact_config(config: dict[str, Any]) -> str:
    """The sampled settings in one short line (floats to 3 significant digits)."""
    parts = []
    for key in sorted(config, key=lambda k: (k != "backbone", k)):
        if key in QUIET_KEYS:
            continue
        value = config[key]
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def trial_label(config: dict[str, Any], trial_id: str, plugins: list[str] | None = None) -> str:
    """What a trial is, in one short name: ``mssl+ral-19a671ab`` (backbone, the plugins it has on, trial id).
    The MLflow child run's name and the progress lines use it. ``plugins``: the registered plugin names
    (default: ``trainables.plugins.list_plugins()``, which imports torch)."""
    if plugins is None:
        from trainables.plugins import list_plugins

        plugins = list_plugins()
    on = [p for p in plugins if config.get(p) is True]
    return "+".join([str(config.get("backbone", "model")), *on]) + f"-{trial_id}"


def rank_key(score: float, trial_id: str) -> tuple[float, str]:
    """Sort key of every trial ranking (the printed table, the report, the best trial): best val SumR
    first, ties by trial id, so the search's output and its report always list tied trials alike."""
    return -score, trial_id


@dataclass
class TrialRecord:
    """One trial: its config, every result it reported, and its newest complete checkpoint (if any)."""

    trial_id: str
    config: dict[str, Any]
    results: list[dict[str, Any]]
    checkpoint: str | None  # a folder path on ``FinishedSearch.filesystem``
    #: set by a live report (``search/live_report.py``) from the driver's view, never read from the storage:
    #: the trial is still running (its epochs so far look like a stopped trial's), or Tune's error that ended it
    running: bool = False
    error: str | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.results[-1] if self.results else {}

    @property
    def failed(self) -> bool:
        """Its own error (``trial_error``), or a Tune error that ended it (``error``)."""
        return is_failed(self.last) or (self.error is not None and not self.running)

    @property
    def finished(self) -> bool:
        """Ran to its own end (max epochs or patience), so it has test metrics."""
        return is_finished(self.last)

    @property
    def score(self) -> float:
        value = self.last.get(METRIC)
        return float(value) if isinstance(value, (int, float)) and not self.failed else float("-inf")

    @property
    def confirmation_of(self) -> str | None:
        """The search trial this confirmation trial retrains (None for a search trial)."""
        return self.config.get(CONFIRMATION_OF)

    def epochs(self) -> list[dict[str, Any]]:
        """The per-epoch reports (the final report left out), one per epoch: a resumed trial may have
        reported an epoch twice, the later report counts."""
        by_epoch = {r[TIME_ATTR]: r for r in self.results if TIME_ATTR in r and not r.get(FINISHED)}
        return [by_epoch[e] for e in sorted(by_epoch)]


@dataclass
class FinishedSearch:
    name: str
    storage: SearchStorage
    filesystem: Any  # pyarrow filesystem (local or S3)
    trials: list[TrialRecord]
    #: the confirmation stage's trials (none when it did not run)
    confirmation: list[TrialRecord] = field(default_factory=list)

    def ranked(self) -> list[TrialRecord]:
        """Trials that finished, best validation SumR first (the searcher's ranking)."""
        return sorted((t for t in self.trials if t.finished), key=lambda t: rank_key(t.score, t.trial_id))

    def best(self) -> TrialRecord:
        ranked = self.ranked()
        if not ranked:
            raise InputError(f"search {self.name!r} has no finished trial")
        return ranked[0]

    def trial(self, trial_id: str) -> TrialRecord:
        """A trial of the search or of its confirmation stage, by id."""
        for trial in self.trials + self.confirmation:
            if trial.trial_id == trial_id:
                return trial
        raise InputError(f"search {self.name!r} has no trial {trial_id!r} "
                         f"(trials: {', '.join(t.trial_id for t in self.trials + self.confirmation) or 'none'})")


def _read_text(filesystem: Any, path: str) -> str | None:
    from pyarrow import fs

    if filesystem.get_file_info(path).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as handle:
        return handle.read().decode()


def _trial(filesystem: Any, folder: str, trial_id: str) -> TrialRecord:
    from trainables.tune_checkpoints import newest_checkpoint

    params = _read_text(filesystem, f"{folder}/params.json")
    lines = (_read_text(filesystem, f"{folder}/result.json") or "").splitlines()
    return TrialRecord(trial_id, json.loads(params) if params else {},
                       [json.loads(line) for line in lines if line.strip()], newest_checkpoint(filesystem, folder))


def load_search(storage: str, name: str, settings: StorageSettings | None = None) -> FinishedSearch:
    """Read search ``name`` from ``storage`` (a local folder or ``s3://bucket/prefix``)."""
    from pyarrow import fs

    try:
        location = search_storage(storage, name, resume=True, settings=settings)
    except ValueError as exc:  # search_storage's wording is for --resume
        raise InputError(str(exc).removeprefix("nothing to resume: ")) from None
    filesystem = location.filesystem or fs.LocalFileSystem()
    return FinishedSearch(name, location, filesystem, _trials(filesystem, location.path),
                          _trials(filesystem, f"{location.path}/{CONFIRMATION}"))


def _trials(filesystem: Any, folder: str) -> list[TrialRecord]:
    """The trials of the Tune run in ``folder`` (none when it does not exist), by id."""
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    return [_trial(filesystem, info.path, info.base_name[len(TRIAL_PREFIX):]) for info in
            sorted(infos, key=lambda i: i.base_name)
            if info.type == fs.FileType.Directory and info.base_name.startswith(TRIAL_PREFIX)]


__all__ = ["CONFIRMATION", "CONFIRMATION_OF", "QUIET_KEYS", "FinishedSearch", "TrialRecord", "compact_config",
           "load_search", "trial_label"]
