"""Search a PRVR backbone's and its plugins' settings: Ray Tune trials over an Optuna space.

    python search/run.py --space ral                    # embedded default: small synthetic data, local Ray
    python search/run.py --space ral                    # on a cluster's head (ray attach): joins that cluster
    python search/run.py --space full --backbones mssl gmmformer --trials 32 --max-epochs 20
    python search/run.py --space ral --name ral-1 --resume      # continue an interrupted search
    python search/run.py --space ral --confirm-top 3 --confirm-seeds 4  # a larger confirmation stage
    python search/run.py --space ral --preset ral-gmmformer2-tvr   # a release preset as the fixed base

Everything is checked before Ray starts: the space (sampled and each distinct model built once), the
range overrides, the dataset and the storage; a bad input is one ``error:`` line and exit code 2. Each
trial trains one sampled config (trainables/trial.py), reports validation metrics and a checkpoint every
epoch, and resumes from its checkpoint after a restart; ASHA stops unpromising trials, which Optuna is
told as pruned. Then the confirmation stage (search/confirmation.py) retrains the best --confirm-top
configs with --confirm-seeds more training seeds each, and the champion is the config with the highest
mean best-val SumR over its seeds (tracking/champion.py), not the luckiest single run. The search ends
with the best trials (val and test R@1/5/10/100/SumR), the confirmed configs (mean +- sd and 95% interval
over seeds) and where the results are. Defaults are sized to finish in a few minutes on a 2-core laptop.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Set as AbstractSet
from typing import Any

from search import ray_version
from search.cli import EXIT_INTERRUPTED, cluster_options, parser, program, resource_options, run_main
from search.ray_session import LOCAL_RAY_ENV
from search.ray_target import ray_target
from search.trusted_state import TRUST_FLAG
from tracking.storage import check_name
from trainables.data.split_overlap import ALLOW_FLAG
from trainables.errors import InputError

# Ray is imported inside ``search`` only: a local Ray reads its loopback setting when ray is imported; torch
# (spaces/, trainables.models, trainables.training) inside the functions that need it, so --help is fast

SCHEDULERS = ("asha", "hyperband", "none")  # search/schedulers.py
SAMPLERS = ("random", "tpe", "cmaes")  # search/searcher.py (which imports Ray: not imported before the checks)
MAX_SEED = 2**31 - 1  # numpy's and Optuna's seeds are < 2**32; a trial's seeds go up to --seed + --confirm-seeds
#: the confirmation stage's defaults: each of the 2 best configs over 2 seeds (the search's and 1 more), sized with
#: --trials for a first command of a few minutes on a 2-core machine (README: 5 min 50 s to 8 min 17 s measured)
CONFIRM_TOP, CONFIRM_SEEDS = 2, 1


def _parser() -> argparse.ArgumentParser:
    p = parser(program("search/run.py"), __doc__)
    data, space, search = p.add_argument_group("data"), p.add_argument_group("space"), p.add_argument_group("search")
    resources, storage = p.add_argument_group("resources"), p.add_argument_group("storage/tracking")
    cluster = p.add_argument_group("cluster")
    space.add_argument("--space", default="base", help="search space: base (no plugin), a plugin with ranges in "
                       "spaces/ranges.yaml (ral, msc, moment, ...: its settings searched), or full (every plugin "
                       "searched, on and off); an unknown name lists them")
    space.add_argument("--backbones", nargs="+", default=None,
                   help="backbones to search over (default: the ranges' choices that can run the space's plugin)")
    space.add_argument("--overrides", default=None, help="YAML file of range overrides (layout of spaces/ranges.yaml)")
    space.add_argument("--preset", default=None, metavar="NAME",
                   help="a release preset (trainables/presets.py) as the fixed base of every trial: the space's "
                        "sampled settings, --max-epochs/--patience/--seed and --set override it; its backbone is "
                        "the default of --backbones")
    space.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config values held fixed in every trial, e.g. hidden_size=128 ral.k=6")
    data.add_argument("--data", default="small", help="synthetic preset (tiny, small, ci, ...), a dataset folder, "
                   "or the s3:// URI of an uploaded dataset (search/dataset.py upload)")
    search.add_argument("--trials", type=int, default=6, help="number of trials")
    search.add_argument("--max-epochs", type=int, default=2, help="epochs of a trial that is never stopped early")
    search.add_argument("--patience", type=int, default=10, help="early stopping on val SumR within a trial")
    search.add_argument("--time-budget", type=float, default=None, help="stop starting trials after this many seconds")
    search.add_argument("--scheduler", default="asha", choices=SCHEDULERS,
                        help="stops unpromising trials early (search/schedulers.py); none runs every trial to the end")
    search.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    search.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep 1/this of the trials per rung")
    search.add_argument("--sampler", default="random",
                   help="random (default: the best measured with ASHA, docs/benchmarks.md), tpe, "
                        "or cmaes (CMA-ES on the continuous settings)")
    resource_options(resources)  # --concurrency, --cpus-per-trial, --gpus-per-trial, --max-failures
    storage.add_argument("--storage", default="prvr-results",
                   help="where results and checkpoints go: a local folder or s3://bucket/prefix")
    storage.add_argument("--s3-endpoint", default=None,
                   help="an S3-compatible endpoint (http://host:port) instead of AWS, for s3:// storage and data")
    search.add_argument("--name", default=None, help="search name (default: <space>-<date>-<time>)")
    search.add_argument("--resume", action="store_true", help="continue the interrupted search --name in --storage")
    storage.add_argument(TRUST_FLAG, action="store_true",
                   help="with --resume: load a Tune state that the search's MLflow parent run does not record "
                        "(unpickling it runs any code planted in it); only for a storage only trusted people write")
    cluster_options(cluster)  # --ray-address
    storage.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///<working folder>/mlflow.db); http://host:port for a "
                        "server")
    storage.add_argument("--optuna-storage", default=None, metavar="URL",
                         help="Optuna storage of the search's study, for optuna-dashboard: an RDB URL, a journal file "
                         "or none (default: sqlite:///.../optuna.db beside a local MLflow store, else in a local "
                         "--storage)")
    storage.add_argument("--experiment", default="prvr", help="MLflow experiment of the search's runs")
    search.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial's training")
    search.add_argument("--confirm-top", type=int, default=CONFIRM_TOP,
                   help="configs the confirmation stage retrains with more seeds (0: no confirmation stage; the "
                   "best single run is then the search's pick)")
    search.add_argument("--confirm-seeds", type=int, default=CONFIRM_SEEDS,
                   help="training seeds each confirmed config runs with besides the search's (--seed + 1, ...)")
    data.add_argument(ALLOW_FLAG, action="store_true",
                   help="accept a val split that shares queries or videos with test (a paper's protocol; the MLflow "
                   "parent run is tagged prvr.val_test_overlap)")
    space.add_argument("--validate-samples", type=int, default=200, help="configs sampled to validate the space")
    return p


def _check_args(args: argparse.Namespace) -> None:
    checks = [("--trials", args.trials >= 1), ("--max-epochs", args.max_epochs >= 1),
              ("--patience", args.patience >= 0), ("--grace-epochs", args.grace_epochs >= 1),
              ("--reduction-factor", args.reduction_factor > 1), ("--concurrency", args.concurrency >= 1),
              ("--cpus-per-trial", args.cpus_per_trial > 0), ("--gpus-per-trial", args.gpus_per_trial >= 0),
              ("--max-failures", args.max_failures >= 0), ("--validate-samples", args.validate_samples >= 1),
              ("--confirm-top", args.confirm_top >= 0), ("--confirm-seeds", args.confirm_seeds >= 1),
              ("--time-budget", args.time_budget is None or args.time_budget > 0)]
    for flag, ok in checks:
        if not ok:
            raise InputError(f"{flag} is out of range: {getattr(args, flag[2:].replace('-', '_'))}")
    if args.scheduler == "hyperband":
        ray_version.require_verified_ray("--scheduler hyperband", "use asha")
    if args.scheduler == "hyperband" and args.reduction_factor != int(args.reduction_factor):
        raise InputError(f"--reduction-factor must be an integer with --scheduler hyperband, got "
                         f"{args.reduction_factor:g}")
    if args.resume and args.name is None:
        raise InputError("--resume needs the --name of the search to continue")
    if args.trust_storage and not args.resume:
        raise InputError(f"{TRUST_FLAG} applies to --resume only")
    if args.name is not None:
        check_name(args.name)
    if args.sampler not in SAMPLERS:
        raise InputError(f"unknown --sampler {args.sampler!r} (available: {', '.join(SAMPLERS)})")
    if not 0 <= args.seed <= MAX_SEED - args.confirm_seeds:
        raise InputError(f"--seed is out of range: {args.seed} (0 to {MAX_SEED - args.confirm_seeds})")


#: options a resumed search takes from its stored state (``Tuner.restore`` restores the Tune config, the
#: searcher and the scheduler), not from the command line: given again, they must equal the stored ones
RESUME_FIXED = ("space", "backbones", "overrides", "preset", "set", "trials", "max_epochs", "patience",
                "time_budget", "scheduler", "grace_epochs", "reduction_factor", "sampler", "concurrency", "seed")


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the options actually written on the command line (not defaults)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def recorded_parent(args: argparse.Namespace, tracking_uri: str) -> Any:
    """The MLflow parent run of search ``args.name`` (None: none, or no tracking store yet). Reads only."""
    from mlflow.tracking import MlflowClient

    from tracking.mlflow_runs import local_store, parent_runs

    store = local_store(tracking_uri)
    if store is not None and not store.exists():
        return None
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    runs = [] if experiment is None else parent_runs(client, experiment.experiment_id, args.name)
    return runs[0] if runs else None


def check_resume_options(args: argparse.Namespace, given: AbstractSet[str], parent: Any) -> None:
    """With ``--resume``: refuse an option of ``RESUME_FIXED`` given with a value other than the search's
    (as its MLflow ``parent`` run recorded it), which Tune would silently ignore."""
    if parent is None:
        return
    from tracking.mlflow_runs import param_value

    recorded = parent.data.params
    for key in RESUME_FIXED:
        value = getattr(args, key)  # compared as logged (param_value), or as a run logged before that (str)
        if key in given and recorded.get(key) not in ({None} if value is None else {param_value(value), str(value)}):
            flag = "--" + key.replace("_", "-")
            shown = " ".join(value) if isinstance(value, list) else value
            raise InputError(f"{flag} {shown} differs from search {args.name}'s {recorded.get(key, 'default')}: a "
                             f"resumed search keeps the {flag} it started with; leave it out, or start a new --name")


def check_resumable_state(args: argparse.Namespace, storage: Any, parent: Any) -> None:
    """With ``--resume``: refuse a Tune state in ``storage`` (the search's, its confirmation stage's) that the
    ``parent`` run does not record (search/trusted_state.py), unless ``--trust-storage``. Loads nothing."""
    from search.trusted_state import check_state
    from tracking.search_results import CONFIRMATION

    if args.trust_storage:
        print(f"warning: {TRUST_FLAG}: the Tune state in {storage.uri} is loaded unchecked", file=sys.stderr)
        return
    tags = None if parent is None else parent.data.tags
    for stage in (None, CONFIRMATION):
        check_state(storage if stage is None else storage.child(stage), tags, stage, args.name)


#: config keys that an option of run.py owns (the scheduler's horizon, the confirmation's seeds read it):
#: ``--set`` refuses them rather than override the option or be overridden
OWNED_BY_OPTIONS = {"epochs": "--max-epochs", "patience": "--patience", "seed": "--seed"}


def held_fixed(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set`` values, each checked to take effect: a key an option owns is refused, and
    ``backbone=B`` is ``--backbones B`` (refused beside a different ``--backbones``)."""
    from trainables.training.config import parse_assignments

    values = parse_assignments(args.set)
    for key, flag in OWNED_BY_OPTIONS.items():
        if key in values:
            raise InputError(f"--set {key}={values[key]}: give it as {flag} (which the scheduler and the "
                             "confirmation stage read too)")
    if "backbone" in values:
        backbone = values["backbone"]
        if args.backbones is not None and args.backbones != [backbone]:
            raise InputError(f"--set backbone={backbone} contradicts --backbones {' '.join(args.backbones)}: "
                             "give one of them")
        args.backbones = [str(backbone)]
    return values


