"""The report of a search: figures (PNG) and one self-contained HTML page, logged to the parent run.

Made at the end of ``search/run.py`` and on demand by ``search/report.py`` from what the search left in
its storage (:func:`tracking.search_results.load_search`), so it needs neither Ray nor torch:

- parameter importances: Optuna's fANOVA evaluator on an in-memory Optuna study rebuilt from the trials
  (finished trials COMPLETE, trials the scheduler stopped PRUNED, failed ones FAIL); with fewer than
  :data:`MIN_IMPORTANCE_TRIALS` finished trials a "too few trials" note instead of a ranking that would
  be noise;
- the optimisation history: every trial's best val SumR in the order the trials started, and the best
  so far over the finished trials;
- parallel coordinates of every trial that ran, over the settings that varied among them only (labels
  abbreviated and rotated, so 16 settings stay readable), the :data:`HIGHLIGHT_TOP` best in colour;
- slice plots: one small panel per varied setting, best val SumR against its value (categories as strips);
- learning curves (val SumR per epoch) of the best trials;
- ``report.html``: the search name, the trial counts (finished, stopped early by the scheduler, failed,
  running), the best-trials table (the content of ``search.results.best_trials_table``), the
  confirmation stage's configs over training seeds and the champion (``tracking/champion.py``), the
  importances and the figures, PNGs embedded as data URIs.

A search's driver rewrites the report after each trial ends (``search/live_report.py``); trials it marks
``running`` are counted as such and left out of the study.
"""

from __future__ import annotations

import base64
import html
import json
import math
import random
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, cast

import matplotlib

matplotlib.use("Agg")  # headless: the report runs in a search driver or a shell without display

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402

from tracking.champion import RULE, interval_text, selection  # noqa: E402
from tracking.search_results import FinishedSearch, TrialRecord, compact_config, rank_key  # noqa: E402
from trainables.trial_report import COLUMNS, RAY_TRIAL_ATTR, STOPPED_EARLY, TAG_PREFIX, metric_key  # noqa: E402  (standard library only)

TABLE_TOP = 5  # rows of the best-trials table (as search.results.best_trials_table)
CURVES_TOP = 5  # learning curves drawn
HIGHLIGHT_TOP = 5  # trials drawn in colour in the parallel coordinates (the others grey)
#: finished trials below which importances are a note, not a ranking: a random forest fitted to fewer
#: trials than about this cannot tell a setting's effect from noise
MIN_IMPORTANCE_TRIALS = 10
LOG_DECADES = 2.0  # a positive numeric setting whose values span this many decades gets a log axis
LABEL_WIDTH = 16  # characters of an axis label in the parallel coordinates before it is abbreviated
IMPORTANCES, HISTORY, PARALLEL, SLICES, CURVES = ("importances.png", "history.png", "parallel.png", "slices.png",
                                                  "curves.png")
HTML = "report.html"
#: every file the report can write (a re-written report replaces exactly these)
REPORT_FILES = (IMPORTANCES, HISTORY, PARALLEL, SLICES, CURVES, HTML)
ARTIFACT_PATH = "report"
#: one report drawn at a time in a process: pyplot's figures and Optuna's verbosity are global (a search's
#: live report draws in a thread of the driver, search/live_report.py)
_DRAWING = threading.Lock()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> TypeGuard[float]:
    return _number(value) and math.isfinite(value)


# ---------------------------------------------------------------- the trials as an Optuna study


def chronological(search: FinishedSearch) -> list[TrialRecord]:
    """The trials in the order they started (their first report's time less its duration): the trial ids
    Ray gives are not ordered, and the optimisation history is about order."""
    def start(trial: TrialRecord) -> tuple[float, str]:
        first = trial.results[0] if trial.results else {}
        when = first.get("timestamp")
        if not _finite(when):
            return math.inf, trial.trial_id
        took = first.get("time_this_iter_s")
        return float(when) - (float(took) if _finite(took) else 0.0), trial.trial_id

    return sorted(search.trials, key=start)


def _plain(value: Any) -> Any:
    """A config value as an Optuna parameter value (None, bool, int, float or str)."""
    if value is None or isinstance(value, (bool, str)) or _finite(value):
        return value
    return json.dumps(value, sort_keys=True, default=str)  # lists, dicts, nan, inf


