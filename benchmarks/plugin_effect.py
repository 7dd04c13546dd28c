"""Each plugin's effect on test SumR, per backbone, on a synthetic preset and its high-noise variant.

    python benchmarks/plugin_effect.py --json plugins.json
    python benchmarks/plugin_effect.py --data ci --backbones mssl --variants base ral --seeds 0 --epochs 5

Every (preset, backbone, variant, seed) trains with the backbone's published defaults plus the variant's
plugin switches (each plugin at its released defaults), the same model size, epochs and seed for every
variant, for at most ``--epochs`` epochs with early stopping on val SumR; the best epoch's weights are
evaluated on the test split. Prints, per preset and backbone, the ablation's statistics
(``search/ablation_stats.py``, the tables of ``search/ablate.py``): test R@1..SumR as mean +- std over
seeds, and each variant's SumR difference to ``base`` (same seeds, paired) with a 95% t interval and the
Wilcoxon signed-rank p over seeds, and the paired bootstrap over test queries (interval and p). A variant
a backbone cannot run (e.g. CSA on a clip-only backbone) is listed with the reason. Results (with each
run's per-query test ranks) go to ``--json`` after every run; an interrupted benchmark continues from it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.runs import ResultsFile
from search.ablate import tables
from spaces.ablation import Cell
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
    parser.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples over test queries")
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
                                      "test": result.test["fused"],
                                      "ranks": np.asarray(result.test_ranks["fused"]).tolist()})
                    print(f"{key}: test SumR {result.test['fused']['SumR']:.1f} "
                          f"({time.perf_counter() - start:.0f}s)", flush=True)
    report(results, args)


def report(results: ResultsFile, args: argparse.Namespace) -> str:
    """Print and return, per preset, the ablation tables of the finished runs (variants a backbone rejects
    are listed below them with the reason)."""
    cells = [Cell(name, tuple(VARIANTS[name].items())) for name in ["base", *(v for v in args.variants if v != "base")]]
    text = [f"test split, at most {args.epochs} epochs, {' '.join(args.set)}"]
    for data_name in args.data:
        runs = []
        for key, value in results.runs.items():
            parts = key.split("/")
            if len(parts) != 5 or parts[0] != data_name or int(parts[4]) != args.epochs or "ranks" not in value:
                continue
            _, backbone, variant, seed, _ = parts
            if backbone in args.backbones and variant in VARIANTS and int(seed) in args.seeds:
                runs.append({"backbone": backbone, "cell": variant, "seed": int(seed), **value["test"],
                             "ranks": np.asarray(value["ranks"])})
        backbones = [b for b in args.backbones if any(r["backbone"] == b and r["cell"] == "base" for r in runs)]
        text += [f"\n## {data_name}\n", tables(runs, cells, backbones, args.resamples)[0] if backbones else "(no runs)"]
        text += [f"- {data_name} / {key.split('/')[1]} / {key.split('/')[2]}: n/a: {reason}"
                 for key, reason in results.runs.items()
                 if key.startswith(f"{data_name}/") and key.endswith("/rejected")
                 and key.split("/")[1] in args.backbones]
    output = "\n".join(text)
    print(output)
    return output


if __name__ == "__main__":
    main()