def check_switches_held(space: Any, fixed: dict[str, Any]) -> None:
    """Refuses ``--set P=false`` for a plugin the space always switches on (it would be switched on anyway)."""
    for plugin in space.always_on:
        if plugin in fixed and fixed[plugin] is not True:
            raise InputError(f"--set {plugin}={fixed[plugin]}: space {space.name} always switches plugin {plugin} "
                             f"on; use --space base for {plugin} off, or --space full to search it on and off")


def sampled_keys(space: Any) -> set[str]:
    """The flat keys ``space`` may sample: its training and backbone entries, the entries of its plugins
    (always on or toggled) and the toggled plugins' switches."""
    keys = {e.name for e in space.groups["training"].entries} | {e.name for e in space.groups["backbone"].entries}
    for plugin in (*space.always_on, *space.toggled):
        keys |= {f"{plugin}.{e.name}" for e in space.groups[plugin].entries}
    return keys | set(space.toggled) | {"backbone"}


def build_preset_space(args: argparse.Namespace, fixed: dict[str, Any]) -> Any:
    """The space of ``--space``; with ``--preset`` its fixed values are the preset's values that the space
    does not sample, under ``fixed`` (the budget flags and ``--set``, which win). Precedence, lowest first:
    preset < sampled settings < --max-epochs/--patience/--seed < --set."""
    from spaces import build_space

    backbones = args.backbones
    values: dict[str, Any] = {}
    if args.preset is not None:
        from trainables.presets import get_preset

        values = dict(get_preset(args.preset).values)
        backbones = backbones or [values["backbone"]]
    space = build_space(args.space, backbones=backbones, overrides=args.overrides, fixed=fixed)
    if values:
        sampled = sampled_keys(space) - set(fixed)
        space.fixed = {**{k: v for k, v in values.items() if k not in sampled}, **fixed}
    return space


