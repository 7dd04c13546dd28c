"""The report of a search: figures (PNG) and one self-contained HTML page, logged to the parent run.

Made at the end of ``search/run.py`` and on demand by ``search/report.py`` from what the search left in
its storage (:func:`tracking.search_results.load_search`), so it needs neither Ray nor torch:

- parameter importances: Optuna's fANOVA evaluator on an in-memory Optuna study rebuilt from the trials
  (finished trials COMPLETE, trials the scheduler stopped PRUNED, failed ones FAIL);
- the optimisation history: every trial's best val SumR in the order the trials started, and the best
  so far over the finished trials;
- parallel coordinates of the top trials (Optuna's plot);
- learning curves (val SumR per epoch) of the best trials;
- ``report.html``: the search name, the best-trials table (the content of
  ``search.results.best_trials_table``), the confirmation stage's configs over training seeds and the
  champion (``tracking/champion.py``), the importances and the figures, PNGs embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
import json
import math
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
from trainables.trial_report import COLUMNS, metric_key  # noqa: E402  (standard library only)

TABLE_TOP = 5  # rows of the best-trials table (as search.results.best_trials_table)
CURVES_TOP = 5  # learning curves drawn
PARALLEL_TOP = 10  # trials in the parallel-coordinates plot
LOG_DECADES = 2.0  # a positive numeric setting whose values span this many decades gets a log axis
IMPORTANCES, HISTORY, PARALLEL, CURVES = "importances.png", "history.png", "parallel.png", "curves.png"
HTML = "report.html"
#: every file the report can write (a re-written report replaces exactly these)
REPORT_FILES = (IMPORTANCES, HISTORY, PARALLEL, CURVES, HTML)
ARTIFACT_PATH = "report"


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
    None for a trial without any epoch (still waiting or interrupted before its first report)."""
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


def rebuild_study(search: FinishedSearch, trials: list[TrialRecord] | None = None,
                  all_complete: bool = False) -> optuna.Study:
    """An in-memory Optuna study (maximize best val SumR) of ``trials`` (default: every trial, in the order
    they started), params over the distributions inferred from all of the search's configs, val SumR per
    epoch as intermediate values, the Ray trial id as user attribute ``trial_id``. With ``all_complete``
    a stopped trial counts as COMPLETE at its score (for plots of the top trials, stopped ones included)."""
    distributions = infer_distributions([t.config for t in search.trials])
    with _quiet_optuna():
        study = optuna.create_study(direction="maximize", study_name=search.name)
        for trial in chronological(search) if trials is None else trials:
            state = trial_state(trial)
            if state is None:
                continue
            if all_complete and state == TrialState.PRUNED:
                state = TrialState.COMPLETE
            study.add_trial(create_trial(
                state=state, value=trial.score if state != TrialState.FAIL else None,
                params={k: _param(trial.config[k], d) for k, d in distributions.items() if k in trial.config},
                distributions={k: d for k, d in distributions.items() if k in trial.config},
                intermediate_values={int(e["epoch"]): float(e["val_sumr"]) for e in trial.epochs()
                                     if _finite(e.get("val_sumr")) and _number(e.get("epoch"))},
                user_attrs={"trial_id": trial.trial_id}))
    return study


@dataclass
class Importances:
    """fANOVA importances of the params (largest first), or why there are none."""

    values: dict[str, float]
    note: str | None
    complete: int


def param_importances(study: optuna.Study) -> Importances:
    """``optuna.importance.get_param_importances`` with fANOVA (seed 0) over the COMPLETE trials."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return Importances({}, f"parameter importances need at least 2 finished trials; this search has "
                               f"{len(complete)}", len(complete))
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


def summary_text(search: FinishedSearch) -> str:
    """``4 trials: 4 ran, 0 failed`` (and how many have no finished epoch), as the text table ends."""
    failed = [t for t in search.trials if t.failed]
    waiting = [t for t in search.trials if not t.failed and not t.last.get("epoch")]
    ran = len(search.trials) - len(failed) - len(waiting)
    return (f"{len(search.trials)} trials: {ran} ran, {len(failed)} failed"
            + (f", {len(waiting)} without a finished epoch" if waiting else ""))


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


def _parallel_figure(search: FinishedSearch, top: list[TrialRecord], path: Path) -> Path | None:
    """Optuna's parallel coordinates of ``top`` over the settings all of them have and that vary among them."""
    study = rebuild_study(search, top, all_complete=True)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    shared = set.intersection(*(set(t.params) for t in trials)) if trials else set()
    params = sorted(k for k in shared if len({repr(t.params[k]) for t in trials}) > 1)
    if len(trials) < 2 or not params:
        return None
    with _quiet_optuna():
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study, params=params,
                                                                      target_name="best val SumR")
    fig = cast(Figure, ax.figure)  # the new figure optuna drew on (not a SubFigure)
    fig.set_size_inches(max(7.0, 1.1 * len(params) + 3), 5)
    return _save(fig, path)


