"""The Optuna searcher of a search: Ray's ``OptunaSearch`` that tells Optuna the truth about early stops.

Ray's wrapper tells Optuna every trial that ASHA stopped as COMPLETE with its early (low) score, which
skews TPE toward configs that merely start slowly. Here a trial that did not finish on its own (no
``finished`` in its last result: the scheduler stopped it) is told as PRUNED, with its per-epoch values
reported as intermediate values up to the one it was stopped on, which is how Optuna's samplers expect
early-stopped trials (TPE ranks pruned trials by their last step and value);
a trial that ended with ``trial_error`` (its own config or a NaN loss) is told as FAIL.

With a persistent Optuna storage (search/study_storage.py) the study is written as trials report, each Optuna
trial tagged with its Ray trial id (user attribute ``RAY_TRIAL_ATTR``). Tune saves the searcher every few
seconds and a killed driver restores the last save, while the storage kept every write since: ``restore``
catches up with it, so the resumed search writes each trial once (see ``PruneAwareOptunaSearch.restore``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search import ray_version
from trainables.errors import InputError
from trainables.trial_report import RAY_TRIAL_ATTR, is_failed, is_finished

SAMPLERS = ("tpe", "random", "cmaes")
#: user attribute of an Optuna trial asked after Tune's last save of a driver that was killed: Tune runs its
#: config again under a new trial id, and the study keeps it as FAIL
ABANDONED_ATTR = "abandoned"
ABANDONED = "the driver stopped before Tune saved this trial; --resume ran its config again as a new trial"


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """Random (``search/run.py``'s default), TPE, or CMA-ES (continuous settings; categorical ones fall back to
    random)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise InputError(f"unknown sampler {name!r} (available: {', '.join(SAMPLERS)})")


class PruneAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` telling scheduler-stopped trials as PRUNED and self-failed ones as FAIL
    (``stopped_as="complete"`` keeps Ray's behaviour, for comparison). It reads ``OptunaSearch``'s private
    state, verified on Ray ``VERIFIED_RAY``: on any other Ray it keeps Ray's behaviour, with a warning."""

    def __init__(self, *args: Any, stopped_as: str = "pruned", **kwargs: Any) -> None:
        if stopped_as not in ("pruned", "complete"):
            raise InputError(f"stopped_as must be pruned or complete, got {stopped_as!r}")
        super().__init__(*args, **kwargs)
        if stopped_as == "pruned" and not ray_version.is_verified_ray():
            warnings.warn(f"Ray {ray_version.installed_ray()} is not {ray_version.VERIFIED_RAY}: early-stopped and "
                          "failed trials are told to Optuna as Ray tells them (COMPLETE)", stacklevel=2)
            stopped_as = "ray"
        self.stopped_as = stopped_as
        #: Ray trial id -> the state told to Optuna (what tests and reports read)
        self.told: dict[str, str] = {}
        #: trials the study had finished before a restore of an older searcher state (told once, not again)
        self.told_before_restore: set[str] = set()
        if self._storage is not None and self._ot_study is not None and not self._study().get_trials():
            with warnings.catch_warnings():  # experimental in Optuna 5: names the objective in optuna-dashboard
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._study().set_metric_names([self.metric])

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ray's suggestion, its new Optuna trial tagged with ``trial_id`` (``RAY_TRIAL_ATTR``)."""
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved searcher state (a pickle: its study, sampler and trials), then caught up with the study's
        storage, which a killed driver may have written after that save: a trial the save knows and the storage
        has finished is not told again (its results after the resume are ignored), and a trial the save does not
        know (Tune runs its config again under a new id) is told FAIL, tagged ``ABANDONED_ATTR``, instead of
        staying RUNNING (one that had ended keeps its state: a finished trial cannot be changed). An in-memory
        study is the save's own: nothing to catch up."""
        super().restore(checkpoint_path)
        self.told_before_restore = set(getattr(self, "told_before_restore", ()))
        if self._ot_study is None:
            return
        study = self._study()
        known = {ot_trial.number: trial_id for trial_id, ot_trial in self._ot_trials.items()}
        for stored in study.get_trials(deepcopy=False):
            trial_id = known.get(stored.number)
            if trial_id is None and stored.state == TrialState.RUNNING:
                study._storage.set_trial_user_attr(stored._trial_id, ABANDONED_ATTR, ABANDONED)
                study.tell(stored.number, state=TrialState.FAIL)
            elif trial_id is not None and stored.state.is_finished() and trial_id not in self._completed_trials:
                self._completed_trials.add(trial_id)
                self.told[trial_id] = stored.state.name
                self.told_before_restore.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self.told_before_restore:
            return
        if self.stopped_as == "ray":
            return super().on_trial_complete(trial_id, result, error)
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        if error or is_failed(result):
            state, value = TrialState.FAIL, None
        elif is_finished(result) or self.stopped_as == "complete":
            return self._tell_complete(trial_id, result, error)
        else:
            state, value = TrialState.PRUNED, None
            self._report_stopping_value(ot_trial, result)
        self._study().tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)
        self.told[trial_id] = state.name

    def _report_stopping_value(self, ot_trial: optuna.Trial, result: dict[str, Any] | None) -> None:
        """The value the scheduler stopped a trial on, as its last intermediate value: Tune hands that report to
        the scheduler and then to ``on_trial_complete``, not ``on_trial_result`` (the hyperband scheduler stores
        it itself: a step already reported is kept, not warned about)."""
        if result is None or self.metric not in result or TRAINING_ITERATION not in result:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Optuna's "already reported" (hyperband)
            ot_trial.report(float(result[self.metric]), int(result[TRAINING_ITERATION]))

    def _tell_complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        super().on_trial_complete(trial_id, result, error)
        trial = self._ot_trials[trial_id]
        states = {t.number: t.state for t in self._study().get_trials(deepcopy=False)}
        self.told[trial_id] = states.get(trial.number, TrialState.COMPLETE).name

    def _study(self) -> optuna.Study:
        """OptunaSearch's study: Ray leaves ``_ot_study`` unannotated (``None`` until ``_setup_study``), and a
        trial it has in ``_ot_trials`` was asked from this study."""
        return cast(optuna.Study, self._ot_study)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Per-epoch values become Optuna intermediate values, at Ray's step (the training iteration: the epoch,
        which the hyperband scheduler reads too); a failure's report carries none, and the final report's value
        is the trial's own, told when it completes."""
        if trial_id in self.told_before_restore or self.metric not in result or is_failed(result):
            return
        if is_finished(result) and self.stopped_as != "ray":
            return
        super().on_trial_result(trial_id, result)


class FixedConfigs(Searcher):
    """Suggests a fixed list of configs, each once and in order (an ablation's cells x seeds): exact
    configs, not points merged into a space, so a cell without a plugin has none of its settings."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.configs = [dict(c) for c in configs]
        self.next_index = 0

    # Searcher.suggest is annotated Optional[Dict], but its docstring and Tune take Searcher.FINISHED too
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray omits FINISHED
        if self.next_index >= len(self.configs):
            return Searcher.FINISHED
        self.next_index += 1
        return dict(self.configs[self.next_index - 1])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        pass

    def get_state(self) -> dict[str, Any]:
        return {"configs": self.configs, "next_index": self.next_index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.configs, self.next_index = state["configs"], state["next_index"]

    def save(self, checkpoint_path: str) -> None:
        """Tune saves this with the experiment state; a restored run (``--resume``) suggests only the configs
        not suggested yet, so no config runs twice. JSON, not a pickle: the configs are plain values."""
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))
