"""Backbone throughput at TVR dims: training speed, full-corpus evaluation time, memory and FLOP rate.

    python benchmarks/backbones.py                       # every backbone, TVR test size
    python benchmarks/backbones.py --backbones mssl --queries 2000 --json out.json

For each backbone, in its own process (so peak memory is its own): the parameter count; training
throughput on batches of 128 videos with 5 queries each (32 clips, 40-100 frames of 3072-d, 10-20
tokens of 768-d, as the `tvr-like` preset); evaluation of a TVR-size test corpus (2,179 videos,
10,895 queries) with the project's evaluator; the process's peak memory during the evaluation (data
included: the kernel's peak-RSS count is reset just before it); its FLOPs (counted by torch's FlopCounterMode on
samples of the same calls, scaled) and the FLOP rate as a
fraction of a plain float32 ``torch.matmul`` measured in the same process (this machine's practical
limit). Features are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import resource
import time
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from trainables.data.loader import PreparedSplit, collate_train
from trainables.data.protocol import Protocol
from trainables.evaluation.evaluate import evaluate
from trainables.models.base import Dims, LossContext, count_parameters, create_backbone, list_backbones

TVR = Dims(video_dim=3072, query_dim=768)


def random_split(num_videos: int, num_queries: int, dims: Dims, seed: int = 0) -> PreparedSplit:
    """A prepared split of random unit features with tvr-like lengths (float16 to save memory)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(40, 101, num_videos)
    tokens = rng.integers(10, 21, num_queries)

    def unit(rows: int, dim: int, chunk: int = 8192) -> np.ndarray:
        out = np.empty((rows, dim), dtype=np.float16)
        for first in range(0, rows, chunk):  # chunked: no float32 copy of the whole corpus
            x = rng.standard_normal((min(chunk, rows - first), dim), dtype=np.float32)
            out[first : first + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return PreparedSplit(
        name="bench", video_ids=[f"v{i}" for i in range(num_videos)], query_ids=[f"q{i}" for i in range(num_queries)],
        query_text=[""] * num_queries, query_video=rng.integers(0, num_videos, num_queries),
        clips=unit(num_videos * 32, dims.video_dim).reshape(num_videos, 32, dims.video_dim),
        frames=unit(int(frames.sum()), dims.video_dim), frame_offsets=np.concatenate([[0], np.cumsum(frames)]),
        tokens=unit(int(tokens.sum()), dims.query_dim), token_offsets=np.concatenate([[0], np.cumsum(tokens)]),
        protocol=Protocol(),
    )


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The best float32 matmul rate of ``repeats`` (size x size) @ (size x size) products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _reset_peak() -> None:
    """Restart the kernel's peak-RSS count (VmHWM) so the next reading is the peak of what follows."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_gb() -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / 1e9


def train_throughput(model: torch.nn.Module, steps: int) -> tuple[float, float]:
    """(videos/s, queries/s) of forward + backward on batches of 128 videos x 5 queries."""
    split = random_split(128, 640, TVR, seed=1)
    split.query_video = np.repeat(np.arange(128), 5)
    items = [{"video_index": i, "clips": split.clips[i], "frames": split.video_frames(i),
              "query_index": np.arange(5 * i, 5 * i + 5), "tokens": [split.query_tokens(q) for q in range(5 * i,
                                                                                                          5 * i + 5)]}
             for i in range(128)]
    batch = collate_train(items)
    context = LossContext(epoch=0, hard_negatives=False, hard_pool_size=20, generator=torch.Generator().manual_seed(0))
    model.train()

    def step() -> None:
        total = sum(model.training_losses(batch, context).values())
        model.zero_grad(set_to_none=True)
        total.backward()

    step()  # warm-up
    seconds = sum(_timed(step) for _ in range(steps)) / steps
    return 128 / seconds, 640 / seconds


def _current_rss_gb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 1e9


def count_eval_flops(model: torch.nn.Module, split: PreparedSplit, chunk: int = 100, sample: int = 256) -> float:
    """FLOPs of ``evaluate(model, split)``, counted on samples and scaled: video encoding is linear in
    videos, query encoding in queries, scoring in query chunks (each against every video)."""
    from trainables.evaluation.evaluate import encode_videos, score_chunks

    device = torch.device("cpu")
    model.eval()
    # FlopCounterMode's module tracker fails on no-grad views of parameters (GMMFormer v2's expanded
    # consolidation token): count with parameters frozen, which changes no FLOP.
    model.requires_grad_(False)
    part = PreparedSplit(**{**split.__dict__, "clips": split.clips[:sample],
                            "frame_offsets": split.frame_offsets[: sample + 1],
                            "video_ids": split.video_ids[:sample]})
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encode_videos(model, part, device, batch_size=sample)
    per_video = counter.get_total_flops() / sample
    videos = encode_videos(model, split, device, batch_size=256)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        next(iter(score_chunks(model, split, videos, device, chunk)))
    per_chunk = counter.get_total_flops()
    model.requires_grad_(True)
    return per_video * split.num_videos + per_chunk * split.num_queries / chunk


def bench_one(name: str, num_videos: int, num_queries: int, train_steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_backbone(name, TVR)
    row: dict[str, Any] = {"backbone": name, "params_M": count_parameters(model) / 1e6}
    split = random_split(num_videos, num_queries, TVR)
    row["rss_with_data_gb"] = _current_rss_gb()
    before = matmul_gflops()
    _reset_peak()
    seconds = _timed(functools.partial(evaluate, model, split, query_chunk=100))
    row["eval_peak_rss_gb"] = _peak_gb()
    # the machine is shared: the best matmul rate measured before and after the evaluation is the limit
    row["matmul_gflops_per_s"] = max(before, matmul_gflops())
    flops = count_eval_flops(model, split)
    row.update(eval_s=seconds, eval_gflop=flops / 1e9, eval_gflops_per_s=flops / seconds / 1e9,
               eval_fraction_of_matmul=flops / seconds / 1e9 / row["matmul_gflops_per_s"])
    del split
    row["train_videos_per_s"], row["train_queries_per_s"] = train_throughput(model, train_steps)
    return row


def _worker(args: tuple[str, int, int, int], queue: mp.Queue) -> None:
    queue.put(bench_one(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=None, help="default: every registered backbone")
    parser.add_argument("--videos", type=int, default=2179)
    parser.add_argument("--queries", type=int, default=10895)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    names = args.backbones or list_backbones()
    rows = []
    context = mp.get_context("spawn")
    for name in names:
        queue = context.Queue()
        process = context.Process(target=_worker, args=((name, args.videos, args.queries, args.train_steps), queue))
        process.start()
        rows.append(queue.get())
        process.join()
    header = (f"{'backbone':<11}{'params M':>9}{'train vid/s':>12}{'train q/s':>10}{'eval s':>8}{'GFLOP':>8}"
              f"{'GFLOP/s':>9}{'matmul':>8}{'of matmul':>10}{'data GB':>8}{'peak GB':>8}")
    print(f"evaluation corpus: {args.videos} videos x {args.queries} queries (float16 features), "
          f"torch threads {torch.get_num_threads()}")
    print(header)
    for r in rows:
        print(f"{r['backbone']:<11}{r['params_M']:>9.2f}{r['train_videos_per_s']:>12.1f}{r['train_queries_per_s']:>10.1f}"
              f"{r['eval_s']:>8.1f}{r['eval_gflop']:>8.0f}{r['eval_gflops_per_s']:>9.1f}{r['matmul_gflops_per_s']:>8.1f}"
              f"{100 * r['eval_fraction_of_matmul']:>9.0f}%{r['rss_with_data_gb']:>8.2f}{r['eval_peak_rss_gb']:>8.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
