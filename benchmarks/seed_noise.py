"""Seed noise of the search-efficiency benchmark: how much of random search's best val SumR is its config,
and how much the training seed it was trained with.

    python benchmarks/seed_noise.py                  # searcher seeds 0-4, 48 configs x 3 training seeds (~35 min, 2
    cores)
    python benchmarks/seed_noise.py --seeds 0 4 --out /tmp/noise.json
    python benchmarks/seed_noise.py --quick          # smoke run (tiny data, seconds)

Why: ``benchmarks/search_efficiency.py``'s target is the single best val SumR among random search's trials,
each trained once, with the searcher's seed. If training the same config with another seed moves its val
SumR by about as much as the configs differ, that best value is largely a lucky draw, and a searcher that
trains fewer configs to the end (ASHA) reaches it by luck, not by finding a better config.

For each searcher seed S this takes the configs random search suggests, in its order (Optuna's
RandomSampler(S) over the same space and fixed settings as ``search_efficiency.py``, the same options and
defaults; ``Space.sample`` is checked against the searcher itself in the tests), and trains each with
seed S (exactly the search's own trial) and with ``--extra-seeds`` other seeds (S + 1000 k), every epoch,
no early stopping; ``--workers`` processes train them side by side. Per S it reports:

* the pooled standard deviation of best val SumR across training seeds (config held fixed);
* the standard deviation of the configs' means (the spread the search can exploit), and their ratio;
* random search's best draw (trained with S, the search-efficiency target), its config's mean over the
  other seeds, and the best config's mean; ``excess`` = (best draw - its config's mean over the other
  seeds) / pooled SD.

Measured (``python benchmarks/seed_noise.py``): see docs/benchmarks.md, "Search efficiency".
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from trainables.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/seed_noise.py``
    sys.path.insert(0, str(ROOT))

from benchmarks import search_efficiency  # noqa: E402
from benchmarks.runs import parse_args, write_json  # noqa: E402
from search.cli import run_main  # noqa: E402

SEED_STRIDE = 1000  # extra training seed k of searcher seed S is S + 1000 k
QUICK = {"data": "tiny", "seeds": [0], "trials": 3, "max_epochs": 2, "extra_seeds": 1, "workers": 1,
         "set": ["hidden_size=16", "n_heads=2"]}


def _parser() -> argparse.ArgumentParser:
    efficiency = search_efficiency._parser().parse_args([])  # the search-efficiency defaults
    p = argparse.ArgumentParser(prog="benchmarks/seed_noise.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 seed, 3 configs of 2 epochs, "
                                                        "1 extra seed; options given explicitly still apply")
    p.add_argument("--data", default=efficiency.data,
                   help=f"synthetic preset or dataset folder (default: {efficiency.data})")
    p.add_argument("--space", default=efficiency.space, help=f"search space (default: {efficiency.space})")
    p.add_argument("--backbones", nargs="+", default=efficiency.backbones, help="backbones searched over")
    p.add_argument("--set", nargs="+", default=efficiency.set, metavar="KEY=VALUE",
                   help=f"settings fixed in every trial (default: {' '.join(efficiency.set)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="searcher seeds (default: 0-4)")
    p.add_argument("--trials", type=int, default=efficiency.trials, help="configs per searcher seed")
    p.add_argument("--max-epochs", type=int, default=efficiency.max_epochs, help="epochs of every training")
    p.add_argument("--extra-seeds", type=int, default=2, help="training seeds per config besides the search's own")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="trainings run side by side")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/seed_noise.json"), help="JSON results")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag, ok in [("--trials", args.trials >= 2), ("--max-epochs", args.max_epochs >= 1),
                     ("--extra-seeds", args.extra_seeds >= 1), ("--workers", args.workers >= 1),
                     ("--seeds", len(set(args.seeds)) == len(args.seeds) and min(args.seeds) >= 0)]:
        if not ok:
            raise InputError(f"{flag} is out of range: {getattr(args, flag[2:].replace('-', '_'))}")


# --- analysis (pure) ---------------------------------------------------------------------------------------

def noise_stats(finals: list[list[float]]) -> dict[str, Any]:
    """Statistics of one searcher seed from ``finals[i]`` = best val SumR of config i (in the search's order)
    trained with [the search's own seed, extra seed 1, ...]."""
    values = np.asarray(finals, dtype=float)
    if values.ndim != 2 or values.shape[0] < 2 or values.shape[1] < 2:
        raise ValueError(f"need >= 2 configs x >= 2 training seeds, got shape {values.shape}")
    pooled_sd = float(np.sqrt(values.var(axis=1, ddof=1).mean()))
    means = values.mean(axis=1)
    best = int(values[:, 0].argmax())
    others = float(values[best, 1:].mean())
    return {"configs": int(values.shape[0]), "training_seeds": int(values.shape[1]),
            "pooled_seed_sd": pooled_sd, "config_mean_sd": float(means.std(ddof=1)),
            "ratio": pooled_sd / float(means.std(ddof=1)),
            "best_draw": float(values[best, 0]), "best_draw_trial": best + 1,
            "best_draw_other_seeds_mean": others, "excess_sd": (float(values[best, 0]) - others) / pooled_sd,
            "best_config_mean": float(means.max()), "best_config_trial": int(means.argmax()) + 1}


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Medians over searcher seeds of the figures docs/benchmarks.md quotes."""
    keys = ("pooled_seed_sd", "config_mean_sd", "ratio", "excess_sd")
    out = {f"median_{key}": statistics.median(s[key] for s in per_seed.values()) for key in keys}
    out["median_best_draw_minus_best_config_mean"] = statistics.median(
        s["best_draw"] - s["best_config_mean"] for s in per_seed.values())
    return out


# --- the trainings -----------------------------------------------------------------------------------------

_DATA: Any = None


def _load(location: str) -> None:
    """A worker's set-up: one torch thread, the dataset loaded once."""
    global _DATA
    import torch

    from trainables.data.datasets import resolve_dataset
    from trainables.training.loop import load_data

    torch.set_num_threads(1)
    _DATA = load_data(resolve_dataset(location))


def _train(config: dict[str, Any]) -> list[float]:
    """Best val SumR after each epoch of ``config`` (trained to its last epoch)."""
    from trainables.training.loop import train

    curve: list[float] = []
    train(config, _DATA, on_epoch=lambda report: curve.append(float(report.best_score)))
    return curve


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every (searcher seed, config, training seed) training; the statistics per searcher seed."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _check_args(args)
    jobs = []  # (searcher seed, config index, training seed, config)
    for seed in args.seeds:
        # Space.sample: Optuna's RandomSampler(seed), what random search suggests, in its order
        for index, config in enumerate(search_efficiency.search_space(args, seed).sample(args.trials, seed)):
            for k in range(args.extra_seeds + 1):
                jobs.append((seed, index, seed + SEED_STRIDE * k, {**config, "seed": seed + SEED_STRIDE * k}))
    started = time.perf_counter()
    # spawn: a fresh interpreter per worker, not a fork of this one (which has imported torch)
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_load,
                             initargs=(args.data,)) as pool:
        curves = list(pool.map(_train, [job[3] for job in jobs]))
    seconds = time.perf_counter() - started
    runs: dict[int, list[dict[str, Any]]] = {seed: [] for seed in args.seeds}
    for (seed, index, training_seed, config), curve in zip(jobs, curves):
        runs[seed].append({"trial": index + 1, "training_seed": training_seed, "curve": curve, "config": config})
    per_seed = {}
    for seed, rows in runs.items():
        finals = [[r["curve"][-1] for r in rows if r["trial"] == t] for t in range(1, args.trials + 1)]
        per_seed[seed] = noise_stats(finals)
    return {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "wall_seconds": seconds,
            "runs": runs, "per_seed": per_seed, "summary": summarise(per_seed)}


def report(results: dict[str, Any]) -> str:
    """One row per searcher seed and the medians."""
    settings = results["settings"]
    lines = [f"seed noise: data {settings['data']}, space {settings['space']} over {' '.join(settings['backbones'])}, "
             f"{' '.join(settings['set'])}, random search's first {settings['trials']} configs x "
             f"{settings['extra_seeds'] + 1} training seeds, {settings['max_epochs']} epochs",
             "SD = standard deviation of best val SumR; best draw = random search's best (seed S, the "
             "search-efficiency target)", "",
             f"{'seed':>4}{'seed SD':>9}{'config SD':>11}{'ratio':>7}{'best draw':>11}{'(trial)':>8}"
             f"{'its mean, other seeds':>23}{'excess':>8}{'best config mean':>18}{'(trial)':>8}"]
    for seed, s in results["per_seed"].items():
        lines.append(f"{seed:>4}{s['pooled_seed_sd']:>9.1f}{s['config_mean_sd']:>11.1f}{s['ratio']:>7.2f}"
                     f"{s['best_draw']:>11.1f}{s['best_draw_trial']:>8}{s['best_draw_other_seeds_mean']:>23.1f}"
                     f"{s['excess_sd']:>6.1f}sd{s['best_config_mean']:>18.1f}{s['best_config_trial']:>8}")
    m = results["summary"]
    lines += ["", f"medians: seed SD {m['median_pooled_seed_sd']:.1f}, config-mean SD {m['median_config_mean_sd']:.1f} "
              f"(ratio {m['median_ratio']:.2f}); random's best draw is {m['median_excess_sd']:.1f} seed SDs above its "
              f"config's mean over other seeds and {m['median_best_draw_minus_best_config_mean']:+.1f} above the best "
              f"config's mean", f"wall time {results['wall_seconds']:.0f}s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_parser(), argv, QUICK)
    results = run_benchmark(args)
    print(report(results))
    print(f"results: {write_json(args.out, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
