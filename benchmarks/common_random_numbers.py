"""Common random numbers: how much of a paired difference between two arms is the training seed's noise.

    python benchmarks/common_random_numbers.py                 # ci data, MS-SL + RAL, k 8 vs 6, seeds 0-5
    python benchmarks/common_random_numbers.py --quick         # smoke run (tiny data, seconds)

Two arms A and B differ by one small setting (``--setting``, by default RAL's number of Gaussian
proxies ``ral.k``). Each is trained with the same seeds; per seed the paired difference is B's best val
SumR minus A's, and a third arm A' (A again) gives the identical-arm difference, which must be 0. The
standard deviation of the paired differences over seeds is the noise an ablation of that setting has to
beat. It is measured in two modes, alternating per seed:

* ``shared``: the behaviour before ``trainables/training/random_streams.py``: every module's initial
  weights are drawn from torch's RNG in build order and a plugin's samples come from the backbone's
  negative-sampling generator (so B's other proxy count shifts the backbone's negatives from the second
  batch on). Emulated here exactly: ``build_model`` without a seed after ``torch.manual_seed(seed)``, as
  the Trainer did, and ``LossContext.for_plugin`` returning the shared context.
* ``streams``: the training loop as it is (``random_streams``).

Torch runs on one thread. Writes a table and JSON (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from trainables.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/common_random_numbers.py``
    sys.path.insert(0, str(ROOT))

from benchmarks.runs import parse_args, write_json  # noqa: E402
from search.cli import run_main  # noqa: E402

MODES = ("shared", "streams")
QUICK = {"data": "tiny", "seeds": [0, 1], "epochs": 1, "set": ["hidden_size=16", "n_heads=2", "ral=true"]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/common_random_numbers.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 2 seeds, 1 epoch")
    p.add_argument("--data", default="ci", help="synthetic preset or dataset folder")
    p.add_argument("--backbone", default="mssl")
    p.add_argument("--set", nargs="+", default=["hidden_size=32", "ral=true"], metavar="KEY=VALUE",
                   help="settings of both arms")
    p.add_argument("--setting", default="ral.k", help="the setting the arms differ in")
    p.add_argument("--values", nargs=2, default=["8", "6"], metavar=("A", "B"), help="its value in arm A and arm B")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/common_random_numbers.json"))
    return p


@contextmanager
def shared_streams() -> Iterator[None]:
    """The training loop as before per-purpose streams: initial weights in build order from torch's RNG,
    plugins sampling from the backbone's generator."""
    from trainables.models.base import LossContext
    from trainables.training.config import TrainConfig

    build, for_plugin = TrainConfig.build_model, LossContext.for_plugin
    TrainConfig.build_model = lambda self, dims, seed=None: build(self, dims)  # type: ignore[method-assign]
    LossContext.for_plugin = lambda self, name: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        TrainConfig.build_model, LossContext.for_plugin = build, for_plugin  # type: ignore[method-assign]


def _best_val(config: dict[str, Any], data: Any, mode: str) -> float:
    """Best val SumR (fused score) of one training in ``mode``."""
    from trainables.training.loop import SELECTION_BRANCH, SELECTION_METRIC, train

    with shared_streams() if mode == "shared" else nullcontext():
        return float(train(config, data).val[SELECTION_BRANCH][SELECTION_METRIC])


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from trainables.data.datasets import resolve_dataset
    from trainables.training.config import parse_assignments
    from trainables.training.loop import load_data

    torch.set_num_threads(1)
    data = load_data(resolve_dataset(args.data))
    base = {"backbone": args.backbone, "epochs": args.epochs, "patience": args.epochs, **parse_assignments(args.set)}
    arm_a, arm_b = ({**base, **parse_assignments([f"{args.setting}={v}"])} for v in args.values)
    scores: dict[str, dict[str, list[float]]] = {m: {"A": [], "B": [], "A'": []} for m in MODES}
    start = time.perf_counter()
    for i, seed in enumerate(args.seeds):
        modes = MODES if i % 2 == 0 else MODES[::-1]  # alternate the order: no drift favours one mode
        for mode in modes:
            for arm, config in (("A", arm_a), ("B", arm_b), ("A'", arm_a)):
                scores[mode][arm].append(_best_val({**config, "seed": seed}, data, mode))
            a, b, again = (scores[mode][arm][-1] for arm in ("A", "B", "A'"))
            print(f"seed {seed} {mode:>7}: A {a:.1f}  B {b:.1f}  A' {again:.1f}  ({time.perf_counter() - start:.0f}s)",
                  flush=True)
    summary = {}
    for mode in MODES:
        s = scores[mode]
        diffs = [b - a for a, b in zip(s["A"], s["B"])]
        same = [a2 - a for a, a2 in zip(s["A"], s["A'"])]
        summary[mode] = {"diff_mean": statistics.mean(diffs), "diff_sd": statistics.stdev(diffs),
                         "identical_sd": statistics.stdev(same), "identical_max_abs": max(abs(d) for d in same),
                         "arm_a_sd": statistics.stdev(s["A"]), "arm_b_sd": statistics.stdev(s["B"])}
    return {"args": {k: v for k, v in vars(args).items() if k != "quick"}, "arms": {"A": arm_a, "B": arm_b},
            "scores": scores, "summary": summary, "seconds": time.perf_counter() - start}


def table(result: dict[str, Any]) -> str:
    lines = [f"{'mode':<9}{'B - A mean':>12}{'B - A sd':>10}{'A sd':>8}{'B sd':>8}{'A - A sd':>10}"]
    for mode, s in result["summary"].items():
        lines.append(f"{mode:<9}{s['diff_mean']:>12.2f}{s['diff_sd']:>10.2f}{s['arm_a_sd']:>8.2f}{s['arm_b_sd']:>8.2f}"
                     f"{s['identical_sd']:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_parser(), argv, QUICK)
    if len(args.seeds) < 2 or args.epochs < 1:
        raise InputError("--seeds needs at least 2 seeds and --epochs at least 1")
    result = run_benchmark(args)
    print(f"\nbest val SumR over seeds {args.seeds} ({args.setting} {args.values[0]} vs {args.values[1]}):\n"
          f"{table(result)}")
    print(f"results: {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