def _curves_figure(top: list[TrialRecord], path: Path) -> Path:
    """Val SumR per epoch of ``top`` (dashed: stopped early by the scheduler)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for rank, trial in enumerate(top, 1):
        points = [(e["epoch"], e["val_sumr"]) for e in trial.epochs() if _finite(e.get("val_sumr"))]
        if points:
            ax.plot(*zip(*points), marker="o", linestyle="-" if trial.finished else "--",
                    label=f"{rank}. {trial.trial_id}" + ("" if trial.finished else " (stopped early)"))
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


def page_html(search: FinishedSearch, importances: Importances, figures: dict[str, Path | None],
              notes: dict[str, str]) -> str:
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
        f"<p>{html.escape(summary_text(search))}; best trial <b>{html.escape(best.trial_id)}</b> "
        f"(best val SumR {best.score:.1f}). Storage: <code>{html.escape(search.storage.uri)}</code></p>",
        "<h2>Best trials</h2>",
        "<p>By best val SumR of the fused score; val and test R@1/5/10/100/SumR of each trial's best epoch "
        "('-' = stopped early by the scheduler, so no test metrics).</p>",
        table_html(search),
        confirmation_html(search),
        "<h2>Parameter importances</h2>",
        importance_table,
        _figure_html(figures.get(IMPORTANCES), "fANOVA importance (Optuna, seed 0) of each setting for the "
                     "best val SumR, over the finished trials", importances.note),
        "<h2>Optimisation history</h2>",
        _figure_html(figures.get(HISTORY), "Best val SumR of each trial in the order the trials started; "
                     "hollow: stopped early by the scheduler; line: best finished trial so far"),
        "<h2>Parallel coordinates</h2>",
        _figure_html(figures.get(PARALLEL), f"The {PARALLEL_TOP} best trials by best val SumR (trials stopped "
                     "early at their score when stopped) over the settings that vary among them",
                     notes.get(PARALLEL)),
        "<h2>Learning curves</h2>",
        _figure_html(figures.get(CURVES), f"Val SumR per epoch of the {CURVES_TOP} best trials (dashed: "
                     "stopped early by the scheduler)"),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(search: FinishedSearch, out_dir: Path) -> list[Path]:
    """Write the figures and ``report.html`` of ``search`` into ``out_dir`` (created; files of an earlier
    report there are replaced); returns the files written, the page last. A search without any finished
    trial has nothing to report: InputError."""
    search.best()  # InputError: no finished trial
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    importances = param_importances(rebuild_study(search))
    ranked = table_trials(search)
    figures: dict[str, Path | None] = {
        IMPORTANCES: _importances_figure(importances, out_dir / IMPORTANCES) if importances.values else None,
        HISTORY: _history_figure(search, out_dir / HISTORY),
        PARALLEL: _parallel_figure(search, ranked[:PARALLEL_TOP], out_dir / PARALLEL),
        CURVES: _curves_figure(ranked[:CURVES_TOP], out_dir / CURVES),
    }
    notes = {PARALLEL: "no parallel coordinates: they need at least 2 trials that ran and a setting that "
                       "varies among the best of them"}
    page = out_dir / HTML
    page.write_text(page_html(search, importances, figures, notes), encoding="utf-8")
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


__all__ = ["ARTIFACT_PATH", "HTML", "Importances", "REPORT_FILES", "confirmation_html", "infer_distributions",
           "log_report",
           "param_importances", "rebuild_study", "report_to_run", "table_html", "write_report"]
