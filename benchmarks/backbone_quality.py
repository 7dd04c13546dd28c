"""Retrieval quality of every backbone on the synthetic `small` preset, mean +- std over seeds.

    python benchmarks/backbone_quality.py                     # all backbones, seeds 0 1 2, 30 epochs
    python benchmarks/backbone_quality.py --backbones mssl meanpool --seeds 0 --epochs 10

Each backbone trains with its published defaults (lr, margin, dropout, loss weights; batch 128
videos), for at most ``--epochs`` epochs with early stopping on val SumR (patience 10), and the best
epoch's weights are evaluated on the test split. Prints test R@1/R@5/R@10/R@100/SumR per backbone and
per score branch (MS-SL's fused score beside its clip and frame branches), and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.runs import mean_std
from trainables.data.datasets import resolve_dataset
from trainables.evaluation.metrics import RECALL_KS
from trainables.models.base import list_backbones
from trainables.training.config import parse_assignments
from trainables.training.loop import load_data, train

COLUMNS = [f"R@{k}" for k in RECALL_KS] + ["SumR"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="small")
    parser.add_argument("--backbones", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json", default=None, help="results file, written after every run; an existing one "
                        "is continued (runs already in it are skipped)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config values for every run, e.g. checkpoint_branches=true (GMMFormer v2 in less memory)")
    parser.add_argument("--report-only", action="store_true", help="print the table of --json without training")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {}
    if args.json and Path(args.json).is_file():  # continue an interrupted benchmark
        runs = json.loads(Path(args.json).read_text())
    data = None if args.report_only else load_data(resolve_dataset(args.data).parent)
    for name in [] if args.report_only else args.backbones or list_backbones():
        for seed in args.seeds:
            if any(r["seed"] == seed and r["epochs"] == args.epochs for r in runs.get(name, [])):
                continue
            start = time.perf_counter()
            result = train({"backbone": name, "epochs": args.epochs, "patience": 10, "seed": seed,
                            **parse_assignments(args.set)}, data)
            runs.setdefault(name, []).append({"seed": seed, "epochs": args.epochs, "best_epoch": result.best_epoch,
                                              "seconds": time.perf_counter() - start, "test": result.test})
            if args.json:
                Path(args.json).write_text(json.dumps(runs, indent=2))
            print(f"{name} seed {seed}: best epoch {result.best_epoch}, test SumR "
                  f"{result.test['fused']['SumR']:.1f} ({time.perf_counter() - start:.0f}s)", flush=True)
    print(f"\ntest split of {args.data}, mean +- std over seeds {args.seeds}, at most {args.epochs} epochs")
    print(f"{'backbone':<12}{'branch':<8}" + "".join(f"{c:>15}" for c in COLUMNS) + f"{'epochs':>8}{'s/run':>7}")
    for name, results in runs.items():
        results = [r for r in results if r["seed"] in args.seeds and r["epochs"] == args.epochs]
        if not results:
            continue
        for branch in results[0]["test"]:
            cells = [mean_std([r["test"][branch][column] for r in results], width=8) for column in COLUMNS]
            epochs = np.mean([r["best_epoch"] for r in results])
            seconds = np.mean([r["seconds"] for r in results])
            print(f"{name:<12}{branch:<8}" + "".join(f"{c:>15}" for c in cells) + f"{epochs:>8.1f}{seconds:>7.0f}")


if __name__ == "__main__":
    main()
