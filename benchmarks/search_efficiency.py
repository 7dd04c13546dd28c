"""Search efficiency: anytime quality of what each search would return, against the epochs it spent.

    python benchmarks/search_efficiency.py                 # default: 10 repetitions x 5 strategies on ci (hours)
    python benchmarks/search_efficiency.py --quick --out /tmp/se/q.json   # smoke run (about 1.5 minutes)
    python benchmarks/search_efficiency.py --seeds 0 1 2 3 4 --out /tmp/efficiency.json --plot /tmp/efficiency.png
    python benchmarks/search_efficiency.py --strategies random asha-tpe-pruned --trials 24 --max-epochs 8
    python benchmarks/search_efficiency.py --data small --strategies random asha-tpe-pruned hyperband-tpe

Why: the project's search is ASHA early stopping with an Optuna sampler, trials ASHA stops told to Optuna as
PRUNED (``search.searcher.PruneAwareOptunaSearch``); its default sampler (random, formerly TPE) is the one
this benchmark measured best (docs/benchmarks.md: search efficiency). This measures what each pairing buys,
the way HPO benchmarks do: by the *quality of the config a search would return* after each amount of compute,
where quality is a config's mean over training seeds the search never saw. (The previous protocol's target,
random search's single best training run, was often a lucky training seed: ``benchmarks/seed_noise.py``.)

Protocol, per repetition r (``--seeds``; searcher seed r = every search trial's training seed r, as
``search/run.py --seed`` does) and per strategy, the same number of trials (``--trials``) and concurrency each:

* the search runs through the project's search path: ``search/run.py``'s space, searcher, scheduler,
  ``ConcurrencyLimiter`` and the ``search.tuning`` trainable (checkpoints, MLflow child runs), on one private
  local Ray (127.0.0.1) shared by all searches, Ray actors reused between trials (``--new-actor-per-trial``
  for run.py's one actor per trial). The Tuner is built here (as ``search.tuning.fit`` builds it) because
  ``search/run.py`` has no option for ``stopped_as``; one extra Tune callback records, in the order the driver
  received them, every trial's epoch reports and how each trial ended. Results are read back from the
  search's storage (``tracking.search_results.load_search``) and checked against that record;
* the *incumbent* after each trial that finished is the search's best trial so far by its own single-run
  best val SumR (``best_val_sumr``; ties by trial id, as every ranking of the project), among the trials that
  ran to their own end (``finished`` in their final report). A trial the scheduler stopped never becomes the
  incumbent: a search can only return a config it trained fully;
* an incumbent's *quality* is its config's mean best val SumR over ``--quality-seeds`` S >= 3 training seeds
  that no search uses (1000, 2000, 3000, ...; the repetition seeds must differ from them), each trained to
  ``--max-epochs`` with no early stopping (patience = max epochs), with the search trial's own fixed settings:
  exactly the trial with another seed. Each distinct config (key: the config without its seed, JSON with sorted
  keys) is trained once per benchmark run and cached across strategies and repetitions (random search's
  configs that TPE's startup trials repeat are trained once). These runs are outside Tune, in a
  ``ProcessPoolExecutor`` of ``--workers`` processes with one torch thread each (``benchmarks/seed_noise.py``'s
  ``_load`` and ``_train``), after each repetition's searches (the JSON at ``--out`` is rewritten after each
  repetition, so an interrupted run keeps the repetitions it finished);
* the *anytime curve* of a search: x = cumulative epochs (epoch reports of all trials in the order the driver
  received them; a trial's final report is not an epoch), y = the quality of the incumbent after each trial
  that finished: a step function, undefined before the first finished trial. The count is the compute spent:
  a Tune function trial waits at each report until the driver lets it go on, so a stopped trial never starts
  an epoch it then loses.

Strategies (``--strategies``; ``random`` is the baseline and must be among them):

* ``random``: Optuna's RandomSampler, no early stopping (FIFO: every trial runs ``--max-epochs``);
* ``tpe``: Optuna's TPE, no early stopping;
* ``asha-random``: ASHA + RandomSampler (random search's very configs, in its order: what early stopping alone buys);
* ``asha-tpe-pruned``: ASHA + TPE, stopped trials told as PRUNED (the project's default until this benchmark chose
``asha-random``);
* ``hyperband-tpe``: Optuna's ``HyperbandPruner`` + TPE (``search/schedulers.py``'s ``hyperband``: the pruner is
  the searcher's study's pruner, asked on every epoch report, never at a trial's last epoch; min resource
  ``--grace-epochs``, max resource ``--max-epochs``, integer reduction factor ``--reduction-factor``; with the
  defaults 2 brackets: rungs at epochs 2 and 8, or at 8 only), stopped trials told as PRUNED;
* ``asha-tpe-complete`` (not in the default list): ASHA + TPE, stopped trials told as COMPLETE with their early
  score (Ray's ``OptunaSearch`` behaviour).

ASHA (``search/schedulers.py``'s ``LastEpochASHA``) runs on ``epoch`` with grace ``--grace-epochs`` and
reduction factor ``--reduction-factor`` and never stops a trial at its last epoch.

Why Optuna's Hyperband and not Ray's BOHB pair (``HyperBandForBOHB`` + ``TuneBOHB``): tried on Ray 2.60 with
hpbandster 0.7.4 and ConfigSpace 1.2.2 installed in a private folder (not a project dependency) and the
``base`` space written as a ConfigSpace, 8 trials of <= 4 epochs on ``tiny``. As they are, the run dies at the
first trial: ConfigSpace returns categorical integers as numpy scalars, the project's config refuses them
(the trial reports ``trial_error``: "batch_size must be a number, got np.int64(64)"), and HyperBandForBOHB
reads ``epoch`` from that report and fails the whole Tune run (``KeyError: 'epoch'`` in
``hyperband.py``'s ``_get_result_time``, raised as ``TuneError``). With the numpy scalars converted and
reports without ``epoch`` passed over it ran (pausing and resuming trials from their checkpoints), but
HyperBand stops a trial when it reaches ``max_t``, before its final report, so no trial of the 8 finished and a
search would never have an incumbent; making it work needs a last-epoch guard in Ray's synchronous bracket
logic, a ConfigSpace copy of the project's spaces and a package the project does not install.

Definitions of the figures, per repetition and strategy:

* *final quality*: the quality of the search's last incumbent (what the search returns);
* *target*: random search's final quality (same repetition); *epochs to target*: the first x of the
  strategy's anytime curve where y >= target ("not reached" if none); random reaches its own target by
  definition (its curve need not rise monotonically: a better single run can be a worse config);
* *speed-up* = random's epochs to target / the strategy's; "not reached" counts as speed-up 0 (conservative);
* *champion disagreement*: the search's final incumbent (best single run) does not have the highest quality
  among all the incumbents the search had: the single-run ranking and the seed-mean ranking disagree.

Summary per strategy over repetitions: median speed-up, median and interquartile range (25th-75th
percentile, linear interpolation) of final quality, the disagreement rate. Target: ASHA + TPE
(``asha-tpe-pruned``) median speed-up >= 3 AND its median final quality >= random's median final quality
(PASS/FAIL). Best by the measurements: the highest median speed-up among the strategies whose median final
quality is no worse than random's (random itself is 1x; ties: higher median quality). A strategy with a
repetition that has no incumbent at all (no trial finished) counts as worse than random. The plot (``--plot``,
a PNG; default next to the JSON): per strategy the median anytime curve over repetitions with its
interquartile band, the curves read as step functions on every epoch count; a repetition without an
incumbent yet at x does not count at x, and a search that ended keeps its final incumbent.

Defaults, sized for ``--data ci`` (MS-SL, hidden 32): repetitions 0-9 (5 decide PASS/FAIL by chance), 48 trials
of <= 16 epochs, concurrency 2, grace 2 epochs and reduction factor 4 (ASHA rungs at epochs 2 and 8; epoch 16 is
the last, never a rung), 3 quality seeds. Why these: the speed-up is capped by max epochs / the epochs an early
stopper spends on an average trial (~4 at 16 epochs, grace 2, factor 4: a ~4x cap; at 8 epochs, factor 2 about
2.5, a ~3.2x cap); TPE's first 10 trials (``n_startup_trials``) are RandomSampler's first 10 configs for the
same seed, so those are shared and the comparison is paired, and 48 trials let TPE's own choices count;
a config's val SumR after one epoch says little on ``ci``, so grace 2; ``ci`` keeps learning past 8 epochs.
``--quick`` (tiny data, 1 repetition, 4 trials x 2 epochs, grace 1, factor 2, hidden 16) keeps S >= 3: its
quality runs are a few seconds each, so fewer seeds would save little, and S >= 3 holds for every run.

Measured: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainables.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/search_efficiency.py``
    sys.path.insert(0, str(ROOT))

from benchmarks.runs import parse_args, write_json  # noqa: E402
from search.cli import run_main  # noqa: E402
from search.confirmation import setting_key  # noqa: E402
from search.ray_session import LOCAL_RAY_ENV  # noqa: E402
from tracking.search_results import rank_key  # noqa: E402

TARGET_SPEEDUP = 3.0
TARGET_STRATEGY = "asha-tpe-pruned"
EXPERIMENT = "search-efficiency"
QUALITY_SEED_STRIDE = 1000  # quality seed k (1-based) is 1000 k
MIN_QUALITY_SEEDS = 3
TOLERANCE = 1e-9  # y >= target - TOLERANCE counts as reaching it (float sums of the same runs)

#: how a trial ended, in the record of a search (``["end", trial_id, status, best_val_sumr]``)
FINISHED, STOPPED, FAILED = "finished", "stopped", "failed"
EPOCH, END = "epoch", "end"


@dataclass(frozen=True)
class Strategy:
    name: str
    sampler: str
    scheduler: str
    stopped_as: str
    label: str


STRATEGIES = (
    Strategy("random", "random", "none", "pruned", "random search, no early stopping"),
    Strategy("tpe", "tpe", "none", "pruned", "TPE, no early stopping"),
    Strategy("asha-random", "random", "asha", "pruned", "ASHA + random search (default)"),
    Strategy("asha-tpe-pruned", "tpe", "asha", "pruned", "ASHA + TPE, stopped trials told as PRUNED"),
    Strategy("hyperband-tpe", "tpe", "hyperband", "pruned", "Optuna's Hyperband pruner + TPE"),
    Strategy("asha-tpe-complete", "tpe", "asha", "complete", "ASHA + TPE, stopped trials told as COMPLETE"),
)
BASELINE = STRATEGIES[0].name
STRATEGY_NAMES = tuple(strategy.name for strategy in STRATEGIES)
DEFAULT_STRATEGIES = STRATEGY_NAMES[:5]
LABELS = {strategy.name: strategy.label for strategy in STRATEGIES}

QUICK = {"data": "tiny", "seeds": [0], "trials": 4, "max_epochs": 2, "grace_epochs": 1, "reduction_factor": 2.0,
         "set": ["hidden_size=16", "n_heads=2"]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/search_efficiency.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny data, 1 repetition, 4 trials of <= 2 epochs, grace 1 and factor 2, "
                        "hidden_size=16 (still >= 3 quality seeds); options given explicitly still apply")
    p.add_argument("--data", default="ci", help="synthetic preset or dataset folder (default: ci)")
    p.add_argument("--space", default="base", help="search space (default: base)")
    p.add_argument("--backbones", nargs="+", default=["mssl"], help="backbones searched over (default: mssl)")
    p.add_argument("--set", nargs="+", default=["hidden_size=32", "n_heads=2"], metavar="KEY=VALUE",
                   help="settings fixed in every trial (default: hidden_size=32 n_heads=2)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)),
                   help="the repetitions: searcher (and search training) seeds (default: 0-9)")
    p.add_argument("--trials", type=int, default=48, help="trials per search (default: 48)")
    p.add_argument("--max-epochs", type=int, default=16,
                   help="epochs of a trial that is never stopped early, and of every quality run (default: 16)")
    p.add_argument("--concurrency", type=int, default=2, help="trials running at once (default: 2)")
    p.add_argument("--grace-epochs", type=int, default=2,
                   help="ASHA grace / Hyperband min resource: epochs before a trial can be stopped (default: 2)")
    p.add_argument("--reduction-factor", type=float, default=4.0,
                   help="ASHA and Hyperband reduction factor (Hyperband: an integer; default: 4)")
    p.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES), metavar="NAME",
                   help=f"strategies run in every repetition, {BASELINE} (the baseline) among them; available: "
                        f"{' '.join(STRATEGY_NAMES)} (default: {' '.join(DEFAULT_STRATEGIES)})")
    p.add_argument("--quality-seeds", type=int, default=MIN_QUALITY_SEEDS,
                   help=f"training seeds of each incumbent's quality runs, {QUALITY_SEED_STRIDE} k for k = 1..S "
                        f"(default and minimum: {MIN_QUALITY_SEEDS})")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="quality runs trained side by side, one torch thread each (default: the CPU count)")
    p.add_argument("--new-actor-per-trial", action="store_true",
                   help="start a new Ray actor for every trial, as search/run.py does (slower: each imports torch); "
                        "by default actors are reused, which changes no sampled config and no counted epoch")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/search_efficiency.json"), help="JSON results")
    p.add_argument("--plot", default=None, help="PNG of the anytime curves (default: --out with .png)")
    return p


def quality_seeds(count: int) -> list[int]:
    """The training seeds of the quality runs: 1000, 2000, ... (no search uses them)."""
    return [QUALITY_SEED_STRIDE * k for k in range(1, count + 1)]


def _check_args(args: argparse.Namespace) -> None:
    """One-line ValueError naming the option and its bound."""
    seeds_ok = len(set(args.seeds)) == len(args.seeds) and min(args.seeds) >= 0
    for flag, ok, bound in [
            ("--trials", args.trials >= 1, ">= 1"), ("--max-epochs", args.max_epochs >= 1, ">= 1"),
            ("--concurrency", args.concurrency >= 1, ">= 1"), ("--grace-epochs", args.grace_epochs >= 1, ">= 1"),
            ("--reduction-factor", args.reduction_factor > 1, "> 1"),
            ("--quality-seeds", args.quality_seeds >= MIN_QUALITY_SEEDS, f">= {MIN_QUALITY_SEEDS}"),
            ("--workers", args.workers >= 1, ">= 1"), ("--seeds", seeds_ok, "distinct and >= 0")]:
        if not ok:
            raise InputError(f"{flag} must be {bound}, got {getattr(args, flag[2:].replace('-', '_'))}")
    clash = sorted(set(args.seeds) & set(quality_seeds(args.quality_seeds)))
    if clash:
        raise InputError(f"--seeds must not be a quality seed ({QUALITY_SEED_STRIDE} k), got {clash[0]}")
    unknown = sorted(set(args.strategies) - set(STRATEGY_NAMES))
    if unknown:
        raise InputError(f"--strategies: unknown {', '.join(unknown)} (available: {', '.join(STRATEGY_NAMES)})")
    if BASELINE not in args.strategies or len(set(args.strategies)) < 2:
        raise InputError(f"--strategies must name {BASELINE} (the baseline) and at least one other, "
                         f"got {' '.join(args.strategies)}")
    hyperband = any(s.scheduler == "hyperband" for s in STRATEGIES if s.name in args.strategies)
    if hyperband and args.reduction_factor != int(args.reduction_factor):
        raise InputError(f"--reduction-factor must be an integer for hyperband-tpe, got {args.reduction_factor:g}")


# --- analysis (pure: no Ray, no training) ------------------------------------------------------------------
# A search's record (``stream``) lists, in the order the driver received them, its trials' epoch reports
# ``["epoch", trial_id, epoch, best_val_sumr]`` and their ends ``["end", trial_id, status, best_val_sumr]``
# (status finished / stopped / failed; best_val_sumr of a finished trial is its final report's).

def config_key(config: dict[str, Any]) -> str:
    """The quality cache's key: the config without its training seed, JSON with sorted keys (what the
    confirmation stage counts as the same config)."""
    return setting_key(config)


def total_epochs(stream: Iterable[Sequence[Any]]) -> int:
    return sum(event[0] == EPOCH for event in stream)


def incumbents(stream: Iterable[Sequence[Any]]) -> list[tuple[int, str, float]]:
    """After each trial that finished: (epochs counted so far, the incumbent's trial id, its single-run best val
    SumR). The incumbent is the best finished trial so far (``rank_key``: score, ties by trial id); a stopped or
    failed trial never is one."""
    epochs, best, out = 0, None, []
    for event in stream:
        if event[0] == EPOCH:
            epochs += 1
        elif event[0] == END and event[2] == FINISHED:
            candidate = (float(event[3]), str(event[1]))
            if best is None or rank_key(*candidate) < rank_key(*best):
                best = candidate
            out.append((epochs, best[1], best[0]))
    return out


def anytime_curve(stream: Sequence[Sequence[Any]], config_keys: dict[str, str],
                  quality: dict[str, float]) -> list[list[Any]]:
    """``[[epochs, quality of the incumbent, incumbent id], ...]`` after each finished trial (a step function)."""
    return [[epochs, quality[config_keys[trial_id]], trial_id] for epochs, trial_id, _ in incumbents(stream)]


def value_at(curve: Sequence[Sequence[Any]], epochs: float) -> float | None:
    """The curve's y at ``epochs`` (the last point at or before it); None before its first point."""
    value = None
    for x, y, *_ in curve:
        if x > epochs:
            break
        value = y
    return value


