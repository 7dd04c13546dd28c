"""Search efficiency: the epochs ASHA + TPE needs to match the best val SumR random search finds.

    python benchmarks/search_efficiency.py                 # default: 10 seeds x 3 strategies, ~60 min on 2 cores
    python benchmarks/search_efficiency.py --quick         # smoke run (about 1 minute)
    python benchmarks/search_efficiency.py --seeds 0 1 2 3 4 --trials 32 --out /tmp/efficiency.json
    python benchmarks/search_efficiency.py --trials 16 --max-epochs 8 --grace-epochs 1 --reduction-factor 2  # search/run.py's ASHA
    python benchmarks/search_efficiency.py --data small --strategies random asha-tpe-pruned  # the demo data, the default strategy only

Why: the project's default search is ASHA early stopping with Optuna TPE, and trials ASHA stops are told to
Optuna as PRUNED (``search.searcher.PruneAwareOptunaSearch``) instead of COMPLETE with their early score (what
Ray's ``OptunaSearch`` does). This measures what that buys in compute on the synthetic benchmark.

Strategies, the same number of trials each, for every seed (searcher seed = every trial's training seed, as
``search/run.py --seed`` does):

* ``random``: Optuna's RandomSampler, no early stopping (FIFO: every trial runs ``--max-epochs``);
* ``asha-tpe-pruned``: ASHA + TPE, stopped trials told as PRUNED (the project's default);
* ``asha-tpe-complete``: ASHA + TPE, stopped trials told as COMPLETE with their early score (Ray's behaviour).

Each search runs through the project's search path: ``search/run.py``'s space, searcher, scheduler (ASHA on
``epoch``, never stopping a trial at its last epoch (``search/schedulers.py``), grace ``--grace-epochs``,
reduction factor ``--reduction-factor``),
``ConcurrencyLimiter`` and the ``search.tuning`` trainable (checkpoints, MLflow child runs), on one
private local Ray shared by all searches, with Ray actors reused between trials (``--new-actor-per-trial``
for run.py's one actor per trial: same configs and epochs, more wall time, since each new actor imports
torch). The Tuner is built here (as ``search.tuning.fit`` builds it) because ``search/run.py`` has no
option for ``stopped_as``; one extra Tune callback records the order in which the driver received the
trials' epoch reports. Results are read back from the search's storage (``tracking.search_results``) and
checked against it.

Definitions (per seed):

* an *epoch* is one per-epoch report of any trial (the trial's ``result.json``, final report left out); the
  epochs of a search are counted in the order the driver received them (the compute clock; with concurrency 2
  this counts the epochs of trials running alongside). The count is the compute spent: a Tune function trial
  waits at each report until the driver lets it go on, so a stopped trial never starts an epoch it then loses;
* *target* = the best val SumR (``best_val_sumr``: a trial's best epoch on the validation split) of any
  trial of the ``random`` search;
* *epochs to target* of a strategy = the number of epochs counted up to and including the first epoch
  report, of any trial, whose ``best_val_sumr`` >= target ("not reached" if none; random always reaches it);
* *speed-up* = epochs to target of ``random`` / epochs to target of the strategy; a seed where the strategy
  does not reach the target counts as speed-up 0 in the median (conservative). Fallback, labelled ``@95%``:
  the same with target 0.95 x random's best.

Target: median speed-up of ASHA + TPE >= 3 (3x fewer epochs). Defaults: seeds 0-9, 48 trials of at most 16
epochs, ASHA grace 2 epochs and reduction factor 4 (rungs at epochs 2 and 8; epoch 16 is the last, never a
rung).
Why these and not ``search/run.py``'s small-demo defaults (grace 1, factor 2, few epochs):

* the speed-up is capped by max epochs / ASHA's epochs per trial. At 8 epochs and factor 2 ASHA spends
  ~2.5 epochs on an average trial (cap ~3.2x); at 16 epochs, grace 2 and factor 4 it spends ~4 (cap ~4x;
  ~2.5 with grace 1, cap ~6.4x);
* TPE samples its first 10 trials (``n_startup_trials``) at random with its seed, and those are exactly
  RandomSampler's first 10 configs for the same seed, so the strategies share those configs (and, with the
  same training seed, their learning curves): the comparison is paired. When random's best is the p-th
  trial, ASHA + TPE gains only the epochs it saved on the trials before it, so a best config among the
  shared ones caps the speed-up (~1.7x); 48 trials (what a cluster search runs) let TPE's own 38 choices
  count. Measured below: more trials did not lift the median, since random's best over more trials is a
  higher target that TPE, at a third of random's epochs, often does not reach;
* a config's val SumR after 1 epoch says little about it on ``ci``: with grace 1 and factor 4 ASHA stopped
  random's best config after one epoch in one of three seeds (never reached); grace 2 did not;
* ``ci`` with MS-SL at hidden size 32 keeps learning past 8 epochs (random's best val SumR 159-169 with
  16 trials of 8 epochs, 196-210 with 32 trials of 16 epochs), so 16 epochs is what a user would train.

Measured (48 trials, the defaults, two runs: seeds 0-4 in 1724 s, 5-9 in 1819 s, other jobs running):
pruned, seeds 0-4: 9.57, 3.96, 1.52, 3.05, 0 (random's best not reached) -> median 3.05x, PASS by a hair
(3 of 5 seeds >= 3x); seeds 5-9: 1.53, 0, 1.67, 1.00, 0 -> 1.00x, FAIL. Over seeds 0-9 the median is
1.52x pruned and 1.59x complete (2.59x where pruned missed in seed 6, 1.85x vs 3.05x in seed 3), 1.77x
and 1.80x at 95% of random's best; pruned reached random's best in 7 of 10 seeds, complete in 8. Random's
best was trial 1, 7 or 11 in seeds 8, 7 and 5 (shared or next to the shared configs: 1.0-1.7x) and trial
30-43 in seeds 0, 3, 4, 6 and 9, where TPE either beat it early (0: 9.57x, 3: 3.05x) or never reached it
(4, 6, 9).
The first n trials of the same searches (n = 10, 16, 24, 32, 40, 48; approximate: ASHA and TPE see
results in a timing-dependent order) give a 10-seed median of 1.5-1.7x at every n: the number of trials
is not the lever. Earlier (24 trials): seeds 0-2 3.12x (3.12, 4.04, 2.82), seeds 3-4 1.67x each, 2.82x
over 0-4. Runs are not exactly repeatable at concurrency 2 (seed 2, pruned: the 24-trial run reached
random's best at epoch 123; here the first 24 trials did not, the 48-trial search did at epoch 225). So
the 3x target is not met robustly: 3x is what some seeds give (a TPE config beating random's best early),
not the median. Why: the target is random search's single best training run, and the training seed alone
moves a config's best val SumR by ~8 points (half the spread between configs); in 3 of 5 seeds that best run
is a lucky one, 8-19 points above the best 3-seed mean of all its configs (``benchmarks/seed_noise.py``).
On ``small`` (``--data small --strategies random asha-tpe-pruned``, seeds 0-2, 1.8 h): 2.03x, 1.36x, 2.69x,
median 2.03x. There TPE beat random's best in every seed, but asynchronous ASHA kept 14-17 of 48 trials to
the last epoch (a trial continues when it is at or above its rung's 75th percentile *so far*, which a
still-improving TPE trial tends to be), so ASHA + TPE ran 342-394 epochs against random's 768, and random's
best came at epochs 374-500: 3x would have needed the target within 125-167 epochs.
With ``--reduction-factor 8`` (same seeds; random's searches do not depend on it): 2.01x, 2.45x, 2.67x,
median 2.45x; 11-19 trials still ran all 16 epochs (250-362 epochs a search), and TPE's first config as good
as random's best was trial 27, 31 and 16 of 48.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/search_efficiency.py``
    sys.path.insert(0, str(ROOT))

from benchmarks.runs import parse_args, write_json  # noqa: E402
from search.cli import run_main  # noqa: E402
from search.ray_session import LOCAL_RAY_ENV  # noqa: E402

TARGET_SPEEDUP = 3.0
FALLBACK_FRACTION = 0.95
EXPERIMENT = "search-efficiency"


@dataclass(frozen=True)
class Strategy:
    name: str
    sampler: str
    scheduler: str
    stopped_as: str
    label: str


STRATEGIES = (
    Strategy("random", "random", "none", "pruned", "random search, no early stopping"),
    Strategy("asha-tpe-pruned", "tpe", "asha", "pruned", "ASHA + TPE, stopped trials told as PRUNED (default)"),
    Strategy("asha-tpe-complete", "tpe", "asha", "complete", "ASHA + TPE, stopped trials told as COMPLETE"),
)
BASELINE = STRATEGIES[0].name
STRATEGY_NAMES = tuple(strategy.name for strategy in STRATEGIES)

QUICK = {"data": "tiny", "seeds": [0], "trials": 4, "max_epochs": 2, "grace_epochs": 1, "reduction_factor": 2.0,
         "set": ["hidden_size=16", "n_heads=2"]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/search_efficiency.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny data, 1 seed, 4 trials of <= 2 epochs, ASHA grace 1 and factor 2, hidden_size=16 "
                        "(about 1 minute); "
                        "options given explicitly still apply")
    p.add_argument("--data", default="ci", help="synthetic preset or dataset folder (default: ci)")
    p.add_argument("--space", default="base", help="search space (default: base)")
    p.add_argument("--backbones", nargs="+", default=["mssl"], help="backbones searched over (default: mssl)")
    p.add_argument("--set", nargs="+", default=["hidden_size=32", "n_heads=2"], metavar="KEY=VALUE",
                   help="settings fixed in every trial (default: hidden_size=32 n_heads=2)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)),
                   help="searcher (and training) seeds (default: 0-9; 5 seeds decide PASS/FAIL by chance)")
    p.add_argument("--trials", type=int, default=48, help="trials per search")
    p.add_argument("--max-epochs", type=int, default=16, help="epochs of a trial that is never stopped early")
    p.add_argument("--concurrency", type=int, default=2, help="trials running at once")
    p.add_argument("--grace-epochs", type=int, default=2,
                   help="ASHA: epochs before a trial can be stopped (search/run.py's default: 1)")
    p.add_argument("--reduction-factor", type=float, default=4.0,
                   help="ASHA: keep 1/this of the trials at each rung (search/run.py's default: 2)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGY_NAMES), metavar="NAME",
                   help=f"strategies run for every seed, {BASELINE} (the baseline) among them "
                        f"(default: {' '.join(STRATEGY_NAMES)})")
    p.add_argument("--new-actor-per-trial", action="store_true",
                   help="start a new Ray actor for every trial, as search/run.py does (slower: each imports torch); "
                        "by default actors are reused, which changes no sampled config and no counted epoch")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/search_efficiency.json"), help="JSON results")
    return p


# --- analysis (pure: no Ray) -------------------------------------------------------------------------------

def epochs_to_reach(scores: list[float], target: float) -> int | None:
    """1 + the index of the first epoch report (in compute order) whose best val SumR >= ``target``."""
    for count, score in enumerate(scores, 1):
        if score >= target - 1e-9:
            return count
    return None


def speedup(baseline: int | None, strategy: int | None) -> float:
    """epochs(baseline) / epochs(strategy); 0 when the strategy never reached the target."""
    if baseline is None:
        raise ValueError("the baseline did not reach its own target")
    return 0.0 if strategy is None else baseline / strategy


def analyse(searches: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per strategy: epochs to random's best (and to 95% of it) and the speed-ups, from the searches of one
    seed (``{strategy: {"scores": [best_val_sumr of each epoch report, compute order], ...}}``)."""
    target = max(searches[BASELINE]["scores"])
    fallback = FALLBACK_FRACTION * target
    base_at = epochs_to_reach(searches[BASELINE]["scores"], target)
    base_at95 = epochs_to_reach(searches[BASELINE]["scores"], fallback)
    out: dict[str, Any] = {"target": target, "target_95": fallback, "strategies": {}}
    for name, search in searches.items():
        at, at95 = epochs_to_reach(search["scores"], target), epochs_to_reach(search["scores"], fallback)
        out["strategies"][name] = {
            "epochs": len(search["scores"]), "best_val_sumr": max(search["scores"], default=float("nan")),
            "epochs_to_target": at, "epochs_to_target_95": at95, "reached": at is not None,
            "speedup": speedup(base_at, at), "speedup_95": speedup(base_at95, at95)}
    return out