def infer_distributions(configs: list[dict[str, Any]]) -> dict[str, BaseDistribution]:
    """One Optuna distribution per config key that takes more than one value across ``configs``:
    numbers -> Float/IntDistribution over the observed range (log when positive and spanning at least
    :data:`LOG_DECADES` decades), anything else -> CategoricalDistribution of the observed values.
    A key missing from some configs (a plugin's setting when the plugin is off) is still a parameter."""
    observed: dict[str, dict[tuple[str, Any], Any]] = {}
    for config in configs:
        for key, value in config.items():
            value = _plain(value)
            observed.setdefault(key, {})[(type(value).__name__, value)] = value
    distributions: dict[str, BaseDistribution] = {}
    for key in sorted(observed):
        values = list(observed[key].values())
        if len(values) < 2:
            continue  # constant: the search's fixed settings
        if all(_number(v) for v in values):
            low, high = min(values), max(values)
            log = low > 0 and high / low >= 10 ** LOG_DECADES
            if all(isinstance(v, int) for v in values):
                distributions[key] = IntDistribution(int(low), int(high), log=log)
            else:
                distributions[key] = FloatDistribution(float(low), float(high), log=log)
        else:
            mixed = len({type(v) for v in values}) > 1  # e.g. True and 1, which compare equal
            choices = sorted({str(v) for v in values}) if mixed else sorted(values, key=str)
            distributions[key] = CategoricalDistribution(choices)
    return distributions


def _param(value: Any, distribution: BaseDistribution) -> Any:
    value = _plain(value)
    if isinstance(distribution, CategoricalDistribution) and value not in distribution.choices:
        return str(value)  # a mixed-type choice, stored as text
    if isinstance(distribution, FloatDistribution):
        return float(value)
    return value


def trial_state(trial: TrialRecord) -> TrialState | None:
    """COMPLETE (ran to its end), PRUNED (stopped early by the scheduler after some epochs), FAIL, or
    None for a trial still running (a live report) or without any epoch (still waiting or interrupted
    before its first report)."""
    if trial.running:
        return None
    if trial.failed:
        return TrialState.FAIL
    if trial.finished:
        return TrialState.COMPLETE if _finite(trial.score) else TrialState.FAIL
    return TrialState.PRUNED if trial.epochs() else None


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """No "A new study created" lines nor experimental-API warnings, Optuna's verbosity restored after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def rebuild_study(search: FinishedSearch) -> optuna.Study:
    """An in-memory Optuna study (maximize best val SumR) of every trial, in the order they started, params
    over the distributions inferred from all of the search's configs, val SumR per epoch as intermediate
    values, the Ray trial id as user attribute ``trial_id``."""
    distributions = infer_distributions([t.config for t in search.trials])
    with _quiet_optuna():
        study = optuna.create_study(direction="maximize", study_name=search.name)
        for trial in chronological(search):
            state = trial_state(trial)
            if state is None:
                continue
            study.add_trial(create_trial(
                state=state, value=trial.score if state != TrialState.FAIL else None,
                params={k: _param(trial.config[k], d) for k, d in distributions.items() if k in trial.config},
                distributions={k: d for k, d in distributions.items() if k in trial.config},
                intermediate_values={int(e["epoch"]): float(e["val_sumr"]) for e in trial.epochs()
                                     if _finite(e.get("val_sumr")) and _number(e.get("epoch"))},
                user_attrs={RAY_TRIAL_ATTR: trial.trial_id}))
    return study


@dataclass
class Importances:
    """fANOVA importances of the params (largest first), or why there are none."""

    values: dict[str, float]
    note: str | None
    complete: int


def too_few_note(finished: int, minimum: int = MIN_IMPORTANCE_TRIALS) -> str:
    """The note shown instead of importances over ``finished`` trials."""
    return (f"too few trials ({finished} finished; importances need ~{minimum}): a ranking of the settings over "
            f"so few would be noise")


def param_importances(study: optuna.Study, minimum: int = MIN_IMPORTANCE_TRIALS) -> Importances:
    """``optuna.importance.get_param_importances`` with fANOVA (seed 0) over the COMPLETE trials; with
    fewer than ``minimum`` of them (at least 2), none and the :func:`too_few_note`."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < max(2, minimum):
        return Importances({}, too_few_note(len(complete), max(2, minimum)), len(complete))
    if len({t.value for t in complete}) < 2:
        return Importances({}, "parameter importances need finished trials with different scores; every "
                               "finished trial has the same best val SumR", len(complete))
    try:
        with _quiet_optuna():
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except ImportError as exc:  # fANOVA needs scikit-learn (installed with mlflow)
        return Importances({}, f"no parameter importances: {exc}", len(complete))
    if not values:
        return Importances({}, "parameter importances need a setting that every finished trial has and "
                               "that varies; there is none", len(complete))
    return Importances({k: float(v) for k, v in values.items()}, None, len(complete))


