"""Two-stage vs exhaustive top-k of a trained model on a test split (docs/serving.md's agreement table).

    python benchmarks/serving_agreement.py --model exports/ral-1-3f2a9c1e --data tvr-like
    python benchmarks/serving_agreement.py --train mssl --epochs 3 --data tvr-like --queries 2000

``--train`` trains the backbone's default config on the dataset's train split first (``train``, best val
epoch kept) and exports it into the scratch folder. The test split is indexed (``build_index``) once per
``--stage1-vectors`` value; ``--queries`` test queries drawn at random (``--seed``) are answered by
exhaustive full scoring and by the two-stage retriever for each stage-1 setting; the table gives, per
setting, the share of queries whose top-k is the exhaustive one in the same order, and the recall of the
exhaustive top-k. Torch and faiss run one thread. Results as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/serving_agreement.py``
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

#: (stage 1, search parameters, candidates) measured at the default 32 stage-1 vectors
SETTINGS = [("Flat", None, 25), ("Flat", None, 50), ("Flat", None, 100), ("Flat", None, 200),
            ("HNSW32", "efSearch=128", 100), ("HNSW32,SQfp16", "efSearch=128", 100)]


def train_export(backbone: str, epochs: int, data: str, out: Path) -> Path:
    """Train ``backbone``'s default config for ``epochs`` on ``data`` and export its best epoch to ``out``."""
    from trainables.data.datasets import resolve_dataset
    from trainables.data.manifest import read_manifest
    from trainables.data.protocol import Protocol
    from trainables.export import Export, pin_dims, write_export
    from trainables.models.base import Dims
    from trainables.training.loop import train

    manifest = read_manifest(resolve_dataset(data).parent)
    result = train({"backbone": backbone, "epochs": epochs, "patience": epochs}, resolve_dataset(data).parent)
    print(f"trained {backbone} {epochs} epochs: best val fused SumR {result.val['fused']['SumR']:.1f}", flush=True)
    flat = pin_dims(result.config.to_dict(), Dims(manifest.video_dim, manifest.query_dim))
    return write_export(Export(flat, result.model.state_dict(), Protocol(l2_normalize=manifest.l2_normalize),
                               {"val": result.val, "test": result.test}, {"trained_by": "serving_agreement.py"}), out)


def measure(model: Path, data: str, queries: int, stage1_vectors: list[int], top_k: int, seed: int,
            scratch: Path) -> list[dict[str, Any]]:
    import torch

    from trainables.data.datasets import resolve_dataset
    from trainables.data.loader import load_split
    from trainables.export import load_folder
    from trainables.retrieval.corpus_index import CorpusIndex, build_index, model_identity
    from trainables.retrieval.retriever import Retriever, agreement

    torch.set_num_threads(1)
    loaded = load_folder(model)
    split = load_split(resolve_dataset(data).parent, "test", loaded.protocol)
    pick = np.sort(np.random.default_rng(seed).choice(split.num_queries, min(queries, split.num_queries),
                                                      replace=False))
    tokens = [split.query_tokens(int(i)) for i in pick]
    rows = []
    for groups in stage1_vectors:
        index = CorpusIndex.open(build_index(loaded, split, scratch / f"index-{groups}", model_identity(loaded),
                                             stage1_groups=groups))
        exhaustive = Retriever(loaded, index).exhaustive(tokens, top_k)
        for stage1, params, candidates in SETTINGS if groups == stage1_vectors[0] else SETTINGS[:2]:
            retriever = Retriever(loaded, index, candidates=candidates, stage1=stage1, search_params=params)
            start = time.perf_counter()
            found = retriever.search(tokens, top_k)
            row = {"backbone": loaded.config.backbone, "stage1_vectors": groups, "spans": retriever.spans is not None,
                   "stage1": stage1, "params": params, "candidates": candidates,
                   **agreement(found, exhaustive, top_k), "seconds": time.perf_counter() - start}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", type=Path, help="an export folder")
    what.add_argument("--train", help="a backbone to train (default config) and export first")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="tvr-like", help="dataset folder or synthetic preset")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--stage1-vectors", default="32,8", help="stage-1 vectors per video to index, the first "
                        "with every setting, the others with the exact stage 1 only")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_agreement.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prvr-agreement-") as scratch:
        model = args.model or train_export(args.train, args.epochs, args.data, Path(scratch) / "export")
        rows = measure(model, args.data, args.queries, [int(v) for v in args.stage1_vectors.split(",")],
                       args.top_k, args.seed, Path(scratch))
    print(f"\n| backbone | stage-1 vectors | stage 1 | candidates | identical top-{args.top_k} | recall@{args.top_k} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        stage1 = r["stage1"] + (f" {r['params']}" if r["params"] else "") + (" (spans)" if r["spans"] else "")
        print(f"| {r['backbone']} | {r['stage1_vectors']} | {stage1} | {r['candidates']} | "
              f"{r['identical_top_k']:.4f} | {r['recall_at_k']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
