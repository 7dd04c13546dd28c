"""What the platform adds to one trial: wall time of a one-trial search against the bare training function,
and how soon a trial after the first on a node starts its first epoch.

    python benchmarks/overhead.py                  # ~1-minute trials, 3 repetitions each (~12 minutes)
    python benchmarks/overhead.py --quick          # ~5-second trials, a smoke run (about 1.5 minutes)
    python benchmarks/overhead.py --reps 5 --out /tmp/overhead.json

Why: a search is only worth running through Ray Tune, MLflow and per-epoch checkpoints if they cost little
next to the training itself. Targets: <= 5% extra wall time for a trial of about a minute, and a trial after
the first on a node starts its first epoch within 3 s (its dataset already on the node).

What is measured, in one process (the MLflow store's creation is reported, not counted):

* **bare**: ``trainables.training.loop.train(config, data)`` in this process, torch on 1 thread (as a trial
  with 1 CPU), the data loaded once beforehand (a search loads it once too), this process warmed up by a
  first call; and **bare, new process**: the same in a new Python process, data loaded untimed, paying
  ``train()``'s own first calls (``torch._dynamo`` on the first optimiser step) as a user's script does.
* **one-trial search**: the same config through the project's path, each in a new private local Ray
  session as ``search/run.py`` opens it, timed from the moment Ray is up (Ray's start and stop are
  reported, not counted): ``search_storage``, the data loaded from disk as ``search/run.py`` loads it once
  Ray is up (the load's own time is reported, not counted, since the bare runs use data loaded beforehand;
  a worker started ahead imports meanwhile, as it does in ``search/run.py``), ``start_parent`` (SQLite
  store in a temp folder),
  ``search.tuning.trainable`` + ``search.tuning.fit`` with ``FixedConfigs([config])`` (so a checkpoint
  per epoch and the driver's MLflow child run, metrics and test ranks), then the child runs closed and the
  parent ended. It includes the trial worker's start (a new process importing torch, ``torch._dynamo`` and
  Ray Tune), shipping the data through the object store, and Tune's teardown. Twice: with a trial worker
  started ahead (``warm``, the session's default: the search waits for its imports where it has nothing
  else to do) and without (``cold``).
* bare, the two searches (in alternating order) and bare in a new process alternate, so the shared
  machine's load hits all alike; medians are reported, and the overhead is ``median(search) /
  median(bare) - 1``. The epochs' own times vary by a few percent between runs, about the target, so the
  table also gives the **fixed cost per trial** over the bare median: the search's time before its first
  epoch and after its last (launch, worker start; teardown; storage and runs), which per-epoch noise does
  not touch. Every search pays at least that (plus a checkpoint and report per epoch).
* **start delay**: a search of 2-3 trials (same config, seeds 0..n-1, fewer epochs) at concurrency 1. For
  each trial after the first: from Tune launching it (a callback's ``on_trial_start``, driver clock) to the
  start of its first epoch, estimated (the trial is not instrumented) as the MLflow timestamp of its epoch-1
  metrics (the driver's clock when it received them) minus that epoch's duration, taken as the interval between its
  epoch-1 and epoch-2 timestamps. The first epoch also builds the model and warms up, so it is a little
  longer than the second: the estimate errs towards a longer delay (the JSON has the bare runs' first and
  later epoch times to size that bias). Tune calls ``on_trial_start`` once the trial's actor is up (its
  worker process started and imported the trainable), so the table and the JSON also give each delay
  from the previous trial's end (``since_previous_end_s``), which includes that: without actor reuse a
  new worker's 3-5 s of imports come before the launch, and only this figure shows them. When the target is missed,
  the same search runs again with
  ``TuneConfig(reuse_actors=True)`` (``--reuse-actors`` to force or skip it).

The timings come from a Tune callback passed to ``search.tuning.fit`` next to the search's own status lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.errors import InputError

os.environ.setdefault("OMP_NUM_THREADS", "1")

from search.cli import run_main  # noqa: E402
from search.ray_session import LOCAL_RAY_ENV  # noqa: E402

os.environ.update(LOCAL_RAY_ENV)  # read when ray is imported: the local Ray stays on 127.0.0.1
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: at most this much extra wall time for a one-trial search of a ~1-minute trial
OVERHEAD_TARGET = 0.05
#: a trial after the first on a node starts its first epoch within this many seconds of its launch
START_DELAY_TARGET_S = 3.0
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "overhead.json"
EXPERIMENT = "overhead"

#: (preset, hidden size, epochs of the timed trial, epochs of the start-delay trials, repetitions, delay trials)
SIZES = {"default": ("small", 64, 20, 3, 3, 3), "quick": ("ci", 32, 5, 2, 2, 2)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/overhead.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~5 s trials, 2 repetitions, 2 start-delay trials")
    p.add_argument("--preset", default=None, help="synthetic preset (default: small; ci with --quick)")
    p.add_argument("--hidden-size", type=int, default=None, help="MS-SL hidden size (default: 64; 32 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the timed trial (default: 20; 5 with --quick)")
    p.add_argument("--delay-epochs", type=int, default=None, help="epochs of each start-delay trial (>= 2)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of bare and search each (default: 3)")
    p.add_argument("--delay-trials", type=int, default=None, help="trials of the start-delay search (>= 2)")
    p.add_argument("--reuse-actors", choices=("auto", "always", "never"), default="auto",
                   help="also run the start-delay search with reuse_actors=True: when its target is missed (auto)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file of the results")
    return p


@dataclass
class Settings:
    """What one benchmark run measures."""

    preset: str
    hidden_size: int
    epochs: int
    delay_epochs: int
    reps: int
    delay_trials: int
    reuse_actors: str = "auto"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        preset, hidden, epochs, delay_epochs, reps, delay_trials = SIZES["quick" if args.quick else "default"]
        settings = cls(args.preset or preset, args.hidden_size or hidden, args.epochs or epochs,
                       args.delay_epochs or delay_epochs, args.reps or reps, args.delay_trials or delay_trials,
                       args.reuse_actors)
        for flag, value, low in (("--hidden-size", settings.hidden_size, 2), ("--epochs", settings.epochs, 1),
                                 ("--delay-epochs", settings.delay_epochs, 2), ("--reps", settings.reps, 1),
                                 ("--delay-trials", settings.delay_trials, 2)):
            if value < low:
                raise InputError(f"{flag} must be >= {low}, got {value}")
        return settings

    def config(self) -> dict[str, Any]:
        """The trial config: MS-SL, small hidden size, no early stop (every run trains every epoch)."""
        return {"backbone": "mssl", "hidden_size": self.hidden_size, "n_heads": 2, "epochs": self.epochs,
                "patience": self.epochs, "seed": 0, "device": "cpu"}


@dataclass
class Timeline:
    """Driver-clock times (``time.time()``) of each trial's launch, results and end, from the callback."""

    start: dict[str, float] = field(default_factory=dict)
    results: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    complete: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def timing_callback(timeline: Timeline) -> Any:
    """A Tune callback that records each trial's launch, results and end in ``timeline`` (driver clock)."""
    from ray.tune import Callback

    class TrialTimes(Callback):
        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            timeline.start.setdefault(trial.trial_id, time.time())
            if trial.trial_id not in timeline.order:
                timeline.order.append(trial.trial_id)

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                            **info: Any) -> None:
            timeline.results.setdefault(trial.trial_id, []).append((time.time(), int(result.get("epoch", 0))))

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            timeline.complete[trial.trial_id] = time.time()

    return TrialTimes()