# ---------------------------------------------------------------- the table


def table_trials(search: FinishedSearch) -> list[TrialRecord]:
    """Trials that ran at least an epoch, best val SumR first (``search.results.ranked``)."""
    return sorted((t for t in chronological(search) if not t.failed and t.last.get("epoch")),
                  key=lambda t: rank_key(t.score, t.trial_id))


def table_values(trial: TrialRecord) -> tuple[list[Any], list[Any]]:
    """(val, test) R@1/5/10/100/SumR of a table row: val of the best epoch (SumR: the trial's score)."""
    m = trial.last
    val = [m.get(metric_key("best_val", c), m.get(metric_key("val", c))) for c in COLUMNS]
    val[-1] = trial.score
    return val, [m.get(metric_key("test", c)) for c in COLUMNS]


@dataclass(frozen=True)
class Counts:
    """The trials of a search by how they ended (each trial in exactly one class but ``patience``)."""

    total: int
    finished: int  # ran to their own end: max epochs, or early stopping on patience
    patience: int  # of the finished: ended by early stopping on patience
    stopped: int  # stopped early by the scheduler (epochs, no final report)
    failed: int  # their own error, or a Tune error
    running: int  # still running (a live report)
    waiting: int  # no epoch yet (pending, or interrupted before their first report)


def trial_counts(search: FinishedSearch) -> Counts:
    """How the trials ended, from their stored reports (``trainables.trial_report``): a final report
    (``finished``; ``stopped_early`` when on patience), none after some epochs (stopped by the scheduler),
    ``trial_error`` (failed); ``running`` as a live report marked it."""
    finished = patience = stopped = failed = running = waiting = 0
    for trial in search.trials:
        if trial.running:
            running += 1
        elif trial.failed:
            failed += 1
        elif trial.finished:
            finished += 1
            patience += bool(trial.last.get(STOPPED_EARLY))
        elif trial.epochs():
            stopped += 1
        else:
            waiting += 1
    return Counts(len(search.trials), finished, patience, stopped, failed, running, waiting)


def summary_text(search: FinishedSearch) -> str:
    """``6 trials: 3 finished (1 on patience), 3 stopped early by the scheduler, 0 failed`` (then how many
    run or have no epoch yet, when any)."""
    c = trial_counts(search)
    return (f"{c.total} trials: {c.finished} finished" + (f" ({c.patience} on patience)" if c.patience else "")
            + f", {c.stopped} stopped early by the scheduler, {c.failed} failed"
            + (f", {c.running} running" if c.running else "")
            + (f", {c.waiting} without a finished epoch" if c.waiting else ""))


# ---------------------------------------------------------------- figures


def _save(fig: Any, path: Path) -> Path:
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _importances_figure(importances: Importances, path: Path) -> Path:
    """A bar chart of the importances the page lists (computed once, so figure and table agree)."""
    names = list(importances.values)[::-1]  # largest on top
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    bars = ax.barh(names, [importances.values[n] for n in names], color="#1f77b4")
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set_xlabel("importance (fANOVA) for best val SumR")
    ax.set_title(f"Parameter importances ({importances.complete} finished trials)")
    ax.set_xlim(0, max(importances.values.values()) * 1.15 or 1)
    return _save(fig, path)


