"""What a search prints: one status line per finished trial, and the table of the best trials."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from tracking.mlflow_runs import INTERRUPTED_TAG, Tracking, end_trial_run
from tracking.redact import redact_text
from tracking.search_results import compact_config, rank_key
from trainables.trial_report import (
    COLUMNS,
    METRIC,
    STOPPED_EARLY,
    TIME_ATTR,
    TRIAL_ERROR,
    is_failed,
    is_finished,
    metric_key,
    stop_tags,
    stopped_by_scheduler,
    trial_status,
)


def status_line(trial_id: str, result: dict[str, Any] | None, error: str | None = None,
                interrupted: bool = False) -> str:
    """``trial 1a2b_00003: 4 epochs, best val SumR 231.4, finished`` (or stopped early / interrupted / failed)."""
    result = result or {}
    if error or is_failed(result):
        return f"trial {trial_id}: failed: {error or result[TRIAL_ERROR]}"
    epochs = result.get(TIME_ATTR, 0)
    best = result.get(METRIC)
    how = "finished" if is_finished(result) else "stopped early by the scheduler"
    if result.get(STOPPED_EARLY):
        how = "finished (early stopping on patience)"
    if interrupted:
        how = "interrupted (Ctrl-C; --resume continues it)"
    best_text = f"{best:.1f}" if isinstance(best, (int, float)) else "-"
    return f"trial {trial_id}: {epochs} epochs, best val SumR {best_text}, {how}"


def last_failure(trial: Trial) -> str:
    """One line for the latest failure in a trial's error file (Tune appends ``Failure # n (occurred at
    ...)`` and the error for each): a traceback's last line, else the error's first; the file's path when
    it cannot be read."""
    path = trial.error_file
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        return str(path)
    blocks = re.split(r"^Failure # \d+ \(occurred at [^)]*\)$", text, flags=re.MULTILINE)
    lines = [line.strip() for line in blocks[-1].splitlines() if line.strip()]
    if not lines:
        return str(path or "error")
    return lines[-1] if any(line.startswith("Traceback") for line in lines) else lines[0]


class TrialStatus(Callback):
    """Prints :func:`status_line` when a trial completes or errors (after its epochs' progress lines,
    ``search/progress.py``; Ray's own output is off, ``search/tuning.py``) and
    ends its MLflow child run (a trial the scheduler stopped cannot end its own): FAILED on an error,
    KILLED with tag ``interrupted`` on Ctrl-C, else FINISHED (``trial_status``), a trial that ended early
    tagged how, at which epoch and, stopped by the scheduler, at which of its rungs (``stop_tags``;
    ``rung_at``: the scheduler's rung at an epoch, e.g. ``LastEpochASHA.rung_at``)."""

    def __init__(self, tracking: Tracking | None = None, rung_at: Callable[[int], int | None] | None = None) -> None:
        self.tracking = tracking
        self.rung_at = rung_at

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        from search.tuning import interrupt_received

        if interrupt_received() and not is_finished(trial.last_result):  # Tune stops it on Ctrl-C
            print(status_line(trial.trial_id, trial.last_result, interrupted=True), flush=True)
            if self.tracking is not None:
                end_trial_run(self.tracking, trial.trial_id, "KILLED", {INTERRUPTED_TAG: "SIGINT"})
            return
        print(status_line(trial.trial_id, trial.last_result), flush=True)
        if self.tracking is not None:
            last = trial.last_result
            rung = self.rung_at(int(last.get(TIME_ATTR, 0))) if self.rung_at and stopped_by_scheduler(last) else None
            end_trial_run(self.tracking, trial.trial_id, trial_status(last), stop_tags(last, rung))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        error = last_failure(trial)
        print(status_line(trial.trial_id, trial.last_result, error=error), flush=True)
        if self.tracking is not None:
            end_trial_run(self.tracking, trial.trial_id, "FAILED", {"error": redact_text(error)})


@dataclass
class TrialRow:
    """One trial of a finished (or interrupted) search, as the table shows it."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None

    @property
    def failed(self) -> bool:
        return self.error is not None or is_failed(self.metrics)

    @property
    def score(self) -> float:
        value = self.metrics.get(METRIC)
        return float(value) if isinstance(value, (int, float)) and not self.failed else float("-inf")


def rows_of(results: Any) -> list[TrialRow]:
    """Every trial of a ResultGrid once, with its last result."""
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        rows.append(TrialRow(trial_id, dict(result.config or {}), metrics,
                             None if result.error is None else str(result.error).splitlines()[0]))
    return rows


def final_statuses(results: Any) -> dict[str, str]:
    """Each trial's final MLflow status in a ResultGrid (FAILED on an error, else ``trial_status``: a trial the
    scheduler stopped is FINISHED, its tags set by ``TrialStatus``): what ``close_children`` ends the child runs
    with at the end of a search, an ablation or a benchmark."""
    return {row.trial_id: "FAILED" if row.error else trial_status(row.metrics) for row in rows_of(results)}


def ranked(rows: list[TrialRow]) -> list[TrialRow]:
    """Trials that ran at least an epoch, best val SumR first."""
    return sorted((r for r in rows if not r.failed and r.metrics.get("epoch")),
                  key=lambda r: rank_key(r.score, r.trial_id))


def best_trials_table(rows: list[TrialRow], top: int = 5) -> str:
    """The ``top`` trials by best val SumR: val (best epoch) and test R@1/5/10/100/SumR, then configs."""
    ranked_rows = ranked(rows)[:top]
    header = f"{'#':<3}{'trial':<18}{'epochs':>7}" + "".join(f"{'val ' + c:>11}" for c in COLUMNS) + \
        "".join(f"{'test ' + c:>11}" for c in COLUMNS)
    lines = [header]
    for rank, row in enumerate(ranked_rows, 1):
        m = row.metrics
        val = [m.get(metric_key("best_val", c), m.get(metric_key("val", c))) for c in COLUMNS]
        val[-1] = row.score
        test = [m.get(metric_key("test", c)) for c in COLUMNS]
        cells = "".join(f"{v:>11.1f}" if isinstance(v, (int, float)) else f"{'-':>11}" for v in val + test)
        lines.append(f"{rank:<3}{row.trial_id:<18}{m.get('epoch', 0):>7}" + cells)
    lines.append("")
    for rank, row in enumerate(ranked_rows, 1):
        lines.append(f"{rank}. {row.trial_id}: {compact_config(row.config)}")
    failed = [r for r in rows if r.failed]
    waiting = [r for r in rows if not r.failed and not r.metrics.get("epoch")]
    lines.append(f"\n{len(rows)} trials: {len(rows) - len(failed) - len(waiting)} ran, {len(failed)} failed"
                 + (f", {len(waiting)} without a finished epoch" if waiting else "")
                 + ("" if not ranked_rows else "; test metrics ('-' = not tested: stopped early by the scheduler, or "
                                          "interrupted) are of each trial's best epoch"))
    return "\n".join(lines)