def epochs_to_quality(curve: Sequence[Sequence[Any]], target: float) -> int | None:
    """The first x where the curve's y >= ``target``; None if it never is."""
    for x, y, *_ in curve:
        if y >= target - TOLERANCE:
            return int(x)
    return None


def speedup(baseline: int | None, strategy: int | None) -> float:
    """epochs(baseline) / epochs(strategy); 0 when the strategy never reached the target."""
    if baseline is None:
        raise ValueError("the baseline did not reach its own target")
    return 0.0 if strategy is None else baseline / strategy


def champion_disagrees(curve: Sequence[Sequence[Any]]) -> bool | None:
    """Whether the final incumbent's quality is below the best quality of any incumbent the search had (the
    best single run is not the best seed mean among them); None without an incumbent."""
    if not curve:
        return None
    return curve[-1][1] < max(y for _, y, *_ in curve) - TOLERANCE


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), linear interpolation between order statistics."""
    q25, median, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(median), float(q75)


def analyse_repetition(searches: dict[str, dict[str, Any]], quality: dict[str, float]) -> dict[str, Any]:
    """Per strategy of one repetition: final quality, epochs to random's final quality, speed-up, the anytime
    curve (``searches``: ``{strategy: {"stream": [...], "config_keys": {trial_id: key}}}``; ``quality``:
    ``{key: seed-mean best val SumR}``, for every incumbent's key at least)."""
    curves = {name: anytime_curve(s["stream"], s["config_keys"], quality) for name, s in searches.items()}
    if not curves[BASELINE]:
        raise ValueError(f"{BASELINE} search has no finished trial: no target")
    target = curves[BASELINE][-1][1]
    base_at = epochs_to_quality(curves[BASELINE], target)
    rows = {}
    for name, search in searches.items():
        curve, at = curves[name], epochs_to_quality(curves[name], target)
        final = curve[-1] if curve else None
        history = incumbents(search["stream"])
        rows[name] = {
            "epochs": total_epochs(search["stream"]),
            "finished": sum(e[0] == END and e[2] == FINISHED for e in search["stream"]),
            "incumbents": len({point[2] for point in curve}),
            "final_incumbent": final[2] if final else None,
            "final_single_run": history[-1][2] if history else None,
            "final_quality": final[1] if final else None,
            "epochs_to_target": at, "reached": at is not None, "speedup": speedup(base_at, at),
            "champion_disagrees": champion_disagrees(curve), "curve": curve}
    return {"target": target, "strategies": rows}


def summarise(per_rep: dict[Any, dict[str, Any]], strategies: Sequence[str]) -> dict[str, Any]:
    """Per strategy over repetitions: median speed-up, median and IQR of final quality, disagreement rate; the
    target's PASS/FAIL and the best strategy by the measurements."""
    out: dict[str, Any] = {}
    for name in strategies:
        rows = [rep["strategies"][name] for rep in per_rep.values()]
        finals = [r["final_quality"] for r in rows if r["final_quality"] is not None]
        flags = [r["champion_disagrees"] for r in rows if r["champion_disagrees"] is not None]
        q25, median, q75 = quartiles(finals) if finals else (None, None, None)
        out[name] = {"repetitions": len(rows), "median_speedup": statistics.median(r["speedup"] for r in rows),
                     "reached": sum(r["reached"] for r in rows), "without_incumbent": len(rows) - len(finals),
                     "median_final_quality": median, "final_quality_q25": q25, "final_quality_q75": q75,
                     "final_quality_iqr": None if q25 is None else q75 - q25,
                     "median_epochs": statistics.median(r["epochs"] for r in rows),
                     "disagreements": sum(flags), "disagreement_rate": sum(flags) / len(flags) if flags else None}
    return {"strategies": out, "target": target_check(out), "best": best_strategy(out, strategies)}


def _no_worse_than_random(row: dict[str, Any], random: dict[str, Any]) -> bool:
    return (row["without_incumbent"] == 0 and row["median_final_quality"] is not None
            and row["median_final_quality"] >= random["median_final_quality"] - TOLERANCE)


def target_check(summary: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """ASHA + TPE: median speed-up >= 3 and median final quality >= random's (None when it did not run)."""
    if TARGET_STRATEGY not in summary:
        return None
    row, random = summary[TARGET_STRATEGY], summary[BASELINE]
    fast, good = row["median_speedup"] >= TARGET_SPEEDUP, _no_worse_than_random(row, random)
    return {"strategy": TARGET_STRATEGY, "speedup": row["median_speedup"], "target_speedup": TARGET_SPEEDUP,
            "speedup_met": fast, "quality": row["median_final_quality"],
            "random_quality": random["median_final_quality"], "quality_met": good, "pass": fast and good}


def best_strategy(summary: dict[str, dict[str, Any]], strategies: Sequence[str]) -> str:
    """The highest median speed-up among strategies whose median final quality is no worse than random's
    (random is one of them, at 1x); ties: the higher median quality, then the order of ``strategies``."""
    random = summary[BASELINE]
    eligible = [name for name in strategies if _no_worse_than_random(summary[name], random)]
    return max(eligible, key=lambda n: (summary[n]["median_speedup"], summary[n]["median_final_quality"],
                                        -strategies.index(n)))


def median_curve(curves: Sequence[Sequence[Sequence[Any]]], grid: Sequence[int]) -> list[tuple[Any, ...]]:
    """Per x of ``grid``: (x, 25th percentile, median, 75th percentile, repetitions counted) over the curves read
    as step functions; a curve without a point at or before x does not count (all None when none does)."""
    out = []
    for x in grid:
        values = [v for v in (value_at(curve, x) for curve in curves) if v is not None]
        out.append((x, *quartiles(values), len(values)) if values else (x, None, None, None, 0))
    return out


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def report(results: dict[str, Any]) -> str:
    """The table (repetition x strategy), the summary per strategy, the target's PASS/FAIL, the best strategy."""
    settings, summary = results["settings"], results["summary"]
    strategies = settings["strategies"]
    lines = [f"search efficiency: data {settings['data']}, space {settings['space']} over "
             f"{' '.join(settings['backbones'])}, {' '.join(settings['set'])}, {settings['trials']} trials x "
             f"<= {settings['max_epochs']} epochs, concurrency {settings['concurrency']}, grace "
             f"{settings['grace_epochs']} epoch(s), reduction factor {settings['reduction_factor']:g}, quality = mean "
             f"best val SumR over seeds {' '.join(map(str, results['quality_seeds']))}",
             "incumbent = best finished trial by its single run; target = random's final quality (same repetition); "
             "epochs counted over all trials in report order", "",
             f"{'rep':>4}  {'strategy':<18}{'epochs':>7}{'finished':>9}{'incumb.':>8}{'single run':>11}"
             f"{'quality':>9}{'target':>8}{'epochs to target':>22}{'speed-up':>9}  champion != single run"]
    for seed, rep in results["per_rep"].items():
        for name in strategies:
            row = rep["strategies"][name]
            at = row["epochs_to_target"]
            reached = str(at) if at is not None else f"not reached (>{row['epochs']})"
            flag = {True: "yes", False: "no", None: "-"}[row["champion_disagrees"]]
            lines.append(f"{seed:>4}  {name:<18}{row['epochs']:>7}{row['finished']:>9}{row['incumbents']:>8}"
                         f"{_cell(row['final_single_run'], '.1f', 11)}{_cell(row['final_quality'], '.1f', 9)}"
                         f"{rep['target']:>8.1f}{reached:>22}{row['speedup']:>8.2f}x  {flag}")
    lines += ["", f"{'strategy':<18}{'reps':>5}{'median speed-up':>16}{'reached':>8}{'median quality':>15}"
                  f"{'IQR (25-75%)':>16}{'median epochs':>14}{'disagree':>9}"]
    for name in strategies:
        s = summary["strategies"][name]
        iqr = ("-" if s["final_quality_q25"] is None
               else f"{s['final_quality_q25']:.1f}-{s['final_quality_q75']:.1f}")
        rate = "-" if s["disagreement_rate"] is None else f"{s['disagreements']}/{s['repetitions']}"
        lines.append(f"{name:<18}{s['repetitions']:>5}{s['median_speedup']:>15.2f}x{s['reached']:>8}"
                     f"{_cell(s['median_final_quality'], '.1f', 15)}{iqr:>16}{s['median_epochs']:>14g}{rate:>9}")
    lines.append("")
    check = summary["target"]
    if check is not None:
        lines.append(f"target: {LABELS[check['strategy']]}: median speed-up {check['speedup']:.2f}x "
                     f"(>= {check['target_speedup']:g}x: {'yes' if check['speedup_met'] else 'no'}), median final "
                     f"quality {_cell(check['quality'], '.1f', 0)} vs random's {check['random_quality']:.1f} "
                     f"(no worse: {'yes' if check['quality_met'] else 'no'}): {'PASS' if check['pass'] else 'FAIL'}")
    best = summary["best"]
    b = summary["strategies"][best]
    lines.append(f"best by the measurements: {best} (median speed-up {b['median_speedup']:.2f}x, median final "
                 f"quality {b['median_final_quality']:.1f}; among strategies no worse than random's median quality)")
    flags = [r["champion_disagrees"] for rep in results["per_rep"].values() for r in rep["strategies"].values()
             if r["champion_disagrees"] is not None]
    if flags:
        lines.append(f"champion vs single run: the final incumbent is not the best seed mean among the search's "
                     f"incumbents in {sum(flags)}/{len(flags)} searches ({sum(flags) / len(flags):.0%})")
    lines.append(f"wall time {results['wall_seconds']:.0f}s (searches {results['search_seconds']:.0f}s, quality "
                 f"runs {results['quality_seconds']:.0f}s: {results['quality_trainings']} trainings)")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str | Path) -> Path:
    """The median anytime curve per strategy with its interquartile band (PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = results["settings"]
    reps = list(results["per_rep"].values())
    longest = max(row["epochs"] for rep in reps for row in rep["strategies"].values())
    grid = list(range(1, longest + 1))
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for name in settings["strategies"]:
        points = median_curve([rep["strategies"][name]["curve"] for rep in reps], grid)
        xs = [p[0] for p in points if p[2] is not None]
        if not xs:
            continue
        q25, med, q75 = ([p[i] for p in points if p[2] is not None] for i in (1, 2, 3))
        (line,) = axes.plot(xs, med, drawstyle="steps-post", label=name)
        axes.fill_between(xs, q25, q75, step="post", alpha=0.2, color=line.get_color())
    axes.set_xlabel("cumulative epochs (all trials, in report order)")
    axes.set_ylabel(f"incumbent's mean val SumR over {len(results['quality_seeds'])} other seeds")
    axes.set_title(f"search efficiency on {settings['data']}: {settings['trials']} trials x <= "
                   f"{settings['max_epochs']} epochs, {len(reps)} repetition(s); median and IQR")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# --- running the searches ----------------------------------------------------------------------------------

def _order_callback() -> Any:
    from ray.tune import Callback

    from trainables.trial_report import METRIC, TIME_ATTR, is_failed, is_finished

    class SearchRecord(Callback):
        """The trials' epoch reports and ends, in the order the driver received them (the compute clock)."""

        def __init__(self) -> None:
            self.stream: list[list[Any]] = []
            self.seconds: list[float] = []  # when the driver received each event (since the search started)
            self.start = time.perf_counter()
            self.last_score: dict[str, float] = {}
            self.ended: set[str] = set()

        def _add(self, event: list[Any]) -> None:
            self.stream.append(event)
            self.seconds.append(round(time.perf_counter() - self.start, 2))

        def _end(self, trial_id: str, status: str, score: float | None) -> None:
            if trial_id not in self.ended:
                self.ended.add(trial_id)
                self._add([END, trial_id, status, score])

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                            **info: Any) -> None:
            if is_failed(result) or METRIC not in result:
                return  # a failure's report: its end comes with on_trial_complete
            if is_finished(result):
                self._end(trial.trial_id, FINISHED, float(result[METRIC]))
            elif TIME_ATTR in result:
                self.last_score[trial.trial_id] = float(result[METRIC])
                self._add([EPOCH, trial.trial_id, int(result[TIME_ATTR]), float(result[METRIC])])

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            failed = is_failed(trial.last_result)
            self._end(trial.trial_id, FAILED if failed else STOPPED, self.last_score.get(trial.trial_id))

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._end(trial.trial_id, FAILED, self.last_score.get(trial.trial_id))

    return SearchRecord()


