"""ASHA as the search runs it: stops losers at its rungs, but never a trial at its last epoch (a rung can fall
there; the trial still owes its final report with the test metrics); Optuna's Hyperband pruner asked through the
searcher (``hyperband``): the decisions ``Trial.should_prune()`` gives in a plain Optuna study, the last epoch
protected alike."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.pruners import HyperbandPruner
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from search.schedulers import LastEpochASHA, OptunaPrunerScheduler, make_scheduler
from search.searcher import PruneAwareOptunaSearch


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
    with pytest.raises(ValueError, match="unknown scheduler 'bohb'"):
        make_scheduler("bohb", metric="s", mode="max", time_attr="epoch", max_epochs=3, grace_epochs=1,
                       reduction_factor=2)


# --- hyperband: Optuna's HyperbandPruner through the searcher ---------------------------------------------

def _space(trial: optuna.Trial) -> dict:
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def _searcher() -> PruneAwareOptunaSearch:
    return PruneAwareOptunaSearch(space=_space, metric="score", mode="max",
                                  sampler=optuna.samplers.RandomSampler(seed=0))


def _hyperband(searcher=None, max_epochs: int = 4, grace_epochs: int = 1, reduction_factor: float = 2):
    return make_scheduler("hyperband", metric="score", mode="max", time_attr="epoch", max_epochs=max_epochs,
                          grace_epochs=grace_epochs, reduction_factor=reduction_factor, searcher=searcher)


def _run_tune_order(scheduler, searcher, curves: list[list[float]]) -> list[list[str]]:
    """What Tune does with each epoch report, trials interleaved epoch by epoch: the scheduler decides, then (unless
    it stopped the trial) the searcher stores the value; a stopped trial is completed at once."""
    trials = [Trial("run_trial", stub=True, trial_id=f"t{i}") for i in range(len(curves))]
    for trial in trials:
        searcher.suggest(trial.trial_id)
        scheduler.on_trial_add(None, trial)
    decisions: list[list[str]] = [[] for _ in curves]
    for epoch in range(1, max(len(c) for c in curves) + 1):
        for i, (trial, curve) in enumerate(zip(trials, curves)):
            if len(curve) < epoch or TrialScheduler.STOP in decisions[i]:
                continue
            result = {"epoch": epoch, "training_iteration": epoch, "score": curve[epoch - 1]}
            decision = scheduler.on_trial_result(None, trial, result)
            decisions[i].append(decision)
            if decision == TrialScheduler.STOP:
                searcher.on_trial_complete(trial.trial_id, result)
            else:
                searcher.on_trial_result(trial.trial_id, result)
    return decisions


def _reference_prunes(study_name: str, curves: list[list[float]], max_epochs: int) -> list[int | None]:
    """In a plain Optuna study with the same pruner and trial numbers: the epoch at which ``should_prune()``
    (after ``report``) first says True, per trial (None: never), same interleaving."""
    study = optuna.create_study(study_name=study_name, direction="maximize",
                                pruner=HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=2))
    trials = [study.ask() for _ in curves]
    pruned: list[int | None] = [None] * len(curves)
    for epoch in range(1, max(len(c) for c in curves) + 1):
        for i, (trial, curve) in enumerate(zip(trials, curves)):
            if len(curve) < epoch or pruned[i] is not None:
                continue
            trial.report(curve[epoch - 1], epoch)
            if trial.should_prune():
                pruned[i] = epoch
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return pruned


# 8 trials of 4 epochs; trial 5 is the worst at every epoch but the last, where it is best
HB_CURVES = [[10.0, 11.0, 12.0, 13.0], [5.0, 6.0, 6.5, 7.0], [12.0, 13.0, 14.0, 15.0], [3.0, 4.0, 4.5, 5.0],
             [11.0, 12.0, 16.0, 17.0], [1.0, 1.5, 2.0, 99.0], [9.0, 9.5, 10.0, 10.5], [2.0, 2.5, 3.0, 3.5]]


def test_hyperband_stops_what_optunas_should_prune_stops_and_never_at_the_last_epoch():
    searcher = _searcher()
    scheduler = _hyperband(searcher)
    assert isinstance(scheduler, OptunaPrunerScheduler)
    assert searcher._ot_study.pruner is scheduler.pruner  # the study's pruner: its sampler sees the brackets
    decisions = _run_tune_order(scheduler, searcher, HB_CURVES)
    ours = [d.index(TrialScheduler.STOP) + 1 if TrialScheduler.STOP in d else None for d in decisions]
    reference = _reference_prunes(searcher._ot_study.study_name, HB_CURVES, 4)
    # the same trials stopped at the same epochs, except where the reference prunes at the last epoch (4)
    assert ours == [None if epoch == 4 else epoch for epoch in reference]
    assert any(epoch is not None and epoch < 4 for epoch in ours)  # losers are stopped before their end
    assert all(TrialScheduler.STOP not in d[3:] for d in decisions)  # nobody at its last epoch
    for i, epoch in enumerate(ours):
        ot_trial = searcher._ot_study.trials[i]
        if epoch is not None:  # the stop's value was stored, and the trial told as pruned
            assert max(ot_trial.intermediate_values) == epoch and searcher.told[f"t{i}"] == "PRUNED"
        else:
            assert sorted(ot_trial.intermediate_values) == [1, 2, 3, 4]


def test_hyperband_passes_final_and_failed_reports_and_finds_its_searcher_through_tune():
    searcher = _searcher()
    scheduler = _hyperband()  # no searcher given: taken from the Tune controller (as search/run.py builds it)
    controller = SimpleNamespace(search_alg=SimpleNamespace(searcher=ConcurrencyLimiter(searcher, 2)))
    trial = Trial("run_trial", stub=True, trial_id="t0")
    searcher.suggest("t0")
    scheduler.on_trial_add(controller, trial)
    assert scheduler.searcher is searcher and searcher._ot_study.pruner is scheduler.pruner
    for result in ({"epoch": 1, "score": 1.0, "finished": True, "training_iteration": 2},
                   {"trial_error": "boom", "finished": True, "score": float("-inf")}, {"epoch": 1}):
        assert scheduler.on_trial_result(controller, trial, result) == TrialScheduler.CONTINUE
    with pytest.raises(ValueError, match="needs the search's OptunaSearch"):
        _hyperband().on_trial_add(SimpleNamespace(search_alg=None), trial)
    with pytest.raises(ValueError, match="reduction factor must be an integer >= 2, got 2.5"):
        _hyperband(searcher, reduction_factor=2.5)


def _stopped_trial_state(searcher: PruneAwareOptunaSearch) -> str:
    """The Optuna state of a trial the scheduler stopped after one epoch (no final report)."""
    searcher.suggest("t0")
    searcher.on_trial_result("t0", {"epoch": 1, "training_iteration": 1, "score": 0.5})
    searcher.on_trial_complete("t0", {"epoch": 1, "training_iteration": 1, "score": 0.5})
    (trial,) = searcher._ot_study.get_trials(deepcopy=False)
    return trial.state.name


def test_on_an_unverified_ray_the_searcher_keeps_rays_behaviour_and_hyperband_is_refused(monkeypatch):
    """The searcher and the hyperband scheduler read OptunaSearch's private state, verified on one Ray:
    on another, a stopped trial is told as Ray tells it (COMPLETE), with a warning, and hyperband refused."""
    assert _stopped_trial_state(_searcher()) == "PRUNED"
    monkeypatch.setattr("search.ray_version.installed_ray", lambda: "9.9.9")
    with pytest.warns(UserWarning, match="Ray 9.9.9 is not 2.60.0: early-stopped and failed trials are told"):
        searcher = _searcher()
    assert _stopped_trial_state(searcher) == "COMPLETE"
    with pytest.raises(ValueError, match=r"--scheduler hyperband needs Ray 2.60.0 \(this is Ray 9.9.9\)"):
        _hyperband(_searcher())