def compared(per_seed: dict[int, dict[str, Any]]) -> list[Strategy]:
    """The strategies other than the baseline that the seeds' searches ran, in ``STRATEGIES``' order."""
    ran = set.intersection(*(set(seed["strategies"]) for seed in per_seed.values()))
    return [strategy for strategy in STRATEGIES[1:] if strategy.name in ran]


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Median speed-ups over seeds and the PASS/FAIL of the target, per ASHA + TPE strategy run; the effect
    of pruned vs complete (epochs to target of complete / of pruned; best val SumR difference) when both ran."""
    summary: dict[str, Any] = {}
    for strategy in compared(per_seed):
        rows = [seed["strategies"][strategy.name] for seed in per_seed.values()]
        median = statistics.median(r["speedup"] for r in rows)
        summary[strategy.name] = {
            "median_speedup": median, "median_speedup_95": statistics.median(r["speedup_95"] for r in rows),
            "seeds_reached": sum(r["reached"] for r in rows), "seeds": len(rows),
            "target": TARGET_SPEEDUP, "pass": median >= TARGET_SPEEDUP}
    pruned, complete = "asha-tpe-pruned", "asha-tpe-complete"
    if not {pruned, complete} <= summary.keys():
        return summary
    ratios = []
    for seed in per_seed.values():
        a, b = seed["strategies"][pruned]["epochs_to_target"], seed["strategies"][complete]["epochs_to_target"]
        if a is not None and b is not None:
            ratios.append(b / a)
    summary["pruned_vs_complete"] = {
        "median_epochs_ratio_complete_over_pruned": statistics.median(ratios) if ratios else None,
        "seeds_both_reached": len(ratios),
        "median_best_val_sumr_difference": statistics.median(
            seed["strategies"][pruned]["best_val_sumr"] - seed["strategies"][complete]["best_val_sumr"]
            for seed in per_seed.values())}
    return summary


# --- running the searches ----------------------------------------------------------------------------------

def _order_callback() -> Any:
    from ray.tune import Callback

    from trainables.trial import METRIC

    class EpochOrder(Callback):
        """The trials' epoch reports in the order the driver received them (the compute clock)."""

        def __init__(self) -> None:
            self.events: list[tuple[str, int, float]] = []
            self.seconds: list[float] = []  # when the driver received each (since the search started)
            self.start = time.perf_counter()

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                            **info: Any) -> None:
            if "epoch" in result and not result.get("finished") and METRIC in result:
                self.events.append((trial.trial_id, int(result["epoch"]), float(result[METRIC])))
                self.seconds.append(round(time.perf_counter() - self.start, 2))

    return EpochOrder()