def search(args: argparse.Namespace, given: AbstractSet[str] = frozenset()) -> int:
    target = ray_target(args)  # --local, --ray-address, RAY_ADDRESS or this node's cluster: before ray is imported
    args.ray_address = target.address
    if args.ray_address is None:  # read when ray is imported: a local Ray stays on 127.0.0.1
        os.environ.update(LOCAL_RAY_ENV)
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search import confirmation, study_storage, tuning
    from search.driver import driver_session, prepare
    from search.results import best_trials_table, ranked, rows_of
    from search.schedulers import make_scheduler
    from search.searcher import PruneAwareOptunaSearch, make_sampler
    from tracking.champion import RULE, selection, selection_table
    from tracking.mlflow_runs import (
        INTERRUPTED_TAG,
        default_tracking_uri,
        end_interrupted_children,
        finish_parent,
        set_trials_view,
        ui_lines,
    )
    from tracking.search_results import CONFIRMATION, load_search
    from trainables.models.base import Dims
    from trainables.trial_report import METRIC, MODE, TIME_ATTR

    _check_args(args)
    resources = tuning.ray_resources(args.ray_address, min(args.concurrency, args.trials), args.cpus_per_trial,
                                     args.gpus_per_trial)
    name = args.name or f"{args.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    fixed: dict[str, Any] = {"epochs": args.max_epochs, "patience": args.patience, "seed": args.seed,
                             **held_fixed(args)}
    space = build_preset_space(args, fixed)
    check_switches_held(space, fixed)
    inputs = prepare(name, data=args.data, storage=args.storage, resume=args.resume, s3_endpoint=args.s3_endpoint,
                     allow_val_test_overlap=args.allow_val_test_overlap,
                     ray_address=args.ray_address)
    storage, manifest = inputs.storage, inputs.manifest
    tracking_uri = args.tracking_uri or default_tracking_uri()
    if args.resume:
        parent = recorded_parent(args, tracking_uri)
        check_resume_options(args, given, parent)
        check_resumable_state(args, storage, parent)
    args.optuna_storage, optuna_storage = study_storage.prepare(args.optuna_storage, name, tracking_uri, storage,
                                                                parent if args.resume else None, args.resume)
    start = time.perf_counter()
    built = space.validate(Dims(manifest.video_dim, manifest.query_dim), count=args.validate_samples)
    print(f"space {space.name} over {', '.join(space.backbones)}: {args.validate_samples} sampled configs valid, "
          f"{built} distinct models built ({time.perf_counter() - start:.1f}s)", flush=True)
    with driver_session(inputs, kind=space.name, ray_address=args.ray_address, resources=resources,
                        tracking_uri=tracking_uri, experiment=args.experiment, params=vars(args), tags={},
                        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                        max_failures=args.max_failures, resume=args.resume, trust_storage=args.trust_storage,
                        ray_found=target.found, live_report=True) as session:
        tracking = session.tracking
        tracking.client().log_dict(tracking.parent_run_id, {g: dataclasses.asdict(group) for g, group in
                                                            space.groups.items()}, "space.json")
        set_trials_view(tracking, sorted(sampled_keys(space)))
        searcher = PruneAwareOptunaSearch(space=space, metric=METRIC, mode=MODE, sampler=make_sampler(args.sampler,
                                                                                                      args.seed),
                                          study_name=name, storage=optuna_storage)
        scheduler = make_scheduler(args.scheduler, metric=METRIC, mode=MODE, time_attr=TIME_ATTR,
                                   max_epochs=args.max_epochs, grace_epochs=args.grace_epochs,
                                   reduction_factor=args.reduction_factor, searcher=searcher)
        results = session.fit(
            tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, args.concurrency), scheduler=scheduler,
                            num_samples=args.trials, time_budget_s=args.time_budget,
                            trial_dirname_creator=tuning.trial_dirname, reuse_actors=tuning.REUSE_ACTORS),
            resume=args.resume)
        grids = [results]
        if not (session.interrupted or _interrupted(results)) and (args.confirm_top > 0
                                                                    or session.can_resume(CONFIRMATION)):
            confirmed = confirmation.run(session, load_search(args.storage, name, inputs.settings),
                                         args.confirm_top, args.confirm_seeds, args.concurrency)
            grids += [confirmed] if confirmed is not None else []
    rows = rows_of(results)
    table = best_trials_table(rows)
    print(f"\nbest trials of search {name} (space {space.name}, by best val SumR of the fused score):")
    print(table)
    interrupted = session.interrupted or any(_interrupted(grid) for grid in grids)
    if not interrupted:
        session.end_trial_runs(*grids)
    try:  # what the confirmation's statistics and the report read; neither fails the search
        stored = load_search(args.storage, name, inputs.settings)
    except Exception as exc:
        stored = None
        print(f"warning: search {name} could not be read back from {storage.uri}: "
              f"{(str(exc) or type(exc).__name__).splitlines()[0]}", file=sys.stderr)
    chosen = selection(stored) if stored is not None and len(grids) > 1 and not interrupted else None
    if chosen is not None:
        print(f"\nconfirmed configs of search {name}, by mean best val SumR over training seeds "
              f"(the champion: {RULE}):")
        print(selection_table(chosen))
        confirmation.log_selection(tracking, chosen)
    print(f"\nresults and checkpoints: {storage.uri}")
    top = ranked(rows)
    best = None if not top else {"trial_id": top[0].trial_id, "config": top[0].config,
                                 "metrics": top[0].metrics}  # finish_parent keeps its best_val_* and test_*
    try:  # the report (figures + HTML page) as artifacts report/ of the parent run; it never fails the search
        from tracking.report import report_location, report_to_run

        if stored is None:
            raise InputError("its results could not be read")
        report_to_run(stored, tracking.uri, tracking.parent_run_id)
        print(f"report (figures and report.html, artifacts report/ of the search's MLflow parent run): "
              f"{report_location(tracking.uri, tracking.parent_run_id)}")
    except Exception as exc:
        print(f"warning: no report for search {name}: {(str(exc) or type(exc).__name__).splitlines()[0]}",
              file=sys.stderr)
    if session.interrupted:  # Ctrl-C: the parent and the trials Tune stopped say so (KILLED, tag interrupted)
        end_interrupted_children(tracking)
        tracking.client().set_tag(tracking.parent_run_id, INTERRUPTED_TAG, "SIGINT")
    finish_parent(tracking, best, table, "KILLED" if interrupted else "FINISHED" if top else "FAILED")
    print(ui_lines(tracking, args.experiment))
    print(study_storage.dashboard_line(args.optuna_storage, name))
    if interrupted:
        root = storage.uri.rstrip("/").rsplit("/", 1)[0]
        print(f"interrupted: continue with  python search/run.py --storage {root} --name {name} --resume "
              f"(and the same options)", file=sys.stderr)
        return EXIT_INTERRUPTED
    ran = [r for r in rows if not r.failed]
    if not ran and rows:
        print("error: every trial failed", file=sys.stderr)
        return 1
    if not ranked(rows):  # nothing to pick from: an exit code of 0 would claim a search that did not happen
        budget = f" within --time-budget {args.time_budget:g}s" if args.time_budget is not None else ""
        print(f"error: no trial finished an epoch{budget}"
              + ("; raise --time-budget" if budget else ""), file=sys.stderr)
        return 1
    return 0


def _interrupted(results: Any) -> bool:
    """Whether a Tune run ended before all its trials did (Ctrl-C, a lost driver's time budget)."""
    return bool(results.num_terminated + results.num_errors < len(results))


def main(argv: list[str] | None = None) -> int:
    return search(_parser().parse_args(argv), given_options(_parser(), argv))


def entry() -> int:
    """The console script ``prvr-search``: ``main`` as ``python search/run.py`` runs it (one-line errors)."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(run_main(main))