def _history_figure(search: FinishedSearch, path: Path) -> Path:
    """Best val SumR of every trial that ran, in start order: finished ones filled, stopped ones hollow,
    and the best finished so far. (Optuna's history plot shows finished trials only, and ASHA stops most.)"""
    trials = [t for t in chronological(search) if trial_state(t) in (TrialState.COMPLETE, TrialState.PRUNED)]
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [(i, t.score) for i, t in enumerate(trials) if trial_state(t) == TrialState.COMPLETE]
    stopped = [(i, t.score) for i, t in enumerate(trials) if trial_state(t) == TrialState.PRUNED]
    if done:
        ax.scatter(*zip(*done), color="#1f77b4", label="finished", zorder=3)
        best, steps = -math.inf, []
        for t in trials:
            if trial_state(t) == TrialState.COMPLETE:
                best = max(best, t.score)
            steps.append(best if best > -math.inf else math.nan)
        ax.step(range(len(trials)), steps, where="post", color="#d62728", label="best finished so far")
    if stopped:
        ax.scatter(*zip(*stopped), facecolors="none", edgecolors="#7f7f7f", label="stopped early", zorder=3)
    ax.set_xlabel("trial (in start order)")
    cast(MaxNLocator, ax.xaxis.get_major_locator()).set_params(integer=True)  # a new Axes's AutoLocator
    ax.set_ylabel("best val SumR")
    ax.set_title("Optimisation history")
    ax.legend(loc="lower right")
    return _save(fig, path)


MISSING = "n/a"  # the value of a setting a trial does not have (a plugin's setting when the plugin is off)


@dataclass(frozen=True)
class Axis:
    """A setting that varied among the trials drawn: its distribution over the values they had (a
    setting that only some trials have varies by its presence: ``missing``)."""

    name: str
    distribution: BaseDistribution
    missing: bool

    @property
    def numeric(self) -> bool:
        return isinstance(self.distribution, (IntDistribution, FloatDistribution))

    @property
    def log(self) -> bool:
        return self.numeric and bool(getattr(self.distribution, "log", False))

    def position(self, config: dict[str, Any]) -> float:
        """Where ``config``'s value lies on this axis, in [0, 1] (-0.12: missing)."""
        if self.name not in config:
            return -0.12
        value = _param(config[self.name], self.distribution)
        if isinstance(self.distribution, CategoricalDistribution):
            choices = self.distribution.choices
            return choices.index(value) / (len(choices) - 1) if len(choices) > 1 else 0.5
        d = cast(FloatDistribution, self.distribution)
        low, high, value = float(d.low), float(d.high), float(value)
        if self.log:
            low, high, value = math.log10(low), math.log10(high), math.log10(value)
        return (value - low) / (high - low) if high > low else 0.5


def ran_trials(search: FinishedSearch) -> list[TrialRecord]:
    """The trials with a score (finished or stopped early by the scheduler), best val SumR first."""
    return sorted((t for t in search.trials if trial_state(t) in (TrialState.COMPLETE, TrialState.PRUNED)),
                  key=lambda t: rank_key(t.score, t.trial_id))


def varied_settings(trials: list[TrialRecord]) -> list[Axis]:
    """The settings (not ``tag.`` keys) whose value, or presence, differs among ``trials``: the backbone
    first, then by name (a plugin's switch beside its settings)."""
    configs = [{k: v for k, v in t.config.items() if not str(k).startswith(TAG_PREFIX)} for t in trials]
    distributions = infer_distributions(configs)
    axes = []
    for key in sorted({k for c in configs for k in c}, key=lambda k: (k != "backbone", str(k))):
        missing = any(key not in c for c in configs)
        if key in distributions:
            axes.append(Axis(key, distributions[key], missing))
        elif missing:  # one value where present: it varies by presence (a plugin switched on or off)
            value = _plain(next(c[key] for c in configs if key in c))
            axes.append(Axis(key, CategoricalDistribution([value]), True))
    return axes


def abbreviate(names: list[str], width: int = LABEL_WIDTH) -> list[str]:
    """Axis labels of at most about ``width`` characters: a plugin prefix (``ral.``) kept, each word of
    the rest cut to 4 then 3 letters, then the end cut; duplicates get a number."""
    labels = []
    for name in names:
        prefix, _, rest = name.rpartition(".")
        prefix = prefix + "." if prefix else ""
        label = name
        for letters in (4, 3):
            if len(label) <= width:
                break
            label = prefix + "_".join(word[:letters] for word in rest.split("_"))
        if len(label) > width:
            label = label[:width - 1] + "~"
        labels.append(label)
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels[i] = f"{label}{labels[:i].count(label) + 1}"
    return labels