def search_space(args: argparse.Namespace, seed: int) -> Any:
    """The space every search of ``seed`` samples: ``--space`` over ``--backbones`` with ``--set``, the
    epochs and the training seed fixed (patience = max epochs: no early stopping within a trial, so FIFO
    trials run every epoch)."""
    from spaces import build_space
    from trainables.training.config import parse_assignments

    fixed = {"epochs": args.max_epochs, "patience": args.max_epochs, "seed": seed, **parse_assignments(args.set)}
    return build_space(args.space, backbones=args.backbones, fixed=fixed)


def run_search(strategy: Strategy, seed: int, args: argparse.Namespace, data: Any, storage_root: Path,
               tracking_uri: str) -> dict[str, Any]:
    """One search as ``search/run.py`` runs it (with ``stopped_as`` chosen); its epoch reports in compute
    order, read back from the search's storage."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search import tuning
    from search.results import final_statuses
    from search.schedulers import make_scheduler
    from search.searcher import PruneAwareOptunaSearch, make_sampler
    from tracking.mlflow_runs import close_children, start_parent
    from tracking.search_results import load_search
    from tracking.storage import search_storage
    from trainables.trial import METRIC, MODE, TIME_ATTR

    name = f"{strategy.name}-seed{seed}"
    space = search_space(args, seed)
    storage = search_storage(str(storage_root), name, resume=False)
    tracking = start_parent(tracking_uri, EXPERIMENT, name, space.name, resume=False,
                            params={"strategy": strategy.name, "seed": seed}, tags={"data": args.data})
    searcher = PruneAwareOptunaSearch(space=space, metric=METRIC, mode=MODE,
                                      sampler=make_sampler(strategy.sampler, seed), stopped_as=strategy.stopped_as)
    scheduler = make_scheduler(strategy.scheduler, metric=METRIC, mode=MODE, time_attr=TIME_ATTR,
                               max_epochs=args.max_epochs, grace_epochs=args.grace_epochs,
                               reduction_factor=args.reduction_factor)
    order = _order_callback()
    tuner = tune.Tuner(
        tuning.trainable(data, 1.0, 0.0),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, args.concurrency), scheduler=scheduler,
                                    num_samples=args.trials, trial_dirname_creator=tuning.trial_dirname,
                                    reuse_actors=not args.new_actor_per_trial),
        run_config=tune.RunConfig(name=name, storage_path=storage.storage_path, storage_filesystem=storage.filesystem,
                                  callbacks=[*tuning.trial_callbacks(tracking, storage), order], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    start = order.start = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    finished = load_search(str(storage_root), name)
    close_children(tracking, final_statuses(grid))
    if not order.events:
        raise RuntimeError(f"search {name}: the driver saw no epoch report")
    stored = {t.trial_id: {r["epoch"]: float(r[METRIC]) for r in t.epochs()} for t in finished.trials}
    # the compute order comes from the driver; every value must be the one in the trial's result.json
    mismatched = [(tid, epoch) for tid, epoch, score in order.events if stored.get(tid, {}).get(epoch) != score]
    if mismatched or sum(map(len, stored.values())) != len(order.events):
        raise RuntimeError(f"search {name}: the driver's epoch reports differ from the stored result.json "
                           f"({len(order.events)} vs {sum(map(len, stored.values()))}, e.g. {mismatched[:3]})")
    told = {}
    for state in searcher.told.values():
        told[state] = told.get(state, 0) + 1
    return {"name": name, "seconds": seconds, "errors": grid.num_errors,
            "trials": len(finished.trials), "finished": sum(t.finished for t in finished.trials),
            "failed": sum(t.failed for t in finished.trials), "told_to_optuna": told,
            # ran every epoch, yet the scheduler stopped it at its last epoch report (an ASHA rung at max epochs)
            "stopped_at_max_epochs": sum(not t.finished and not t.failed and len(t.epochs()) == args.max_epochs
                                         for t in finished.trials),
            "scores": [score for _, _, score in order.events],
            "order": [[tid, epoch] for tid, epoch, _ in order.events], "report_seconds": order.seconds}


def _check_args(args: argparse.Namespace) -> None:
    for flag, ok in [("--trials", args.trials >= 1), ("--max-epochs", args.max_epochs >= 1),
                     ("--concurrency", args.concurrency >= 1), ("--grace-epochs", args.grace_epochs >= 1),
                     ("--reduction-factor", args.reduction_factor > 1),
                     ("--seeds", len(set(args.seeds)) == len(args.seeds))]:
        if not ok:
            raise ValueError(f"{flag} is out of range: {getattr(args, flag[2:].replace('-', '_'))}")
    unknown = sorted(set(args.strategies) - set(STRATEGY_NAMES))
    if unknown:
        raise ValueError(f"--strategies: unknown {', '.join(unknown)} (available: {', '.join(STRATEGY_NAMES)})")
    if BASELINE not in args.strategies or len(set(args.strategies)) < 2:
        raise ValueError(f"--strategies must name {BASELINE} (the baseline) and at least one other, "
                         f"got {' '.join(args.strategies)}")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every (seed, strategy) search on one local Ray in a private temp folder; the analysis per seed."""
    os.environ.update(LOCAL_RAY_ENV)  # before ray is imported: a local Ray on 127.0.0.1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mlflow.tracking import MlflowClient

    from search.ray_session import ray_session
    from trainables.data.datasets import resolve_dataset
    from trainables.training.loop import load_data

    _check_args(args)
    data = load_data(resolve_dataset(args.data))
    started = time.perf_counter()
    per_seed: dict[int, dict[str, Any]] = {}
    searches: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="prvr-efficiency-") as tmp:
        tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        # artifacts in the temp folder (a SQLite store would put them in ./mlruns of the working folder)
        MlflowClient(tracking_uri).create_experiment(EXPERIMENT, artifact_location=str(Path(tmp) / "artifacts"))
        with ray_session(num_cpus=args.concurrency, num_gpus=None):
            for seed in args.seeds:
                searches[seed] = {}
                for strategy in (s for s in STRATEGIES if s.name in args.strategies):
                    result = run_search(strategy, seed, args, data, Path(tmp) / "results", tracking_uri)
                    searches[seed][strategy.name] = result
                    print(f"seed {seed} {strategy.name}: {len(result['scores'])} epochs, best val SumR "
                          f"{max(result['scores']):.1f}, told {result['told_to_optuna']} ({result['seconds']:.0f}s)",
                          flush=True)
                per_seed[seed] = analyse(searches[seed])
    return {"settings": {k: v for k, v in vars(args).items() if k != "out"},
            "definitions": {"target": "best val SumR (best_val_sumr) of any random-search trial",
                            "epochs_to_target": "epoch reports of all trials, in the order the driver received "
                                                "them, up to the first with best_val_sumr >= target",
                            "speedup": "epochs_to_target(random) / epochs_to_target(strategy); 0 if not reached",
                            "speedup_95": f"the same with target {FALLBACK_FRACTION} x random's best"},
            "wall_seconds": time.perf_counter() - started, "searches": searches, "per_seed": per_seed,
            "summary": summarise(per_seed)}


