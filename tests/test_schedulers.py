"""ASHA as the search runs it: stops losers at its rungs, but never a trial at its last epoch (a rung can fall
there; the trial still owes its final report with the test metrics)."""

from __future__ import annotations

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.schedulers import LastEpochASHA, make_scheduler


def _feed(scheduler, curves: list[list[float]]) -> list[list[str]]:
    """Report each trial's curve epoch by epoch, trials interleaved; the scheduler's decisions per trial."""
    trials = [Trial("run_trial", stub=True, trial_id=f"t{i}") for i in range(len(curves))]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    decisions: list[list[str]] = [[] for _ in curves]
    for epoch in range(1, max(len(c) for c in curves) + 1):
        for i, (trial, curve) in enumerate(zip(trials, curves)):
            if len(curve) >= epoch and TrialScheduler.STOP not in decisions[i]:
                decisions[i].append(scheduler.on_trial_result(None, trial, {"epoch": epoch, "score": curve[epoch - 1]}))
    return decisions


# max 4 epochs, grace 1, factor 2: rungs at epochs 1, 2 and 4 (max_t 5); trial 1 leads until its last epoch
CURVES = [[8.0, 8.0, 8.0, 8.0], [9.0, 9.0, 9.0, 1.0], [1.0, 1.0]]


def test_plain_asha_stops_a_trial_at_its_last_epoch_and_ours_does_not():
    plain = ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=5, grace_period=1, reduction_factor=2)
    assert _feed(plain, CURVES)[1][-1] == TrialScheduler.STOP  # the search would lose trial 1's final report
    ours = make_scheduler("asha", metric="score", mode="max", time_attr="epoch", max_epochs=4, grace_epochs=1,
                          reduction_factor=2)
    assert isinstance(ours, LastEpochASHA)
    decisions = _feed(ours, CURVES)
    assert decisions[0] == [TrialScheduler.CONTINUE] * 4 and decisions[1] == [TrialScheduler.CONTINUE] * 4
    assert decisions[2] == [TrialScheduler.STOP]  # before its last epoch, a loser is still stopped


def test_none_is_fifo_and_an_unknown_name_is_refused():
    assert isinstance(make_scheduler("none", metric="s", mode="max", time_attr="epoch", max_epochs=3,
                                     grace_epochs=1, reduction_factor=2), FIFOScheduler)
    with pytest.raises(ValueError, match="unknown scheduler 'hyperband'"):
        make_scheduler("hyperband", metric="s", mode="max", time_attr="epoch", max_epochs=3, grace_epochs=1,
                       reduction_factor=2)