def _tick_text(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _axis_ticks(axis: Axis) -> list[tuple[float, str]]:
    """(position, text) of an axis's ticks: every category (at most 8 shown), or low/middle/high."""
    ticks: list[tuple[float, str]] = []
    d = axis.distribution
    if isinstance(d, CategoricalDistribution):
        choices = list(d.choices)
        step = max(1, math.ceil(len(choices) / 8))
        for i in range(0, len(choices), step):
            ticks.append((i / (len(choices) - 1) if len(choices) > 1 else 0.5, _tick_text(choices[i])))
    else:
        low, high = float(cast(FloatDistribution, d).low), float(cast(FloatDistribution, d).high)
        middle = math.sqrt(low * high) if axis.log else (low + high) / 2
        integer = isinstance(d, IntDistribution)
        for where, value in ((0.0, low), (0.5, middle), (1.0, high)):
            if integer and where == 0.5 and float(value) != int(value):
                continue
            ticks.append((where, str(int(value)) if integer else _tick_text(value)))
    if axis.missing:
        ticks.append((-0.12, MISSING))
    return ticks


def parallel_figure(trials: list[TrialRecord], axes: list[Axis], labels: list[str]) -> Figure | None:
    """Parallel coordinates of ``trials`` (best first) over ``axes`` (labelled ``labels``) and best val SumR:
    the :data:`HIGHLIGHT_TOP` best in colour (dashed: stopped early by the scheduler), the others grey;
    None for fewer than 2 trials or no axis."""
    if len(trials) < 2 or not axes:
        return None
    scores = [t.score for t in trials]
    low, high = min(scores), max(scores)
    columns = len(axes) + 1
    fig, ax = plt.subplots(figsize=(max(7.0, 0.85 * columns + 2.5), 5.5))
    xs = list(range(columns))

    def line(trial: TrialRecord) -> list[float]:
        score = (trial.score - low) / (high - low) if high > low else 0.5
        return [a.position(trial.config) for a in axes] + [score]

    top = trials[:HIGHLIGHT_TOP]
    for trial in reversed(trials[HIGHLIGHT_TOP:]):
        ax.plot(xs, line(trial), color="#b0b0b0", linewidth=0.8, alpha=0.6, zorder=1)
    colours = plt.get_cmap("viridis")([i / max(1, len(top) - 1) * 0.85 for i in range(len(top))])
    for rank, (trial, colour) in reversed(list(enumerate(zip(top, colours), 1))):
        ax.plot(xs, line(trial), color=colour, linewidth=2.0, zorder=3, linestyle="-" if trial.finished else "--",
                label=f"{rank}. {trial.trial_id} ({trial.score:.1f})" + ("" if trial.finished else ", stopped"))
    for x, axis in enumerate(axes):
        ax.axvline(x, color="#444", linewidth=0.8, zorder=2)
        for where, text in _axis_ticks(axis):
            ax.text(x + 0.04, where, text, fontsize=7, va="center", ha="left", color="#333", zorder=4,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})
    ax.axvline(columns - 1, color="#444", linewidth=0.8, zorder=2)
    for where, value in ((0.0, low), (1.0, high)):
        ax.text(columns - 1 + 0.04, where, f"{value:.1f}", fontsize=7, va="center", ha="left", zorder=4)
    ax.set_xticks(xs, [*labels, "best val SumR"], rotation=40, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.3, columns - 0.5)
    ax.set_ylim(-0.2, 1.08)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Parallel coordinates: {len(trials)} trials over the {len(axes)} settings that varied "
                 f"(the {len(top)} best in colour)", fontsize=10)
    handles, texts = ax.get_legend_handles_labels()  # drawn worst first (the best on top), listed best first
    ax.legend(handles[::-1], texts[::-1], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
              title="best val SumR", title_fontsize=7)
    fig.tight_layout()
    return fig


