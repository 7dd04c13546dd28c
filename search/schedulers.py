"""The trial schedulers of a search (imports ray: import it only where a Ray session is started): ASHA that never stops a trial at its last epoch, or none (FIFO).

A trial that has run every epoch still owes one report: the test metrics of its best weights and
``finished`` (``trainables/trial.py``). ASHA stops a trial when it reaches ``max_t``, and at every rung
(``grace * reduction_factor**k`` epochs) below ``max_t``; with ``max_t`` one past the last epoch a rung
can still fall on the last epoch (max epochs 2, 4, 8, 16 with grace 1 and factor 2), and a trial stopped
there loses its final report and is told to Optuna as pruned although it ran to the end. A trial at its
last epoch is about to end anyway, so :class:`LastEpochASHA` lets it.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler


class LastEpochASHA(ASHAScheduler):
    """ASHA over ``time_attr`` (epochs) that lets a trial at ``last_epoch`` continue to its final report."""

    def __init__(self, *, last_epoch: int, **kwargs: Any) -> None:
        super().__init__(max_t=last_epoch + 1, **kwargs)
        self.last_epoch = last_epoch

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get(self._time_attr, 0) >= self.last_epoch:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def make_scheduler(name: str, *, metric: str, mode: str, time_attr: str, max_epochs: int, grace_epochs: int,
                   reduction_factor: float) -> TrialScheduler:
    """``asha`` (:class:`LastEpochASHA`, grace capped at ``max_epochs``) or ``none`` (every trial to its end)."""
    if name == "none":
        return FIFOScheduler()
    if name != "asha":
        raise ValueError(f"unknown scheduler {name!r}: choose from asha, none")
    return LastEpochASHA(last_epoch=max_epochs, time_attr=time_attr, metric=metric, mode=mode,
                         grace_period=min(grace_epochs, max_epochs), reduction_factor=reduction_factor)


__all__ = ["LastEpochASHA", "make_scheduler"]
