"""Reference scorers on a dataset: the data path and the evaluation harness end to end, no training.

    python search/reference.py                      # the synthetic `small` benchmark, generated once and cached
    python search/reference.py --data tvr-like      # another preset, or a converted dataset's folder

It prepares the dataset (generating a synthetic preset into the cache on first use), loads every
split through the published protocol, and evaluates reference scorers on the full test corpus with
the project's metrics: chance and, for synthetic data, the scorers that know the generator (mean-pooling
the whole video against scoring moments, which is what partial relevance is about): what a trained
model's SumR should be read against.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from search.cli import run_main
from search.dataset import describe
from trainables.data.datasets import resolve_dataset
from trainables.data.loader import load_split
from trainables.data.manifest import read_manifest
from trainables.data.store import FeatureStore
from trainables.data.synthetic import REFERENCE_SCORERS, load_latents, reference_scores
from trainables.evaluation.metrics import RECALL_KS, chance_recall, retrieval_metrics

COLUMNS = [f"R@{k}" for k in RECALL_KS] + ["SumR", "MedR"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search/reference.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="small",
                        help="a synthetic preset (tiny, small, ci, tvr-like) or a dataset folder (default: small)")
    parser.add_argument("--split", default="test", help="split to evaluate on (default: test)")
    parser.add_argument("--verify", action="store_true", help="check every shard's sha256 first")
    return parser


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of metrics, one row per scorer."""
    width = max(len(name) for name in rows) + 2
    lines = [f"{'scorer':<{width}}" + "".join(f"{c:>9}" for c in COLUMNS)]
    for name, metrics in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{metrics[c]:>9.2f}" for c in COLUMNS))
    return "\n".join(lines)


def reference_rows(location: Path, split: str) -> dict[str, dict[str, float]]:
    """Chance and (for synthetic data) the generator-aware reference scorers on ``split``."""
    raw = FeatureStore(location).load_split(split)
    n = raw.num_videos
    chance = {f"R@{k}": chance_recall(k, n) for k in RECALL_KS}
    chance.update(SumR=sum(chance.values()), MedR=(n + 1) / 2)
    rows = {"chance (expected)": chance}
    if read_manifest(location).source.get("layout") == "synthetic":
        latents = load_latents(location.parent)
        for kind in REFERENCE_SCORERS:
            rows[f"{kind} (knows the generator)"] = retrieval_metrics(
                reference_scores(raw, latents, kind), raw.query_video)
    return rows


def load_summary(location: Path, split: str) -> str:
    """Load and prepare one split (freed on return) and say what it holds and how long it took."""
    start = time.perf_counter()
    prepared = load_split(location, split)
    frames = np.diff(prepared.frame_offsets)
    return (f"{split}: {prepared.num_videos} videos x {prepared.clips.shape[1]} clips, "
            f"{frames.min()}-{frames.max()} frames, {prepared.num_queries} queries "
            f"in {time.perf_counter() - start:.2f}s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    location = resolve_dataset(args.data)
    if args.verify:
        FeatureStore(location).verify()
    print(describe(location))
    for split in FeatureStore(location).splits:
        print(f"  loaded {load_summary(location, split)}")
    print(f"\nreference scorers on the full {args.split} corpus (ties count against the scorer):")
    print(format_table(reference_rows(location, args.split)))
    print(f"\ndata: {location.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