def slices_figure(trials: list[TrialRecord], axes: list[Axis]) -> Figure | None:
    """One small panel per setting of ``axes``, titled with its name: each trial's best val SumR against its
    value (finished filled, stopped early hollow); a categorical setting as a strip of jittered points per
    category (``n/a``: the trials without it). None without trials or axes."""
    if not trials or not axes:
        return None
    columns = min(4, len(axes))
    rows = math.ceil(len(axes) / columns)
    fig, grid = plt.subplots(rows, columns, figsize=(3.1 * columns, 2.5 * rows + 0.4), sharey=True, squeeze=False)
    jitter = random.Random(0)
    for panel, axis in zip(grid.flat, axes):
        categorical = isinstance(axis.distribution, CategoricalDistribution)
        have = [t for t in trials if categorical or axis.name in t.config]
        choices = list(cast(CategoricalDistribution, axis.distribution).choices) if categorical else []
        choices += [MISSING] if categorical and axis.missing else []
        for finished in (True, False):
            group = [t for t in have if t.finished == finished]
            if categorical:
                xs = [choices.index(_param(t.config[axis.name], axis.distribution) if axis.name in t.config
                                    else MISSING) + jitter.uniform(-0.15, 0.15) for t in group]
            else:
                xs = [float(_param(t.config[axis.name], axis.distribution)) for t in group]
            style = ({"color": "#1f77b4"} if finished else {"facecolors": "none", "edgecolors": "#7f7f7f"})
            panel.scatter(xs, [t.score for t in group], s=18, zorder=3, **style)
        if categorical:
            panel.set_xticks(range(len(choices)), [_tick_text(c) for c in choices], fontsize=7,
                             rotation=30 if len(choices) > 3 else 0)
            panel.set_xlim(-0.5, len(choices) - 0.5)
        else:
            panel.tick_params(axis="x", labelsize=7)
            if axis.log:
                panel.set_xscale("log")
        shown = axis.name if len(axis.name) <= 32 else axis.name[:31] + "~"
        panel.set_title(shown + (f" ({len(have)} of {len(trials)})" if len(have) < len(trials) else ""), fontsize=8)
        panel.tick_params(axis="y", labelsize=7)
        panel.grid(alpha=0.3)
    for panel in list(grid.flat)[len(axes):]:
        panel.set_visible(False)
    for row in grid:
        row[0].set_ylabel("best val SumR", fontsize=8)
    fig.suptitle("Slices: best val SumR against each setting that varied (hollow: stopped early by the "
                 "scheduler)", fontsize=9)
    fig.tight_layout()
    return fig


def _saved(fig: Figure | None, path: Path) -> Path | None:
    return None if fig is None else _save(fig, path)


def _curves_figure(top: list[TrialRecord], path: Path) -> Path:
    """Val SumR per epoch of ``top`` (dashed: stopped early by the scheduler, or still running)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for rank, trial in enumerate(top, 1):
        points = [(e["epoch"], e["val_sumr"]) for e in trial.epochs() if _finite(e.get("val_sumr"))]
        if points:
            ax.plot(*zip(*points), marker="o", linestyle="-" if trial.finished else "--",
                    label=f"{rank}. {trial.trial_id}" + ("" if trial.finished else " (running)" if trial.running
                                                         else " (stopped early)"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val SumR")
    ax.set_title(f"Learning curves of the {len(top)} best trials")
    cast(MaxNLocator, ax.xaxis.get_major_locator()).set_params(integer=True)  # a new Axes's AutoLocator
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


# ---------------------------------------------------------------- the page


def _cell(value: Any) -> str:
    return f"{value:.1f}" if _number(value) else "-"


def table_html(search: FinishedSearch, top: int = TABLE_TOP) -> str:
    """The best-trials table as an HTML ``<table>`` (id ``best-trials``)."""
    head = ["#", "trial", "epochs"] + [f"val {c}" for c in COLUMNS] + [f"test {c}" for c in COLUMNS] + ["config"]
    rows = []
    for rank, trial in enumerate(table_trials(search)[:top], 1):
        val, test = table_values(trial)
        cells = [str(rank), trial.trial_id, str(trial.last.get("epoch", 0))] + [_cell(v) for v in val + test]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + f'<td class="config">{html.escape(compact_config(trial.config))}</td></tr>')
    return ('<table id="best-trials">\n<thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>")


def confirmation_html(search: FinishedSearch) -> str:
    """The confirmation stage's table (id ``confirmation``): each confirmed config's seeds, val SumR mean
    +- sd and 95% interval, test SumR mean +- sd, champion first; then the single-run pick ("" without a
    confirmation stage)."""
    chosen = selection(search)
    if chosen is None:
        return ""
    head = ["#", "source trial", "seeds", "val SumR mean +- sd", "95% interval", "test SumR mean +- sd",
            "search run", "config"]
    rows = []
    for rank, config in enumerate(chosen.confirmed, 1):
        val, test = config.val, config.test
        cells = [str(rank), config.source.trial_id, ",".join(map(str, config.seeds)),
                 f"{val.mean:.1f} +- {val.std:.1f}",
                 interval_text(val), f"{test.mean:.1f} +- {test.std:.1f}", f"{config.source.score:.1f}"]
        row_class = ' class="champion"' if rank == 1 else ""
        rows.append(f"<tr{row_class}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + f'<td class="config">{html.escape(compact_config(config.source.config))}</td></tr>')
    pick = chosen.single_run_pick
    verdict = "the same config" if chosen.agrees else "a different config"
    lead = chosen.lead()
    lead_text = "" if lead is None else f" The champion's lead over #2: {lead.describe()}."
    return (f"<h2>Confirmation over training seeds</h2>\n<p>The champion: {html.escape(RULE)}: "
            f'<b id="champion">{html.escape(chosen.champion.source.trial_id)}</b> (exported: its run '
            f"{html.escape(chosen.champion.best_run.trial_id)}). The single-run ranking picks "
            f"{html.escape(pick.trial_id)} (best val SumR {pick.score:.1f}), {verdict}.{html.escape(lead_text)}</p>\n"
            '<table id="confirmation">\n<thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>")


def _figure_html(path: Path | None, caption: str, note: str | None = None) -> str:
    if path is None:
        return f'<p class="note">{html.escape(note or caption)}</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption, quote=True)}" '
            f'data-file="{html.escape(path.name, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:14px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}td.config,td.param{text-align:left}
td.config{font-family:monospace;font-size:12px}th{background:#f0f0f0}tr.champion
td{font-weight:bold}figure{margin:1.5em 0}
img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:14px}.note{color:#8a5a00}"""