def run_bare(config: dict[str, Any], data: Any) -> dict[str, Any]:
    """``train(config, data)`` on 1 torch thread; wall time and the time at which each epoch ended."""
    import torch

    from trainables.training.loop import train

    torch.set_num_threads(1)
    marks: list[float] = []
    start = time.perf_counter()
    result = train(config, data, on_epoch=lambda report: marks.append(time.perf_counter()))
    wall = time.perf_counter() - start
    return {"wall_s": wall, "epoch_end_s": [m - start for m in marks], "test_sumr": result.test["fused"]["SumR"]}


def run_search(configs: list[dict[str, Any]], data: Any, name: str, root: Path, tracking_uri: str,
               reuse_actors: bool = False) -> dict[str, Any]:
    """One search of ``configs`` at concurrency 1 through ``search.tuning``; its wall time (storage and parent
    run to the runs closed), ``fit``'s own, the callback's timeline and the tracking handle. ``data`` may be a
    loader, called where ``search/run.py`` loads the data (after its storage, before its parent run); the
    load's own time (``load_s``) is left out of the wall time, as the bare runs use data loaded beforehand."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search import tuning
    from search.results import final_statuses
    from search.searcher import FixedConfigs
    from tracking.mlflow_runs import close_children, code_version, start_parent
    from tracking.storage import search_storage

    timeline = Timeline()
    start = time.perf_counter()
    storage = search_storage(str(root), name, resume=False)
    load_start = time.perf_counter()
    data = data() if callable(data) else data
    load_s = time.perf_counter() - load_start
    tracking = start_parent(tracking_uri, EXPERIMENT, name, "fixed", resume=False,
                            params={"configs": json.dumps(configs), "reuse_actors": reuse_actors},
                            tags={"data": data.location, "storage": storage.uri,
                                  "data_manifest_sha256": data.manifest_sha256,
                                  **code_version(Path(__file__).resolve().parents[1])})
    submitted = time.time()
    fit_start = time.perf_counter()
    results = tuning.fit(
        tuning.trainable(data, 1.0, 0.0),
        tune.TuneConfig(search_alg=ConcurrencyLimiter(FixedConfigs(configs), 1), num_samples=len(configs),
                        trial_dirname_creator=tuning.trial_dirname, reuse_actors=reuse_actors),
        name, storage, tracking, max_failures=2, callbacks=[timing_callback(timeline)])
    fit_s = time.perf_counter() - fit_start
    returned = time.time()
    statuses = final_statuses(results)
    finished = sum(status == "FINISHED" for status in statuses.values())
    close_children(tracking, statuses)
    tracking.client().set_terminated(tracking.parent_run_id, "FINISHED" if finished == len(configs) else "FAILED")
    wall = time.perf_counter() - start - load_s
    if finished != len(configs):
        raise RuntimeError(f"search {name}: {len(configs) - finished} of {len(configs)} trials did not finish")
    return {"wall_s": wall, "fit_s": fit_s, "load_s": load_s, "submitted": submitted, "returned": returned,
            "timeline": timeline, "tracking": tracking}


def search_breakdown(run: dict[str, Any]) -> dict[str, float]:
    """Where a one-trial search's time went (driver clock): before the trial launched (its actor started:
    a worker process importing the trainable), from launch to its first epoch (estimated as for the start
    delay), its epochs' median interval (training plus checkpoint, MLflow log and report), the trial from
    launch to its end, after it (Tune's teardown), and outside ``fit`` (storage,
    parent run, closing the runs); ``fixed_s`` sums all but the epochs."""
    timeline: Timeline = run["timeline"]
    trial = timeline.order[0]
    delay = start_delays(run)[0]
    parts = {"outside_fit_s": run["wall_s"] - run["fit_s"],
             "to_launch_s": timeline.start[trial] - run["submitted"],
             "launch_to_first_epoch_s": delay["start_delay_s"], "epoch_s": delay["median_epoch_s"],
             "trial_s": timeline.complete[trial] - timeline.start[trial],
             "after_trial_s": run["returned"] - timeline.complete[trial]}
    parts["fixed_s"] = (parts["outside_fit_s"] + parts["to_launch_s"] + parts["launch_to_first_epoch_s"]
                        + parts["after_trial_s"])
    return parts


def start_delays(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Each trial's delay from launch to its first epoch's (estimated) start; see the module docstring."""
    from tracking.mlflow_runs import children
    from trainables.trial_report import METRIC

    timeline: Timeline = run["timeline"]
    tracking = run["tracking"]
    client = tracking.client()
    runs = {r.data.tags.get("prvr.trial_id"): r.info.run_id for r in children(tracking)}
    out = []
    for index, trial in enumerate(timeline.order):
        history = client.get_metric_history(runs[trial], METRIC)
        stamps = {m.step: m.timestamp / 1000 for m in history}  # the time each epoch's metrics were logged
        if 1 not in stamps or 2 not in stamps:
            raise RuntimeError(f"trial {trial}: no MLflow metrics of epochs 1 and 2 (the start delay needs both)")
        epoch_s = stamps[2] - stamps[1]
        first_epoch_start = stamps[1] - epoch_s
        steps = sorted(stamps)
        out.append({"trial": index + 1, "trial_id": trial,
                    "launch_to_first_report_s": stamps[1] - timeline.start[trial],
                    "epoch_s": epoch_s, "start_delay_s": first_epoch_start - timeline.start[trial],
                    "median_epoch_s": _median([stamps[b] - stamps[a] for a, b in zip(steps, steps[1:])]),
                    # from the previous trial's end (driver clock): includes the new actor's start, which
                    # happens before on_trial_start
                    "since_previous_end_s": None if index == 0 else
                    first_epoch_start - timeline.complete[timeline.order[index - 1]],
                    "first_trial": index == 0})
    return out


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_bare_fresh(settings: Settings) -> dict[str, Any]:
    """``run_bare`` in a new Python process (``--bare-child``): the data loaded untimed, then ``train()``
    timed as in ``run_bare``, paying its own first-call costs (``torch._dynamo`` on the first optimiser
    step), as a user's own training script does."""
    import subprocess

    command = [sys.executable, __file__, "--bare-child", json.dumps({"preset": settings.preset,
                                                                      "config": settings.config()})]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ,
                                                                                     "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"bare run in a new process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _bare_child(spec: str) -> int:
    from trainables.data.synthetic import ensure_synthetic
    from trainables.training.loop import load_data

    request = json.loads(spec)
    data = load_data(ensure_synthetic(request["preset"]))
    print(json.dumps(run_bare(request["config"], data)))
    return 0


