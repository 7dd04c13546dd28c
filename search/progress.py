"""What a search prints while it runs: one line per epoch a trial reports, read on the driver.

    [3/6 done, 2 running, ETA 4m10s] trial mssl+ral-19a671ab: epoch 2/3, val SumR 190.4, best 201.2 (search best 232.1)

``epoch i/N``: the epoch just reported and the trial's max epochs (its config's ``epochs``, ``?`` when the
config has none, e.g. an ablation's base that leaves it to the backbone; ASHA or early stopping on
patience may end it before N); ``val SumR``: that epoch's; ``best``: the trial's best val SumR
so far; ``search best``: the running max of the best val SumR over every result of this Tune run so far.
The line at a trial's end is ``search.results.status_line``'s (finished, stopped early, failed).

The ETA (``eta_seconds``) is an estimate of the time left for this Tune run's trials:

    remaining epochs = sum over running trials of (N - epoch reported) + trials not started x E
    ETA = remaining epochs x (seconds per epoch) / min(concurrency, running + not started)

with E the mean number of epochs of the trials that ended so far (N before any ended: ASHA stops trials
early, so the trials that ended say how many a trial runs), and seconds per epoch the trials' summed
``time_total_s`` over their summed epochs so far. It assumes trials run ``concurrency`` at a time with a
slot never idle; it is ``-`` before the first epoch. Ray's own per-iteration tables are off
(``search/tuning.py``), so these lines and the status lines are what a search prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ray.tune import Callback

from trainables.trial_report import METRIC, TIME_ATTR, VAL, is_failed, is_finished, metric_key

EPOCHS_KEY = "epochs"  # a trial config's max epochs (search/run.py's --max-epochs)
VAL_SUMR = metric_key(VAL, "SumR")
DONE = ("TERMINATED", "ERROR")
RUNNING = "RUNNING"


def format_duration(seconds: float | None) -> str:
    """``4m10s``, ``1h02m``, ``35s``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def eta_seconds(running: Sequence[tuple[int, int]], not_started: int, ended_epochs: Sequence[int],
                max_epochs: int, seconds: float, epochs: int, concurrency: int) -> float | None:
    """The module docstring's estimate. ``running``: (epoch reported, N) of each running trial;
    ``ended_epochs``: the epochs each ended trial ran; ``max_epochs``: N of a trial not started;
    ``seconds``/``epochs``: the trials' summed running time and epochs so far. None before any epoch."""
    if epochs <= 0:
        return None
    expected = sum(ended_epochs) / len(ended_epochs) if ended_epochs else max_epochs
    remaining = sum(max(n - epoch, 0) for epoch, n in running) + not_started * expected
    slots = max(1, min(concurrency, len(running) + not_started))
    return remaining * (seconds / epochs) / slots


def progress_line(done: int, total: int, running: int, eta: float | None, label: str, epoch: int,
                  max_epochs: int | None, val_sumr: float | None, best: float | None,
                  search_best: float | None) -> str:
    """One progress line (the module docstring's example)."""
    def number(value: float | None) -> str:
        return f"{value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"

    return (f"[{done}/{total} done, {running} running, ETA {format_duration(eta)}] trial {label}: epoch {epoch}/"
            f"{max_epochs if max_epochs is not None else '?'}, val SumR {number(val_sumr)}, best {number(best)} "
            f"(search best {number(search_best)})")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class SearchProgress(Callback):
    """Prints ``progress_line`` for every epoch report of a trial (not for its final or error report, which
    ``search.results.TrialStatus`` turns into a status line). ``total``: the Tune run's trials
    (``num_samples``); ``concurrency``: trials at once (None: the most seen running at once)."""

    def __init__(self, total: int, concurrency: int | None = None) -> None:
        self.total = total
        self.concurrency = concurrency
        self.search_best: float | None = None
        self._most_running = 1
        self._plugins: list[str] | None = None

    @classmethod
    def for_config(cls, tune_config: Any) -> list[SearchProgress]:
        """``[SearchProgress]`` for a ``tune.TuneConfig`` (its ``num_samples`` and its ConcurrencyLimiter's
        ``max_concurrent``); ``[]`` without one (a restored run keeps the callbacks it was started with)."""
        if tune_config is None:
            return []
        return [cls(tune_config.num_samples, getattr(tune_config.search_alg, "max_concurrent", None))]

    def _label(self, trial: Any) -> str:
        from tracking.search_results import trial_label

        if self._plugins is None:
            from trainables.plugins import list_plugins

            self._plugins = list_plugins()
        return trial_label(dict(trial.config or {}), trial.trial_id, self._plugins)

    def line(self, trials: Sequence[Any], trial: Any, result: dict[str, Any]) -> str | None:
        """The line for ``result`` of ``trial`` (None for a final or error report), updating the search best.
        ``trials``: every trial of the run so far (Tune's ``Trial``: ``trial_id``, ``status``, ``config``,
        ``last_result``); ``result`` is ``trial``'s newest, not yet in its ``last_result``."""
        best = _number(result.get(METRIC))
        trials = [*(t for t in trials if t.trial_id != trial.trial_id), trial]  # matched by id, this one once
        for value in [best, *(_number((t.last_result or {}).get(METRIC)) for t in trials)]:  # a restored run's too
            if value is not None and math.isfinite(value) and (self.search_best is None or value > self.search_best):
                self.search_best = value
        if is_finished(result) or is_failed(result) or TIME_ATTR not in result:
            return None
        last = {t.trial_id: (result if t is trial else (t.last_result or {})) for t in trials}
        running = [t for t in trials if t.status == RUNNING or t is trial]
        done = [t for t in trials if t.status in DONE and t is not trial]
        self._most_running = max(self._most_running, len(running))

        def epochs_of(t: Any) -> int:
            return int(last[t.trial_id].get(TIME_ATTR) or 0)

        def max_epochs_of(t: Any) -> int | None:
            value = (t.config or {}).get(EPOCHS_KEY)
            return int(value) if isinstance(value, int) else None

        known = [n for n in (max_epochs_of(t) for t in trials) if n is not None]
        default_n = max(known) if known else epochs_of(trial)
        reported = [t for t in trials if epochs_of(t) > 0]
        eta = eta_seconds(running=[(epochs_of(t), max_epochs_of(t) or default_n) for t in running],
                          not_started=max(self.total - len(running) - len(done), 0),
                          ended_epochs=[epochs_of(t) for t in done if epochs_of(t) > 0],
                          max_epochs=default_n,
                          seconds=sum(float(last[t.trial_id].get("time_total_s") or 0.0) for t in reported),
                          epochs=sum(epochs_of(t) for t in reported),
                          concurrency=self.concurrency or self._most_running)
        return progress_line(len(done), self.total, len(running), eta, self._label(trial), epochs_of(trial),
                             max_epochs_of(trial), _number(result.get(VAL_SUMR)), best, self.search_best)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        text = self.line(trials, trial, result)
        if text is not None:
            print(text, flush=True)


__all__ = ["SearchProgress", "eta_seconds", "format_duration", "progress_line"]