def axes_html(axes: list[Axis], labels: list[str]) -> str:
    """The table of the parallel coordinates' axes (id ``parallel-axes``): each label and its setting
    ("" when no label is abbreviated)."""
    if all(label == axis.name for axis, label in zip(axes, labels)):
        return ""
    rows = "".join(f'<tr><td class="param">{html.escape(label)}</td>'
                   f'<td class="param">{html.escape(axis.name)}</td></tr>' for axis, label in zip(axes, labels))
    return (f'<table id="parallel-axes"><thead><tr><th>axis</th><th>setting</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def page_html(search: FinishedSearch, importances: Importances, figures: dict[str, Path | None],
              notes: dict[str, str], axes_table: str = "") -> str:
    """The report page: everything inline (styles, PNGs as data URIs), nothing fetched."""
    name = html.escape(search.name)
    best = search.best()
    if importances.values:
        rows = "".join(f'<tr><td class="param">{html.escape(k)}</td><td>{v:.3f}</td></tr>'
                       for k, v in importances.values.items())
        importance_table = (f'<table id="importances"><thead><tr><th>setting</th><th>importance</th></tr></thead>'
                            f"<tbody>{rows}</tbody></table>")
    else:
        importance_table = ""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Search {name}</title><style>{STYLE}</style></head><body>",
        f'<h1>Search <span id="search-name">{name}</span></h1>',
        f'<p><span id="summary">{html.escape(summary_text(search))}</span>; best trial '
        f"<b>{html.escape(best.trial_id)}</b> "
        f"(best val SumR {best.score:.1f}). Storage: <code>{html.escape(search.storage.uri)}</code></p>",
        "<h2>Best trials</h2>",
        "<p>By best val SumR of the fused score; val and test R@1/5/10/100/SumR of each trial's best epoch "
        "('-' = stopped early by the scheduler, so no test metrics).</p>",
        table_html(search),
        confirmation_html(search),
        "<h2>Parameter importances</h2>",
        importance_table,
        _figure_html(figures.get(IMPORTANCES), "fANOVA importance (Optuna, seed 0) of each setting for the "
                     "best val SumR, over the finished trials", importances.note).replace(
                         '<p class="note">', '<p class="note" id="importances-note">', 1),
        "<h2>Optimisation history</h2>",
        _figure_html(figures.get(HISTORY), "Best val SumR of each trial in the order the trials started; "
                     "hollow: stopped early by the scheduler; line: best finished trial so far"),
        "<h2>Parallel coordinates</h2>",
        _figure_html(figures.get(PARALLEL), "Every trial that ran (stopped ones at their score when stopped) "
                     "over the settings that varied among them, one axis each (n/a: the trial has no such "
                     f"setting, e.g. its plugin is off); the {HIGHLIGHT_TOP} best by best val SumR in colour",
                     notes.get(PARALLEL)),
        axes_table,
        "<h2>Slices</h2>",
        _figure_html(figures.get(SLICES), "Best val SumR of each trial against the value of each setting that "
                     "varied (filled: finished; hollow: stopped early by the scheduler)", notes.get(SLICES)),
        "<h2>Learning curves</h2>",
        _figure_html(figures.get(CURVES), f"Val SumR per epoch of the {CURVES_TOP} best trials (dashed: "
                     "stopped early by the scheduler, or still running)"),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(search: FinishedSearch, out_dir: Path, importance_min: int = MIN_IMPORTANCE_TRIALS) -> list[Path]:
    """Write the figures and ``report.html`` of ``search`` into ``out_dir`` (created; files of an earlier
    report there are replaced); returns the files written, the page last. A search without any finished
    trial has nothing to report: InputError. ``importance_min``: finished trials the importances need."""
    search.best()  # InputError: no finished trial
    with _DRAWING:
        return _write_report(search, Path(out_dir), importance_min)


