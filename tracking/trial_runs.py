"""The trials' MLflow child runs, written by the search's driver from what the trials report to Tune.

A trial's process never imports MLflow: importing it and its SQL store and opening a run took 1.4 s of
every new trial worker's time before its first epoch (``benchmarks/overhead.py``), and trials writing one
SQLite store from several processes wait on each other's locks. The driver has MLflow loaded already and
receives every result anyway (as Ray's own ``MLflowLoggerCallback`` works). Per trial:

* Tune starts it: its child run is found by trial id (a restarted or resumed trial continues it) or
  created with the config as params, tagged with its search, backbone, plugins and where its checkpoints
  are (``tracking.mlflow_runs.child_run``);
* each epoch's report: its metrics at step = epoch, and on a process's first report the tags of where
  the trial runs (``ray.node_id``, ``ray.pid``, ...; a restarted trial updates them);
* a resumed trial's first report: its earlier epochs' metrics, rebuilt from its checkpoint; those the
  run lacks are logged (a killed driver never logged the last results it received);
* the final report: the best epoch's val and test metrics (of a replayed report, only if the run lacks them)
  and the per-query test ranks (the trial writes them to its folder in the search's storage,
  ``trainables.trial_report.TEST_RANKS``), or the trial's own error;
  ``search.results.TrialStatus`` ends the run with the trial's status.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from tracking.mlflow_runs import Tracking, child_run, end_run, log_dict, log_metrics, set_tags
from trainables.plugins import list_plugins
from trainables.trial_report import (
    EARLIER_EPOCHS,
    PLACEMENT,
    REPLAYED,
    TEST_RANKS,
    TIME_ATTR,
    TRIAL_ERROR,
    epoch_metrics,
    final_metrics,
    is_failed,
    is_finished,
    split_tags,
    trial_dirname,
)


class TrialRuns(Callback):
    """Keeps each trial's MLflow child run of ``tracking`` (checkpoints under ``results_uri``)."""

    def __init__(self, tracking: Tracking, results_uri: str) -> None:
        self.tracking = tracking
        self.results_uri = results_uri.rstrip("/")
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks for a restore: no run ids
        return {**self.__dict__, "_runs": {}}

    def run_id(self, trial: Trial) -> str:
        """The trial's child run, opened (or found again) on first use."""
        if trial.trial_id not in self._runs:
            config, tags = split_tags(trial.config)
            tags["checkpoints"] = f"{self.results_uri}/{trial_dirname(trial.trial_id)}"
            self._runs[trial.trial_id] = child_run(self.tracking, trial.trial_id, config, list_plugins(), tags)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._runs.pop(trial.trial_id, None)  # a restarted trial: its run is RUNNING again
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        run_id = self.run_id(trial)
        if result.get(PLACEMENT):
            set_tags(self.tracking, run_id, result[PLACEMENT])
        now_ms = int(time.time() * 1000)
        if result.get(EARLIER_EPOCHS):
            self._log_missing(run_id, result[EARLIER_EPOCHS], now_ms)
        if is_failed(result):
            set_tags(self.tracking, run_id, {"error": result[TRIAL_ERROR]})
            end_run(self.tracking, run_id, "FAILED")
        elif is_finished(result):
            if not (result.get(REPLAYED) and self._has_final_metrics(run_id, result)):
                log_metrics(self.tracking, run_id, final_metrics(result), int(result.get("epoch", 0)), now_ms)
            ranks = _read_ranks(trial)
            if ranks is not None:
                log_dict(self.tracking, run_id, ranks, TEST_RANKS)
            end_run(self.tracking, run_id, "FINISHED")
        else:
            log_metrics(self.tracking, run_id, epoch_metrics(result), int(result.get("epoch", 0)), now_ms)

    def _has_final_metrics(self, run_id: str, result: dict[str, Any]) -> bool:
        """Whether the run holds the final report's metrics already (a replayed end report, ``REPLAYED``)."""
        names = list(final_metrics(result))
        return bool(names) and bool(self.tracking.client().get_metric_history(run_id, names[0]))

    def _log_missing(self, run_id: str, earlier: list[dict[str, Any]], now_ms: int) -> None:
        """A resumed trial's earlier epochs that the run lacks (their results died with a killed driver)."""
        logged = {m.step for m in self.tracking.client().get_metric_history(run_id, TIME_ATTR)}
        for metrics in earlier:
            if int(metrics[TIME_ATTR]) not in logged:
                log_metrics(self.tracking, run_id, epoch_metrics(metrics), int(metrics[TIME_ATTR]), now_ms)


def _read_ranks(trial: Trial) -> dict[str, Any] | None:
    """The test ranks the trial wrote next to its checkpoints (None if it wrote none)."""
    storage = trial.storage
    assert storage is not None  # Tune gives every trial its storage before it runs
    try:
        with storage.storage_filesystem.open_input_stream(f"{storage.trial_fs_path}/{TEST_RANKS}") as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None


__all__ = ["TrialRuns"]
