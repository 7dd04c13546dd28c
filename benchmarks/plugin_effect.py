"""Each plugin's effect on test SumR, per backbone, on a synthetic preset and its high-noise variant.

    python benchmarks/plugin_effect.py --json plugins.json
    python benchmarks/plugin_effect.py --data ci --backbones mssl --variants base ral --seeds 0 --epochs 5

Every (preset, backbone, variant, seed) trains with the backbone's published defaults plus the variant's
plugin switches (each plugin at its released defaults), the same model size, epochs and seed for every
variant, for at most ``--epochs`` epochs with early stopping on val SumR; the best epoch's weights are
evaluated on the test split. Prints, per preset and backbone, test R@1 and SumR (mean +- std over seeds)
and the paired difference to ``base`` (mean +- std of the per-seed differences). A variant a backbone
cannot run (e.g. CSA on a clip-only backbone) is listed with the reason. Results go to ``--json`` after
every run; an interrupted benchmark continues from it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.runs import ResultsFile, mean_std
from trainables.data.datasets import resolve_dataset
from trainables.training.config import TrainConfig, parse_assignments
from trainables.training.loop import load_data, train

#: what each variant switches on (settings at the plugins' released defaults)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "ral": {"ral": True},
    "ral-msra": {"ral": True, "ral.csa": False},
    "msc": {"msc": True},
    "moment": {"moment": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["ci", "ci-hard"])
    parser.add_argument("--backbones", nargs="+", default=["mssl", "gmmformer", "gmmformer2", "amdnet"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--set", nargs="*", default=["hidden_size=128"], metavar="KEY=VALUE",
                        help="config values shared by every run (default: hidden_size=128)")
    parser.add_argument("--json", default=None, help="results file, continued if it exists")
    args = parser.parse_args()
    shared = parse_assignments(args.set)
    results = ResultsFile(args.json)
    for data_name in args.data:
        data = load_data(resolve_dataset(data_name).parent)
        for backbone in args.backbones:
            for variant in args.variants:
                config = {"backbone": backbone, "epochs": args.epochs, "patience": 10, **shared,
                          **VARIANTS[variant]}
                try:
                    TrainConfig.from_dict(config)
                except ValueError as exc:
                    results.runs.setdefault(f"{data_name}/{backbone}/{variant}/rejected", str(exc))
                    continue
                for seed in args.seeds:
                    key = f"{data_name}/{backbone}/{variant}/{seed}/{args.epochs}"
                    if key in results:
                        continue
                    start = time.perf_counter()
                    result = train({**config, "seed": seed}, data)
                    results.add(key, {"best_epoch": result.best_epoch, "seconds": time.perf_counter() - start,
                                      "test": result.test["fused"]})
                    print(f"{key}: test SumR {result.test['fused']['SumR']:.1f} "
                          f"({time.perf_counter() - start:.0f}s)", flush=True)
    report(results, args)


def report(results: ResultsFile, args: argparse.Namespace) -> None:
    print(f"\ntest split, mean +- std over seeds {args.seeds}, at most {args.epochs} epochs, {' '.join(args.set)}")
    for data_name in args.data:
        for backbone in args.backbones:
            print(f"\n{data_name} / {backbone}")
            print(f"{'variant':<10}{'R@1':>14}{'SumR':>14}{'dSumR vs base':>16}")
            base = [results.runs.get(f"{data_name}/{backbone}/base/{s}/{args.epochs}") for s in args.seeds]
            for variant in args.variants:
                rejected = results.runs.get(f"{data_name}/{backbone}/{variant}/rejected")
                if rejected:
                    print(f"{variant:<10}  n/a: {rejected}")
                    continue
                runs = [results.runs.get(f"{data_name}/{backbone}/{variant}/{s}/{args.epochs}") for s in args.seeds]
                if any(r is None for r in runs):
                    continue
                sumr = [r["test"]["SumR"] for r in runs]
                delta = ""
                if variant != "base" and all(b is not None for b in base):
                    delta = mean_std(np.array(sumr) - np.array([b["test"]["SumR"] for b in base]))
                print(f"{variant:<10}{mean_std([r['test']['R@1'] for r in runs]):>14}{mean_std(sumr):>14}{delta:>16}")


if __name__ == "__main__":
    main()
