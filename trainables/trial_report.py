"""The trial <-> driver report protocol: every key a trial reports to Ray Tune and the driver, the searcher,
the scheduler, the MLflow child runs, the export and the report read. Standard library only (as Ray Tune's
``tune/result.py``), so a reader that must not import torch or Ray uses the same names as the trial.

A trial reports (``trainables/trial.py``):

* each epoch, ``epoch_report``: the epoch (``TIME_ATTR``), the best val SumR so far (``METRIC``, what the
  searcher and ASHA rank on) and its epoch (``BEST_EPOCH``), the epoch's ``val_*`` metrics and mean
  ``loss_*`` terms; the first report of each start of the trial also holds ``PLACEMENT`` (where it runs)
  and, after a resume, ``EARLIER_EPOCHS`` (the earlier epochs' reports, rebuilt from the checkpoint);
* when it ends on its own (max epochs, or early stopping on patience), ``final_report``: ``FINISHED``,
  ``STOPPED_EARLY``, the last epoch's ``val_*``, the best epoch's ``best_val_*`` and its ``test_*``, and the
  per-query test ranks in the file ``TEST_RANKS`` of its folder; a trial the scheduler stops never does;
* when its own config or training fails, ``error_report``: ``TRIAL_ERROR`` (the error's first line).

Either end report is also written to the file ``END_REPORT`` of the trial's folder before it is reported. A
trial started again although it had ended (a driver killed after the report reached the storage, before
its experiment snapshot recorded the trial as ended) reports that stored report again, marked
``REPLAYED``, instead of training again; the driver's result log does not repeat it (``search/result_log.py``).

A trial the scheduler stops (ASHA) gets no final report: Tune marks its last epoch's report ``DONE``.
``trial_status`` reads any of them into the MLflow status of the trial's child run, and ``stop_tags`` into
the tags that say how it ended early (by the scheduler, or on patience).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the recall cutoffs of every metric family (R@1, R@5, R@10, R@100), and their sum ``SumR``
RECALL_KS = (1, 5, 10, 100)
COLUMNS = [f"R@{k}" for k in RECALL_KS] + ["SumR"]

METRIC = "best_val_sumr"  # the best val SumR so far: what the searcher, the scheduler and the champion rank on
MODE = "max"
TIME_ATTR = "epoch"  # the scheduler's clock and the MLflow step
BEST_EPOCH = "best_epoch"
FINISHED = "finished"  # True in the report of a trial that ended on its own (or on its own error)
STOPPED_EARLY = "stopped_early"  # True when it ended by early stopping on patience
TRIAL_ERROR = "trial_error"  # the trial's own error, as "Type: first line"
#: Tune's own key: True in the last report of a trial Tune stopped on the scheduler's word (and in a final report)
DONE = "done"
#: tags of the child run of a trial that ended early: how (``scheduler`` or ``patience``), at which epoch, and for
#: a scheduler's stop the rung (0: the first, at the grace epochs) when the scheduler has rungs (ASHA)
STOPPED_EARLY_TAG, STOPPED_AT_EPOCH, STOPPED_AT_RUNG = "stopped_early", "stopped_at_epoch", "stopped_at_rung"
#: where the trial runs (node, process, resources): tags of its MLflow run
PLACEMENT = "placement"
#: a resumed trial's earlier epochs' reports: the driver logs those MLflow lacks (a killed driver never did)
EARLIER_EPOCHS = "earlier_epochs"
#: the file of per-query test ranks in the trial's folder (fused score; ablation statistics pair on them)
TEST_RANKS = "test_ranks.json"
#: the file of a trial's end report (final or error) in its folder, written before the report is made
END_REPORT = "end_report.json"
#: True in an end report that a trial started again after its end repeats from ``END_REPORT``
REPLAYED = "replayed"
#: metric families: an epoch's val, the best epoch's val and test, and the loss terms
VAL, BEST_VAL, TEST, LOSS = "val", "best_val", "test", "loss"
#: config keys ``tag.<name>`` are not settings: they become tags of the trial's child run (an ablation's cell)
TAG_PREFIX = "tag."
TRIAL_DIR_PREFIX = "trial_"
#: the Optuna user attribute of a trial's Ray trial id (the search's study and the study the report rebuilds)
RAY_TRIAL_ATTR = "trial_id"


def metric_key(prefix: str, column: str) -> str:
    """``val`` + ``R@1`` -> ``val_r1``; ``test`` + ``SumR`` -> ``test_sumr``."""
    return f"{prefix}_{column.lower().replace('@', '')}"


def flat_metrics(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """``{"R@1": .., "SumR": ..}`` -> ``{"<prefix>_r1": .., "<prefix>_sumr": ..}``."""
    return {metric_key(prefix, c): float(metrics[c]) for c in COLUMNS}


def epoch_report(epoch: int, val: Mapping[str, float], loss: Mapping[str, float], best_epoch: int,
                 best_score: float) -> dict[str, float]:
    """An epoch's report; ``val``: the epoch's fused-score metrics by column, ``loss``: mean loss terms."""
    return {TIME_ATTR: epoch, METRIC: best_score, BEST_EPOCH: best_epoch, **flat_metrics(VAL, val),
            **{f"{LOSS}_{name}": value for name, value in loss.items()}}


def final_report(epoch: int, last_val: Mapping[str, float], best_val: Mapping[str, float],
                 test: Mapping[str, float], best_epoch: int, stopped_early: bool) -> dict[str, Any]:
    """The report of a trial that ended on its own after ``epoch`` epochs: its best epoch's val and test
    metrics (fused score, by column) and the last epoch's val metrics."""
    return {TIME_ATTR: epoch, METRIC: float(best_val.get("SumR", float("nan"))), BEST_EPOCH: best_epoch,
            **flat_metrics(VAL, last_val), **flat_metrics(BEST_VAL, best_val), **flat_metrics(TEST, test),
            FINISHED: True, STOPPED_EARLY: stopped_early}