def search_space(args: argparse.Namespace, seed: int) -> Any:
    """The space every search of ``seed`` samples: ``--space`` over ``--backbones`` with ``--set``, the
    epochs and the training seed fixed (patience = max epochs: no early stopping within a trial, so FIFO
    trials run every epoch)."""
    from spaces import build_space
    from trainables.training.config import parse_assignments

    fixed = {"epochs": args.max_epochs, "patience": args.max_epochs, "seed": seed, **parse_assignments(args.set)}
    return build_space(args.space, backbones=args.backbones, fixed=fixed)


def _checked_record(name: str, stream: list[list[Any]], finished_search: Any) -> None:
    """The driver's record must be what the trials' result.json files hold: every epoch report with its value,
    one end per trial, and exactly the stored finished trials (with their final best val SumR) as finished."""
    from trainables.trial_report import METRIC

    stored = {t.trial_id: {r["epoch"]: float(r[METRIC]) for r in t.epochs()} for t in finished_search.trials}
    epochs = [e for e in stream if e[0] == EPOCH]
    mismatched = [(tid, epoch) for _, tid, epoch, score in epochs if stored.get(tid, {}).get(epoch) != score]
    if mismatched or sum(map(len, stored.values())) != len(epochs):
        raise RuntimeError(f"search {name}: the driver's epoch reports differ from the stored result.json "
                           f"({len(epochs)} vs {sum(map(len, stored.values()))}, e.g. {mismatched[:3]})")
    ends = {e[1]: e for e in stream if e[0] == END}
    finished = {t.trial_id: t.score for t in finished_search.trials if t.finished}
    recorded = {tid: e[3] for tid, e in ends.items() if e[2] == FINISHED}
    if len(ends) != len(finished_search.trials) or recorded != finished:
        raise RuntimeError(f"search {name}: the driver's trial ends differ from the stored trials "
                           f"({len(ends)} ends for {len(finished_search.trials)} trials; finished "
                           f"{sorted(recorded)} vs stored {sorted(finished)})")


