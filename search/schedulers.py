"""The trial schedulers of a search (imports ray: import it only where a Ray session is started): ASHA that never
stops a trial at its last epoch, Optuna's Hyperband pruner asked through the searcher, or none (FIFO).

A trial that has run every epoch still owes one report: the test metrics of its best weights and
``finished`` (``trainables/trial.py``). ASHA stops a trial when it reaches ``max_t``, and at every rung
(``grace * reduction_factor**k`` epochs) below ``max_t``; with ``max_t`` one past the last epoch a rung
can still fall on the last epoch (max epochs 2, 4, 8, 16 with grace 1 and factor 2), and a trial stopped
there loses its final report and is told to Optuna as pruned although it ran to the end. A trial at its
last epoch is about to end anyway, so :class:`LastEpochASHA` lets it.

``hyperband`` (:class:`OptunaPrunerScheduler`) is Hyperband as Optuna runs it: ``optuna.pruners.HyperbandPruner``
(brackets of asynchronous successive halving, ``min_resource`` = grace epochs, ``max_resource`` = max epochs)
becomes the pruner of the searcher's Optuna study, as in a plain Optuna study (what ``Trial.should_prune()``
asks; Optuna 5's TPE still models all the study's trials, not one bracket's: it reads them with
``Study._get_trials``, which the pruner's per-bracket view does not filter), and the scheduler asks it on every
epoch report whether to stop the trial, never at the trial's last epoch (as above). Ray's own pair for this
(``HyperBandForBOHB`` + ``TuneBOHB``) needs hpbandster, which the project does not install, and does not run
the project's trials as they are (``benchmarks/search_efficiency.py`` says why).
"""

from __future__ import annotations

import copy
from typing import Any

from optuna.pruners import HyperbandPruner
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from search import ray_version
from trainables.errors import InputError
from trainables.trial_report import FINISHED, is_failed

SCHEDULER_NAMES = ("asha", "hyperband", "none")


class LastEpochASHA(ASHAScheduler):
    """ASHA over ``time_attr`` (epochs) that lets a trial at ``last_epoch`` continue to its final report."""

    def __init__(self, *, last_epoch: int, **kwargs: Any) -> None:
        super().__init__(max_t=last_epoch + 1, **kwargs)
        self.last_epoch = last_epoch

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get(self._time_attr, 0) >= self.last_epoch:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def rung_at(self, epoch: int) -> int | None:
        """The rung (0: the first, at the grace epochs) a trial stopped at ``epoch`` was judged at: the highest
        milestone at or below ``epoch`` (a trial reports every epoch, so the lower rungs judged it before). None
        before the first rung. The milestones are Ray's own (one bracket, the default)."""
        milestones = sorted(milestone for milestone, _ in self._brackets[0]._rungs)
        reached = [rung for rung, milestone in enumerate(milestones) if milestone <= epoch]
        return reached[-1] if reached else None


def _optuna_searcher(search_alg: Any) -> OptunaSearch | None:
    """The ``OptunaSearch`` inside Tune's search algorithm (SearchGenerator, ConcurrencyLimiter, ... wrap it)."""
    for _ in range(8):  # a few wrappers deep at most
        if isinstance(search_alg, OptunaSearch) or search_alg is None:
            return search_alg
        search_alg = getattr(search_alg, "searcher", None)
    return None