def session_search(configs: list[dict[str, Any]], data: Any, name: str, root: Path, tracking_uri: str,
                   warm_workers: int, reuse_actors: bool = False) -> dict[str, Any]:
    """``run_search`` in a new local Ray session as ``search/run.py`` opens it (``warm_workers`` trial
    workers started ahead), timed from the moment Ray is up: Ray's own startup and shutdown are not
    counted (``ray_startup_s``); a started-ahead worker's warm-up is, wherever the search waits for it."""
    from search import tuning
    from search.ray_session import ray_session

    start = time.perf_counter()
    with ray_session(None, **{**tuning.ray_resources(None, 1, 1.0, 0.0), "warm_workers": warm_workers}):
        startup = time.perf_counter() - start
        run = run_search(configs, data, name, root, tracking_uri, reuse_actors=reuse_actors)
    run["ray_startup_s"] = startup
    return run


#: the one-trial searches: a local session with a trial worker started ahead (``search/run.py``'s default)
#: and one without (each trial starts its own worker)
SEARCH_MODES = {"warm": 1, "cold": 0}


def measure(settings: Settings, workdir: Path) -> dict[str, Any]:
    """The whole benchmark in ``workdir`` (storage and MLflow store); returns what the JSON holds."""
    from trainables.data.synthetic import ensure_synthetic
    from trainables.training.loop import load_data

    config = settings.config()
    location = ensure_synthetic(settings.preset)
    data = load_data(location)

    def load() -> Any:  # what a search's session loads once Ray is up, as search/run.py does
        return load_data(location)

    # warm this process up (lazy imports: torch's optimizer imports torch._dynamo, ~1 s) so every bare run
    # here is a warm one; the bare run in a new process pays them, as each trial's process does
    warm_up = run_bare({**config, "epochs": 1}, data)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    start = time.perf_counter()
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).create_experiment(EXPERIMENT)  # the store's one-time creation
    mlflow_setup_s = time.perf_counter() - start
    bare: list[dict[str, Any]] = []
    bare_fresh: list[dict[str, Any]] = []
    searches: dict[str, list[dict[str, Any]]] = {mode: [] for mode in SEARCH_MODES}
    startups: list[float] = []
    for rep in range(settings.reps):
        bare.append(run_bare(config, data))
        print(f"rep {rep + 1}/{settings.reps}: bare {bare[-1]['wall_s']:.1f}s", flush=True)
        modes = list(SEARCH_MODES) if rep % 2 == 0 else list(reversed(SEARCH_MODES))
        for mode in modes:
            run = session_search([config], load, f"overhead-{mode}-{rep + 1}", workdir / "results", tracking_uri,
                                 SEARCH_MODES[mode])
            startups.append(run["ray_startup_s"])
            searches[mode].append({"wall_s": run["wall_s"], "fit_s": run["fit_s"], "load_s": run["load_s"],
                                   **search_breakdown(run)})
            print(f"rep {rep + 1}/{settings.reps}: one-trial search, {mode} worker {run['wall_s']:.1f}s", flush=True)
        bare_fresh.append(run_bare_fresh(settings))
        print(f"rep {rep + 1}/{settings.reps}: bare in a new process {bare_fresh[-1]['wall_s']:.1f}s", flush=True)
    delay_configs = [{**config, "epochs": settings.delay_epochs, "patience": settings.delay_epochs, "seed": s}
                     for s in range(settings.delay_trials)]
    delays = {"reuse_actors=False": start_delays(
        session_search(delay_configs, load, "start-delay", workdir / "results", tracking_uri, 1))}
    missed = max(d["start_delay_s"] for d in delays["reuse_actors=False"][1:]) > START_DELAY_TARGET_S
    if settings.reuse_actors == "always" or (settings.reuse_actors == "auto" and missed):
        delays["reuse_actors=True"] = start_delays(
            session_search(delay_configs, load, "start-delay-reuse", workdir / "results", tracking_uri, 1,
                           reuse_actors=True))
    bare_median = _median([b["wall_s"] for b in bare])
    fresh_median = _median([b["wall_s"] for b in bare_fresh])
    first_epoch = [b["epoch_end_s"][0] for b in bare]
    later_epoch = [e2 - e1 for b in bare for e1, e2 in zip(b["epoch_end_s"], b["epoch_end_s"][1:])]
    result: dict[str, Any] = {
        "settings": vars(settings), "config": config, "dataset": data.location, "cpu_count": os.cpu_count(),
        "ray_startup_s": _median(startups), "mlflow_store_setup_s": mlflow_setup_s,
        "bare": bare, "bare_fresh": bare_fresh, "search": searches, "bare_median_s": bare_median,
        "bare_fresh_median_s": fresh_median, "overhead_target": OVERHEAD_TARGET,
        "bare_cold_first_epoch_s": warm_up["epoch_end_s"][0], "bare_first_epoch_s": _median(first_epoch),
        "bare_later_epoch_s": _median(later_epoch) if later_epoch else None,
        "start_delays": delays, "start_delay_target_s": START_DELAY_TARGET_S,
        "start_delay_pass": {mode: all(d["start_delay_s"] <= START_DELAY_TARGET_S for d in rows[1:])
                             for mode, rows in delays.items()},
    }
    for mode, runs in searches.items():
        median = _median([s["wall_s"] for s in runs])
        fixed = _median([s["fixed_s"] for s in runs])
        result[mode] = {"search_median_s": median, "search_fit_median_s": _median([s["fit_s"] for s in runs]),
                        "overhead": median / bare_median - 1, "overhead_vs_fresh": median / fresh_median - 1,
                        "fixed_s": fixed, "fixed_overhead": fixed / bare_median}
        for key in ("overhead", "overhead_vs_fresh", "fixed_overhead"):
            result[mode][f"{key}_pass"] = result[mode][key] <= OVERHEAD_TARGET
    return result