def run_search(strategy: Strategy, seed: int, args: argparse.Namespace, data: Any, storage_root: Path,
               tracking_uri: str) -> dict[str, Any]:
    """One search as ``search/run.py`` runs it (with ``stopped_as`` chosen); its record in the driver's order,
    checked against the search's storage, and its trials' configs."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search import tuning
    from search.results import final_statuses
    from search.schedulers import make_scheduler
    from search.searcher import PruneAwareOptunaSearch, make_sampler
    from tracking.mlflow_runs import close_children, start_parent
    from tracking.search_results import load_search
    from tracking.storage import search_storage
    from trainables.trial_report import METRIC, MODE, TIME_ATTR

    name = f"{strategy.name}-seed{seed}"
    space = search_space(args, seed)
    storage = search_storage(str(storage_root), name, resume=False)
    tracking = start_parent(tracking_uri, EXPERIMENT, name, space.name, resume=False,
                            params={"strategy": strategy.name, "seed": seed}, tags={"data": args.data})
    searcher = PruneAwareOptunaSearch(space=space, metric=METRIC, mode=MODE,
                                      sampler=make_sampler(strategy.sampler, seed), stopped_as=strategy.stopped_as)
    scheduler = make_scheduler(strategy.scheduler, metric=METRIC, mode=MODE, time_attr=TIME_ATTR,
                               max_epochs=args.max_epochs, grace_epochs=args.grace_epochs,
                               reduction_factor=args.reduction_factor, searcher=searcher)
    record = _order_callback()
    tuner = tune.Tuner(
        tuning.trainable(data, 1.0, 0.0),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, args.concurrency), scheduler=scheduler,
                                    num_samples=args.trials, trial_dirname_creator=tuning.trial_dirname,
                                    reuse_actors=not args.new_actor_per_trial),
        run_config=tune.RunConfig(name=name, storage_path=storage.storage_path, storage_filesystem=storage.filesystem,
                                  callbacks=[*tuning.trial_callbacks(tracking, storage), record], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    start = record.start = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    finished = load_search(str(storage_root), name)
    close_children(tracking, final_statuses(grid))
    if not record.stream:
        raise RuntimeError(f"search {name}: the driver saw no report")
    _checked_record(name, record.stream, finished)
    told: dict[str, int] = {}
    for state in searcher.told.values():
        told[state] = told.get(state, 0) + 1
    configs = {t.trial_id: t.config for t in finished.trials}
    return {"name": name, "seconds": seconds, "errors": grid.num_errors,
            "trials": len(finished.trials), "finished": sum(t.finished for t in finished.trials),
            "failed": sum(t.failed for t in finished.trials), "told_to_optuna": told,
            # ran every epoch, yet the scheduler stopped it at its last epoch report (a rung at max epochs)
            "stopped_at_max_epochs": sum(not t.finished and not t.failed and len(t.epochs()) == args.max_epochs
                                         for t in finished.trials),
            "stream": record.stream, "event_seconds": record.seconds, "configs": configs,
            "config_keys": {tid: config_key(config) for tid, config in configs.items()}}


# --- the quality runs --------------------------------------------------------------------------------------

def quality_jobs(configs: dict[str, dict[str, Any]], cache: dict[str, Any], seeds: Sequence[int],
                 max_epochs: int) -> list[tuple[str, int, dict[str, Any]]]:
    """(key, seed, config with that seed) for every config of ``configs`` not in ``cache`` and every seed; a
    config that would not train ``max_epochs`` with no early stopping is refused (not a search trial's)."""
    jobs = []
    for key, config in configs.items():
        if key in cache:
            continue
        if config.get("epochs") != max_epochs or config.get("patience") != max_epochs:
            raise ValueError(f"quality run of {key}: epochs and patience must be {max_epochs}, "
                             f"got {config.get('epochs')} and {config.get('patience')}")
        jobs += [(key, seed, {**config, "seed": seed}) for seed in seeds]
    return jobs


def train_qualities(pool: Any, configs: dict[str, dict[str, Any]], cache: dict[str, Any], seeds: Sequence[int],
                    max_epochs: int) -> int:
    """Train the configs not in ``cache`` with every quality seed on ``pool`` (``seed_noise._train``) and add
    ``{key: {"config", "seeds", "scores", "mean"}}`` to it; returns the number of trainings."""
    from concurrent.futures import as_completed

    from benchmarks import seed_noise

    jobs = quality_jobs(configs, cache, seeds, max_epochs)
    futures = {pool.submit(seed_noise._train, config): (key, seed) for key, seed, config in jobs}
    scores: dict[str, dict[int, float]] = {}
    started = time.perf_counter()
    for done, future in enumerate(as_completed(futures), 1):
        key, seed = futures[future]
        curve = future.result()
        if len(curve) != max_epochs:
            raise RuntimeError(f"quality run of {key} with seed {seed} trained {len(curve)} of {max_epochs} epochs")
        scores.setdefault(key, {})[seed] = curve[-1]
        if done % max(1, len(jobs) // 10) == 0 or done == len(jobs):
            print(f"  quality runs {done}/{len(jobs)} ({time.perf_counter() - started:.0f}s)", flush=True)
    for key, by_seed in scores.items():
        values = [by_seed[seed] for seed in seeds]
        cache[key] = {"config": {k: v for k, v in configs[key].items() if k != "seed"}, "seeds": list(seeds),
                      "scores": values, "mean": statistics.fmean(values)}
    return len(jobs)


def incumbent_configs(searches: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{key: config} of every trial that was an incumbent in any of ``searches`` (what needs a quality)."""
    out = {}
    for search in searches.values():
        for _, trial_id, _ in incumbents(search["stream"]):
            out[search["config_keys"][trial_id]] = search["configs"][trial_id]
    return out


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every (repetition, strategy) search on one local Ray in a private temp folder, then the quality runs of
    that repetition's new incumbents; the analysis per repetition and over them. The JSON at ``--out`` is
    rewritten after each repetition, so an interrupted run keeps the repetitions it finished."""
    from concurrent.futures import ProcessPoolExecutor

    os.environ.update(LOCAL_RAY_ENV)  # before ray is imported: a local Ray on 127.0.0.1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mlflow.tracking import MlflowClient

    from benchmarks import seed_noise
    from search.ray_session import ray_session
    from trainables.data.datasets import resolve_dataset
    from trainables.training.loop import load_data

    _check_args(args)
    strategies = [s for s in STRATEGIES if s.name in args.strategies]
    seeds = quality_seeds(args.quality_seeds)
    data = load_data(resolve_dataset(args.data))
    started = time.perf_counter()
    results: dict[str, Any] = {
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("out", "plot")},
                     "strategies": [s.name for s in strategies]},
        "quality_seeds": seeds,
        "definitions": {
            "incumbent": "after each finished trial: the best finished trial so far by its single-run best_val_sumr",
            "quality": f"mean best val SumR of the incumbent's config over training seeds {seeds}, "
                       f"{args.max_epochs} epochs, no early stopping",
            "anytime_curve": "[cumulative epochs (all trials' epoch reports, driver order), quality, incumbent]",
            "target": "random search's final quality (same repetition)",
            "speedup": "epochs_to_target(random) / epochs_to_target(strategy); 0 if not reached",
            "champion_disagrees": "the final incumbent's quality is below the best quality of the search's incumbents"},
        "searches": {}, "quality": {}, "per_rep": {}, "search_seconds": 0.0, "quality_seconds": 0.0,
        "quality_trainings": 0}
    # spawn: fresh interpreters, not forks of this one (which has imported torch and started Ray)
    with tempfile.TemporaryDirectory(prefix="prvr-efficiency-") as tmp, \
            ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=seed_noise._load, initargs=(args.data,)) as pool:
        tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        # artifacts in the temp folder (a SQLite store would put them in ./mlruns of the working folder)
        MlflowClient(tracking_uri).create_experiment(EXPERIMENT, artifact_location=str(Path(tmp) / "artifacts"))
        with ray_session(num_cpus=args.concurrency, num_gpus=None):
            for seed in args.seeds:
                searches: dict[str, dict[str, Any]] = {}
                for strategy in strategies:
                    search = run_search(strategy, seed, args, data, Path(tmp) / "results", tracking_uri)
                    searches[strategy.name] = search
                    results["search_seconds"] += search["seconds"]
                    history = incumbents(search["stream"])
                    print(f"rep {seed} {strategy.name}: {total_epochs(search['stream'])} epochs, {search['finished']}"
                          f"/{search['trials']} trials finished, {len({tid for _, tid, _ in history})} distinct "
                          f"incumbents, told {search['told_to_optuna']} ({search['seconds']:.0f}s)", flush=True)
                results["searches"][seed] = searches
                needed = incumbent_configs(searches)
                fresh = sum(key not in results["quality"] for key in needed)
                print(f"rep {seed}: {len(needed)} incumbent configs, {fresh} new: {fresh * len(seeds)} quality runs "
                      f"of {args.max_epochs} epochs on {args.workers} worker(s)", flush=True)
                quality_start = time.perf_counter()
                results["quality_trainings"] += train_qualities(pool, needed, results["quality"], seeds,
                                                                args.max_epochs)
                results["quality_seconds"] += time.perf_counter() - quality_start
                means = {key: entry["mean"] for key, entry in results["quality"].items()}
                results["per_rep"][seed] = analyse_repetition(searches, means)
                results["summary"] = summarise(results["per_rep"], results["settings"]["strategies"])
                results["wall_seconds"] = time.perf_counter() - started
                write_json(args.out, results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_parser(), argv, QUICK)
    results = run_benchmark(args)
    results["plot"] = str(plot(results, args.plot or Path(args.out).with_suffix(".png")))
    print("\n" + report(results))
    out = write_json(args.out, results)
    print(f"results: {out}\nplot: {results['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