def error_report(description: str) -> dict[str, Any]:
    """The report of a trial whose own config or training failed (the metric for the scheduler's strict
    check; the searcher tells the trial as failed)."""
    return {TRIAL_ERROR: description, FINISHED: True, METRIC: float("-inf")}


def is_failed(result: Mapping[str, Any] | None) -> bool:
    """Whether a trial's last report is its own error."""
    return result is not None and TRIAL_ERROR in result


def is_finished(result: Mapping[str, Any] | None) -> bool:
    """Whether a trial's last report is its final report (it ended on its own, not on an error)."""
    return bool(result and result.get(FINISHED)) and not is_failed(result)


def stopped_by_scheduler(result: Mapping[str, Any] | None) -> bool:
    """Whether a trial's last report is an epoch's report that Tune stopped the trial after (the scheduler's
    decision: Tune marks it ``DONE``), not its final report nor its error. A trial stopped otherwise (Ctrl-C, a
    time budget) or never started has no such mark."""
    return bool(result and result.get(DONE) is True) and not is_finished(result) and not is_failed(result)


def trial_status(result: Mapping[str, Any] | None, error: bool = False) -> str:
    """The MLflow status of a trial that ended with ``result``: FAILED on its own error (or, ``error``, a
    crash); FINISHED when it ran to its end or the scheduler stopped it early (a normal outcome of a search:
    ``stop_tags`` tells the two apart); KILLED when something else stopped it (Ctrl-C, a time budget, a trial
    that never reported)."""
    if error or is_failed(result):
        return "FAILED"
    return "FINISHED" if is_finished(result) or stopped_by_scheduler(result) else "KILLED"


def stop_tags(result: Mapping[str, Any] | None, rung: int | None = None) -> dict[str, str]:
    """The tags of a trial that ended early: ``STOPPED_EARLY_TAG`` (``scheduler``, or ``patience`` for its own
    early stopping) and ``STOPPED_AT_EPOCH`` (its last epoch); for a scheduler's stop also ``STOPPED_AT_RUNG``
    (``rung``: the scheduler's rung at that epoch, when it has rungs). None for any other trial."""
    if stopped_by_scheduler(result):
        assert result is not None
        tags = {STOPPED_EARLY_TAG: "scheduler", STOPPED_AT_EPOCH: str(result.get(TIME_ATTR, 0))}
        return tags if rung is None else {**tags, STOPPED_AT_RUNG: str(rung)}
    if is_finished(result) and result is not None and result.get(STOPPED_EARLY):
        return {STOPPED_EARLY_TAG: "patience", STOPPED_AT_EPOCH: str(result.get(TIME_ATTR, 0))}
    return {}


def _numeric(result: Mapping[str, Any], keep: Any) -> dict[str, float]:
    return {k: v for k, v in result.items() if keep(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of an epoch's report: the epoch, best val SumR so far and its epoch, the epoch's
    val metrics and mean loss terms (not Tune's own fields)."""
    return _numeric(result, lambda k: k in (TIME_ATTR, METRIC, BEST_EPOCH) or k.startswith((f"{VAL}_", f"{LOSS}_")))


def final_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a trial's final report: its best epoch's val metrics and its test metrics."""
    return _numeric(result, lambda k: k.startswith((f"{BEST_VAL}_", f"{TEST}_")))


def trial_dirname(trial_id: str) -> str:
    """The folder of a trial's results and checkpoints under the search's storage."""
    return f"{TRIAL_DIR_PREFIX}{trial_id}"


def split_tags(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's config without its ``tag.<name>`` keys, and those keys as tags (``<name>``)."""
    return ({k: v for k, v in config.items() if not k.startswith(TAG_PREFIX)},
            {k[len(TAG_PREFIX):]: v for k, v in config.items() if k.startswith(TAG_PREFIX)})


__all__ = ["BEST_EPOCH", "BEST_VAL", "COLUMNS", "DONE", "EARLIER_EPOCHS", "END_REPORT", "FINISHED", "LOSS", "METRIC",
           "MODE", "PLACEMENT", "RAY_TRIAL_ATTR", "RECALL_KS", "REPLAYED", "STOPPED_AT_EPOCH", "STOPPED_AT_RUNG",
           "STOPPED_EARLY", "STOPPED_EARLY_TAG", "TAG_PREFIX", "TEST", "TEST_RANKS", "TIME_ATTR", "TRIAL_DIR_PREFIX",
           "TRIAL_ERROR", "VAL", "epoch_metrics", "epoch_report", "error_report", "final_metrics", "final_report",
           "flat_metrics", "is_failed", "is_finished", "metric_key", "split_tags", "stop_tags", "stopped_by_scheduler",
           "trial_dirname", "trial_status"]