def table(result: dict[str, Any]) -> str:
    """The printed table: each figure, its runs, its target and PASS/FAIL."""
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    def median_of(runs: list[dict[str, Any]], key: str) -> str:
        return f"{_median([s[key] for s in runs]):.2f}"

    target = f"<= {100 * OVERHEAD_TARGET:.0f}%"
    rows = [("figure", "median", "runs", "target", "result"),
            ("bare train() [s]", f"{result['bare_median_s']:.1f}",
             " ".join(f"{b['wall_s']:.1f}" for b in result["bare"]), "", ""),
            ("bare train(), new process [s]", f"{result['bare_fresh_median_s']:.1f}",
             " ".join(f"{b['wall_s']:.1f}" for b in result["bare_fresh"]), "", "")]
    for mode, runs in result["search"].items():
        figures = result[mode]
        rows += [(f"one-trial search, {mode} worker [s]", f"{figures['search_median_s']:.1f}",
                  " ".join(f"{s['wall_s']:.1f}" for s in runs), "", ""),
                 ("  overhead vs bare", f"{100 * figures['overhead']:+.1f}%", "", target,
                  verdict(figures["overhead_pass"])),
                 ("  overhead vs bare, new process", f"{100 * figures['overhead_vs_fresh']:+.1f}%", "", target,
                  verdict(figures["overhead_vs_fresh_pass"])),
                 ("  fixed cost / bare", f"{100 * figures['fixed_overhead']:+.1f}%",
                  " ".join(f"{s['fixed_s']:.1f}s" for s in runs), target, verdict(figures["fixed_overhead_pass"])),
                 ("    before launch [s]", median_of(runs, "to_launch_s"), "", "", ""),
                 ("    launch->1st epoch [s]", median_of(runs, "launch_to_first_epoch_s"), "", "", ""),
                 ("    per epoch / bare [s]", median_of(runs, "epoch_s") + " / "
                  + ("-" if result["bare_later_epoch_s"] is None else f"{result['bare_later_epoch_s']:.2f}"), "", "",
                  ""),
                 ("    after trial end [s]", median_of(runs, "after_trial_s"), "", "", ""),
                 ("    outside fit [s]", median_of(runs, "outside_fit_s"), "", "", "")]
    rows += [("Ray startup, each session (excluded) [s]", f"{result['ray_startup_s']:.1f}", "", "", ""),
             ("data load in the session (excluded) [s]",
              f"{_median([s['load_s'] for runs in result['search'].values() for s in runs]):.2f}", "", "", ""),
             ("bare epoch 1 cold / warm / later [s]", f"{result['bare_cold_first_epoch_s']:.2f} / "
              f"{result['bare_first_epoch_s']:.2f} / "
              + ("-" if result["bare_later_epoch_s"] is None else f"{result['bare_later_epoch_s']:.2f}"), "", "", "")]
    for mode, delays in result["start_delays"].items():
        for d in delays[1:]:
            ok = d["start_delay_s"] <= START_DELAY_TARGET_S
            rows.append((f"start delay trial {d['trial']}, {mode} [s]", f"{d['start_delay_s']:.2f}",
                         f"(launch->report {d['launch_to_first_report_s']:.2f}, epoch {d['epoch_s']:.2f}, "
                         f"from the previous trial's end {d['since_previous_end_s']:.2f})",
                         f"<= {START_DELAY_TARGET_S:g} s", verdict(ok)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) if i in (0, 2) else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(r, widths))).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--bare-child"]:
        return _bare_child(sys.argv[2])
    args = _parser().parse_args(argv)
    settings = Settings.from_args(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prvr-overhead-") as workdir:
        result = measure(settings, Path(workdir))
    result["benchmark_wall_s"] = time.perf_counter() - start
    print("\n" + table(result))
    print(f"\nbenchmark wall time {result['benchmark_wall_s']:.0f}s; config {json.dumps(result['config'])} "
          f"on {settings.preset}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