def _write_report(search: FinishedSearch, out_dir: Path, importance_min: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    importances = param_importances(rebuild_study(search), importance_min)
    ranked = table_trials(search)
    ran = ran_trials(search)
    axes = varied_settings(ran)
    labels = abbreviate([a.name for a in axes])
    figures: dict[str, Path | None] = {
        IMPORTANCES: _importances_figure(importances, out_dir / IMPORTANCES) if importances.values else None,
        HISTORY: _history_figure(search, out_dir / HISTORY),
        PARALLEL: _saved(parallel_figure(ran, axes, labels), out_dir / PARALLEL),
        SLICES: _saved(slices_figure(ran, axes), out_dir / SLICES),
        CURVES: _curves_figure(ranked[:CURVES_TOP], out_dir / CURVES),
    }
    notes = {PARALLEL: "no parallel coordinates: they need at least 2 trials that ran and a setting that "
                       "varies among them",
             SLICES: "no slice plots: they need a setting that varies among the trials that ran"}
    page = out_dir / HTML
    page.write_text(page_html(search, importances, figures, notes,
                              axes_html(axes, labels) if figures[PARALLEL] else ""), encoding="utf-8")
    return [p for p in figures.values() if p is not None] + [page]


def log_report(tracking_uri: str, parent_run_id: str, paths: list[Path]) -> None:
    """Log ``paths`` as artifacts ``report/<file>`` of the run ``parent_run_id``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for path in paths:
        client.log_artifact(parent_run_id, str(path), ARTIFACT_PATH)


def report_to_run(search: FinishedSearch, tracking_uri: str, parent_run_id: str) -> list[str]:
    """Write the report in a temporary folder and log it to the parent run; returns the artifact paths."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prvr-report-") as folder:
        paths = write_report(search, Path(folder))
        log_report(tracking_uri, parent_run_id, paths)
    return [f"{ARTIFACT_PATH}/{p.name}" for p in paths]


def report_location(tracking_uri: str, parent_run_id: str) -> str:
    """Where to open the logged ``report/report.html``: its local path when the run's artifacts are on this
    machine's disk (a ``file:`` artifact URI, as with the default SQLite store), else the MLflow UI's page of
    the artifact (an http(s) tracking server), else the artifact's URI (e.g. ``s3://...``)."""
    from urllib.parse import urlsplit

    from mlflow.tracking import MlflowClient
    from mlflow.utils.file_utils import local_file_uri_to_path

    from tracking.redact import redact_uri

    run = MlflowClient(tracking_uri=tracking_uri).get_run(parent_run_id)
    root = run.info.artifact_uri.rstrip("/")
    scheme = urlsplit(root).scheme
    if scheme in ("", "file"):
        return str(Path(local_file_uri_to_path(root)) / ARTIFACT_PATH / HTML)
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        return redact_uri(f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/"
                          f"{parent_run_id}/artifacts/{ARTIFACT_PATH}/{HTML}")
    return redact_uri(f"{root}/{ARTIFACT_PATH}/{HTML}")


__all__ = ["ARTIFACT_PATH", "HTML", "MIN_IMPORTANCE_TRIALS", "Axis", "Counts", "Importances", "REPORT_FILES",
           "abbreviate", "confirmation_html", "infer_distributions", "log_report", "parallel_figure",
           "param_importances", "ran_trials", "rebuild_study", "report_location", "report_to_run", "slices_figure",
           "summary_text", "table_html", "trial_counts", "varied_settings", "write_report"]