class OptunaPrunerScheduler(FIFOScheduler):
    """FIFO, except that on each epoch report it asks the searcher's Optuna study's pruner (``pruner``, installed
    as the study's pruner) whether the trial should stop, and stops it when so; never at ``last_epoch``, nor on a
    report without the metric (a trial's final report or its failure).

    Tune calls the scheduler before the searcher with each result, so when the scheduler decides, the Optuna
    trial's intermediate values end at the previous report. The pruner is therefore asked about the trial with
    this report's value added at step ``training_iteration`` (what ``OptunaSearch.on_trial_result`` stores next):
    the answer ``Trial.should_prune()`` gives once the searcher has stored it. On a stop Tune does not pass the
    result on to the searcher, so the scheduler stores that value in the Optuna trial itself (the searcher then
    tells the trial as pruned, ``search.searcher``). ``searcher``: the ``OptunaSearch`` of the search; without it
    the scheduler takes it from the Tune controller on the first trial (as Ray's ``HyperBandForBOHB`` reaches its
    searcher), so ``make_scheduler`` callers that do not pass it still work. The pruner answers for the study's
    direction (the searcher's ``mode``)."""

    def __init__(self, pruner: Any, *, last_epoch: int, time_attr: str, metric: str,
                 searcher: OptunaSearch | None = None) -> None:
        super().__init__()
        if searcher is not None and _optuna_searcher(searcher) is None:
            raise InputError(f"the hyperband scheduler needs an OptunaSearch searcher, got {type(searcher).__name__}")
        self.pruner = pruner
        self.last_epoch = last_epoch
        self.time_attr = time_attr
        self._metric = metric  # TrialScheduler.metric reads it
        self.searcher = _optuna_searcher(searcher)  # a ConcurrencyLimiter is unwrapped
        self._study()  # the pruner on the study from the start (what its trials' should_prune() asks)

    def _study(self) -> Any:
        """The searcher's Optuna study with ``pruner`` as its pruner (reinstalled after a restore replaced it)."""
        study = getattr(self.searcher, "_ot_study", None)  # Ray's OptunaSearch keeps its study here
        if study is not None and study.pruner is not self.pruner:
            study.pruner = self.pruner
        return study

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if self.searcher is None and tune_controller is not None:
            self.searcher = _optuna_searcher(getattr(tune_controller, "search_alg", None))
            if self.searcher is None:
                raise InputError("the hyperband scheduler needs the search's OptunaSearch searcher "
                                 "(make_scheduler(..., searcher=...))")
        self._study()
        super().on_trial_add(tune_controller, trial)

    def should_stop(self, trial_id: str, result: dict[str, Any]) -> bool:
        """What the study's pruner says about ``trial_id`` once ``result``'s value is reported (no state changes
        besides the pruner's own rung records)."""
        study = self._study()
        ot_trial = getattr(self.searcher, "_ot_trials", {}).get(trial_id)
        if study is None or ot_trial is None:
            return False
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number == ot_trial.number]
        if not running:
            return False
        frozen = copy.copy(running[0])
        frozen.intermediate_values = {**frozen.intermediate_values,
                                      int(result[TRAINING_ITERATION]): float(result[self.metric])}
        return bool(self.pruner.prune(study, frozen))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if (self.metric not in result or is_failed(result) or result.get(FINISHED)
                or TRAINING_ITERATION not in result or result.get(self.time_attr, 0) >= self.last_epoch):
            return TrialScheduler.CONTINUE
        if not self.should_stop(trial.trial_id, result):
            return TrialScheduler.CONTINUE
        # Tune skips the searcher's on_trial_result for a stopped trial: store the value it would have
        assert self.searcher is not None  # should_stop found the trial in its study
        self.searcher._ot_trials[trial.trial_id].report(float(result[self.metric]), int(result[TRAINING_ITERATION]))
        return TrialScheduler.STOP


def make_scheduler(name: str, *, metric: str, mode: str, time_attr: str, max_epochs: int, grace_epochs: int,
                   reduction_factor: float, searcher: OptunaSearch | None = None) -> TrialScheduler:
    """``asha`` (:class:`LastEpochASHA`, grace capped at ``max_epochs``), ``hyperband``
    (:class:`OptunaPrunerScheduler` over Optuna's ``HyperbandPruner``: min resource ``grace_epochs``, max
    resource ``max_epochs``, an integer ``reduction_factor``; ``searcher`` is the search's ``OptunaSearch``)
    or ``none`` (every trial to its end)."""
    if name == "none":
        return FIFOScheduler()
    if name == "hyperband":
        # the scheduler reads and writes OptunaSearch's private trials and study
        ray_version.require_verified_ray("--scheduler hyperband", "use asha")
        if reduction_factor != int(reduction_factor) or reduction_factor < 2:
            raise InputError(f"hyperband: the reduction factor must be an integer >= 2, got {reduction_factor:g}")
        pruner = HyperbandPruner(min_resource=min(grace_epochs, max_epochs), max_resource=max_epochs,
                                 reduction_factor=int(reduction_factor))
        return OptunaPrunerScheduler(pruner, last_epoch=max_epochs, time_attr=time_attr, metric=metric,
                                     searcher=searcher)
    if name != "asha":
        raise InputError(f"unknown scheduler {name!r}: choose from {', '.join(SCHEDULER_NAMES)}")
    return LastEpochASHA(last_epoch=max_epochs, time_attr=time_attr, metric=metric, mode=mode,
                         grace_period=min(grace_epochs, max_epochs), reduction_factor=reduction_factor)


__all__ = ["LastEpochASHA", "OptunaPrunerScheduler", "SCHEDULER_NAMES", "make_scheduler"]
