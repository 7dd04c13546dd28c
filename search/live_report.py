"""The search's report while it runs: a Ray Tune callback in the driver that rewrites the report
(``tracking/report.py``: figures and ``report.html``, artifacts ``report/`` of the MLflow parent run)
each time a trial ends, so a long search can be read before it is over.

What it reads is the driver's own view, the freshest there is: each trial's config from Tune and its
reports from the ``result.json`` Tune's JSON logger writes in the driver's staging folder of the trial
(the storage gets that file only at Tune's next sync, seconds to minutes later). Trials that have
reported epochs but neither ended in Tune nor sent their final report are marked ``running`` (their
epochs so far would otherwise read as a trial stopped early), a trial Tune ended on an error as failed.

It must never fail nor slow the search: the report is made in one background thread (the driver's event
loop only takes a snapshot of the trials), a refresh starts at least ``min_interval_s`` after the last
one ended (trials that end in a burst make one refresh, of the newest snapshot), any error is one
warning line, printed once, and ``on_experiment_end`` drops a refresh not yet started and waits for one
under way, so it never races the search's final report (``search/run.py``).
The first refresh prints where the report is (``tracking.report.report_location``). Only the search's
own Tune run has it (``search.driver.DriverSession.fit``), not its confirmation stage, whose champion
is meaningless until the stage ends.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import EXPR_RESULT_FILE

from search.result_log import read_reports
from tracking.mlflow_runs import Tracking
from trainables.trial_report import FINISHED

#: seconds from the end of a refresh to the start of the next at least (a refresh, report and upload, took
#: 2-10 s of CPU on a shared 2-core machine, which the trials need too: the first trial's end refreshes at once)
MIN_INTERVAL_S = 30.0
ENDED = (Trial.TERMINATED, Trial.ERROR)


@dataclass(frozen=True)
class Seen:
    """One trial as the driver saw it when a trial ended (nothing of Tune's live objects)."""

    trial_id: str
    status: str
    config: dict[str, Any]
    folder: str | None  # the trial's staging folder on the driver (None: not created yet)
    error: str | None  # Tune's error that ended it


def snapshot(trials: list[Trial], ended: Trial | None = None, status: str | None = None) -> list[Seen]:
    """What the report needs of ``trials``, taken in the driver's loop; ``ended``: the trial whose end
    is being called back, with its final ``status`` (Tune sets it only after the callbacks ran)."""
    from search.results import last_failure

    seen = []
    for trial in trials:
        state = status if trial is ended and status is not None else trial.status
        try:
            folder: str | None = trial.local_path
        except (RuntimeError, AttributeError):  # no trial folder (a pending trial) or no storage yet
            folder = None
        seen.append(Seen(trial.trial_id, str(state), dict(trial.config), folder,
                         _failure(trial, last_failure) if state == Trial.ERROR else None))
    return seen


def _failure(trial: Trial, describe: Any) -> str:
    """``search.results.last_failure`` of the trial, or that it failed (its error file out of reach)."""
    try:
        return str(describe(trial))
    except Exception:
        return "failed (Tune error)"


def live_search(name: str, storage_uri: str, seen: list[Seen]) -> Any:
    """A ``tracking.search_results.FinishedSearch`` of the trials ``seen``, read from their staging folders."""
    from pyarrow import fs

    from tracking.search_results import FinishedSearch, TrialRecord
    from tracking.storage import SearchStorage

    records = []
    for trial in seen:
        results = [] if trial.folder is None else read_reports(Path(trial.folder) / EXPR_RESULT_FILE)
        ended = trial.status in ENDED or bool(results and results[-1].get(FINISHED))  # its last report is in
        records.append(TrialRecord(trial.trial_id, trial.config, results, None,
                                   running=not ended and bool(results), error=trial.error))
    storage = SearchStorage(storage_uri, storage_uri.rstrip("/").rsplit("/", 1)[0], None)
    return FinishedSearch(name, storage, fs.LocalFileSystem(), records)


class LiveReport(Callback):
    """Rewrites the report of ``tracking``'s search (results under ``storage_uri``) after each trial ends."""

    def __init__(self, tracking: Tracking, storage_uri: str, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.tracking = tracking
        self.storage_uri = storage_uri
        self.min_interval_s = min_interval_s
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Seen] | None = None
        self._thread: threading.Thread | None = None
        self._last = float("-inf")
        self._closed = threading.Event()
        self._warned = False
        self._told = False
        self.refreshes = 0  # reports logged (read by tests)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks for a restore: no thread, no lock
        return {"tracking": self.tracking, "storage_uri": self.storage_uri, "min_interval_s": self.min_interval_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._request(trials, trial, Trial.TERMINATED)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._request(trials, trial, Trial.ERROR)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.close()

    def _request(self, trials: list[Trial], ended: Trial, status: str) -> None:
        try:
            seen = snapshot(trials, ended, status)
        except Exception as exc:  # never the search's problem
            self._warn(exc)
            return
        self.request(seen)

    def request(self, seen: list[Seen]) -> None:
        """Ask for a refresh of the report from ``seen`` (the newest request wins over one not yet made)."""
        with self._lock:
            self._pending = seen
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="live-report", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Until the refreshes asked for are made."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        """No more refreshes: one not yet started is dropped (the search's final report follows), one under
        way is waited for."""
        self._closed.set()
        self.wait()

    def _work(self) -> None:
        while True:
            with self._lock:  # nothing asked for since the last refresh: done (no idle wait)
                if self._pending is None or self._closed.is_set():
                    self._thread = None
                    return
            delay = self._last + self.min_interval_s - time.monotonic()
            if delay > 0:
                self._closed.wait(delay)
            with self._lock:
                seen, self._pending = self._pending, None
                if seen is None or self._closed.is_set():
                    self._thread = None
                    return
            try:
                self.refresh(seen)
            except Exception as exc:  # a broken store, a full disk: warn once, keep searching
                self._warn(exc)
            self._last = time.monotonic()  # the pause counts from the end: a slow refresh never runs back to back

    def refresh(self, seen: list[Seen]) -> bool:
        """Write the report of ``seen`` and log it to the parent run; False when no trial has finished yet
        (nothing to report)."""
        from tracking.report import log_report, report_location, write_report

        search = live_search(self.tracking.search, self.storage_uri, seen)
        if not search.ranked():
            return False
        with tempfile.TemporaryDirectory(prefix="prvr-live-report-") as folder:
            paths = write_report(search, Path(folder))
            log_report(self.tracking.uri, self.tracking.parent_run_id, paths)
        self.refreshes += 1
        if not self._told:
            self._told = True
            print(f"report of search {self.tracking.search} (rewritten as trials end): "
                  f"{report_location(self.tracking.uri, self.tracking.parent_run_id)}", flush=True)
        return True

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: the live report of search {self.tracking.search} was not refreshed (the search goes "
                  f"on): {(str(exc) or type(exc).__name__).splitlines()[0]}", file=sys.stderr, flush=True)


__all__ = ["MIN_INTERVAL_S", "LiveReport", "Seen", "live_search", "snapshot"]