def _cell(value: int | None, total: int) -> str:
    return f"{value}" if value is not None else f"not reached (>{total})"


def report(results: dict[str, Any]) -> str:
    """The table (strategy x seed) and the summary lines with the target's PASS/FAIL."""
    settings = results["settings"]
    lines = [f"search efficiency: data {settings['data']}, space {settings['space']} over "
             f"{' '.join(settings['backbones'])}, {' '.join(settings['set'])}, {settings['trials']} trials x "
             f"<= {settings['max_epochs']} epochs, concurrency {settings['concurrency']}, ASHA grace "
             f"{settings.get('grace_epochs', 1)} epoch(s), reduction factor {settings.get('reduction_factor', 2.0):g}",
             "target = best val SumR of random search (same seed); epochs counted over all trials in report order",
             "",
             f"{'seed':>4}  {'strategy':<18}{'epochs':>7}{'best val SumR':>15}{'target':>8}"
             f"{'epochs to target':>22}{'speed-up':>9}{'epochs @95%':>22}{'speed-up @95%':>15}"]
    for seed, analysis in results["per_seed"].items():
        for name, row in analysis["strategies"].items():
            lines.append(f"{seed:>4}  {name:<18}{row['epochs']:>7}{row['best_val_sumr']:>15.1f}"
                         f"{analysis['target']:>8.1f}"
                         f"{_cell(row['epochs_to_target'], row['epochs']):>22}{row['speedup']:>8.2f}x"
                         f"{_cell(row['epochs_to_target_95'], row['epochs']):>22}{row['speedup_95']:>14.2f}x")
    lines.append("")
    summary = results["summary"]
    for strategy in compared(results["per_seed"]):
        s = summary[strategy.name]
        lines.append(f"{strategy.label}: median speed-up {s['median_speedup']:.2f}x "
                     f"(target >= {s['target']:g}x: {'PASS' if s['pass'] else 'FAIL'}), reached random's best in "
                     f"{s['seeds_reached']}/{s['seeds']} seeds; @95% of it: {s['median_speedup_95']:.2f}x")
    effect = summary.get("pruned_vs_complete")  # only when both ran
    if effect is not None:
        ratio = effect["median_epochs_ratio_complete_over_pruned"]
        lines.append("pruned vs complete (no target): epochs to random's best, complete / pruned: "
                     + (f"median {ratio:.2f}" if ratio is not None else "n/a")
                     + f" over {effect['seeds_both_reached']} seeds where both reached it (> 1: pruned is faster); "
                     f"best val SumR pruned - complete: median {effect['median_best_val_sumr_difference']:+.1f}")
    lines.append(f"wall time {results['wall_seconds']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_parser(), argv, QUICK)
    results = run_benchmark(args)
    print("\n" + report(results))
    out = write_json(args.out, results)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
