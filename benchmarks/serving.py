"""Serving a corpus index: build time, size, latency and agreement of two-stage retrieval vs exhaustive scoring.

    OMP_NUM_THREADS=1 python benchmarks/serving.py                          # 4 backbones x 1x, 10x, 100x
    OMP_NUM_THREADS=1 python benchmarks/serving.py --quick                  # smoke run, tiny sizes
    OMP_NUM_THREADS=1 python benchmarks/serving.py --backbones mssl amdnet --scales 1,10 --out serving.json

What is measured (issue 24 point 4), per backbone (``mssl``, ``gmmformer``, ``gmmformer2``, ``amdnet``: each
built from its default config at tvr-like dims 3072/768, random init seeded by ``--seed``, exported with
``write_export`` and loaded back with ``load_folder`` as a server would) and per corpus size:

* **1x** (2,179 videos, the TVR test split's size): random raw features of tvr-like shape (40-100 frames of
  3072 per video, float16, standard normal) prepared by the published protocol (``prepare_split``) and
  encoded by the model into an index by ``build_index`` (the build time is encoding + writing + hashing).
* **10x** (21,790) and **100x** (217,900): synthetic encodings written by ``write_index`` (the build time
  is writing + hashing, not encoding; ``encode_s_estimate`` = 1x encoding time x factor). Replica r of the
  1x encodings has its rows permuted and one random signed permutation of the hidden dimension applied to
  every tensor whose last dim is the hidden size (an orthogonal map: norms, Gram matrices and products
  between a video's own tokens are unchanged, so each replica is a new set of plausible videos for the same
  queries); its stage-1 arrays are ``stage1_arrays(model.retrieval_tokens(encodings), 32,
  model.retrieval_spans())``. Replica 0 is the 1x corpus itself. Every file is written (no hard links).

Queries: random token features (10-20 tokens x 768, standard normal), top 10. Methods, timed in one process
in interleaved rounds (the method order reversed every round, so the shared machine's drift hits all alike):

* ``exhaustive``: ``Retriever.exhaustive`` (the full score of every video, shard by shard from the
  memory-mapped encodings; fewer timed queries, it is slow);
* ``two-stage Flat``: ``Retriever.search`` with the exact stage 1 (``Flat``, 100 candidates);
* ``two-stage <approx>``: ``Retriever.search`` with an approximate stage 1 (``--approx``; default
  ``IVF256,Flat`` with ``nprobe=16`` at 1x and 10x; HNSW32 was measured at ~3,000 vectors/s to build on
  one thread, 4 min for a 10x stage 1 of 697k vectors, and its search needs ``efSearch`` >= 3,200 for the
  3,200 neighbours the retriever asks, which takes most of its speed).

Single queries: ``--queries`` per two-stage method, ``--exhaustive-queries`` (default 20 / scale, at least
3) for exhaustive; latency per call to ``search``/``exhaustive`` (query encoding included), queries/s =
queries / summed latency. Batches: ``--batches`` batches of ``--batch-size`` (64) queries per method
(exhaustive included, 1 batch at 100x); the batch answers give the agreement: the share of queries whose
two-stage top-10 is identical (in order) to the exhaustive top-10, and the recall of the exhaustive top-10.

Memory: per (backbone, scale) phase, after ``gc.collect()`` and ``malloc_trim``, the kernel's peak-RSS
counter is reset (``/proc/self/clear_refs`` = 5) and the phase's **VmHWM** is reported (it counts the
memory-mapped shard pages a phase touched: exhaustive scoring maps every shard), with **peak RssAnon**
(private memory: stage-1 vectors, faiss indexes, tensors) sampled every 20 ms by a thread; tracemalloc is
not used (it does not see torch's or faiss's memory). Threads: torch 1 (``torch.set_num_threads``), faiss 1
(``faiss.omp_set_num_threads``), ``OMP_NUM_THREADS=1``.

100x: the exact stage 1 would hold 10.7 GB of float32 vectors (32 x 384 per video), so 100x runs only the
approximate stage 1, whose faiss index ``Retriever`` trains on a sample and fills shard by shard from the
memory-mapped ``stage1.npy`` files (float16 with the default ``IVF1024,SQfp16``, nprobe 32). It runs only
for ``--backbones-100x`` whose index fits the free disk (``--disk-margin-gb`` kept free); for the
others the disk and memory needs are computed from the 10x index and stated. Scratch indexes are removed
after each backbone unless ``--keep``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one thread, as the rules ask
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/serving.py``
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.process_memory import reset_peak, status_kb, trim_heap  # noqa: E402
from benchmarks.runs import write_json  # noqa: E402
from search.cli import run_main  # noqa: E402
from trainables.data.loader import prepare_split  # noqa: E402
from trainables.data.protocol import Protocol  # noqa: E402
from trainables.data.store import RawSplit  # noqa: E402
from trainables.errors import InputError  # noqa: E402
from trainables.export import Export, LoadedModel, load_folder, pin_dims, write_export  # noqa: E402
from trainables.models.base import Dims, list_backbones  # noqa: E402
from trainables.retrieval.corpus_index import (  # noqa: E402
    DEFAULT_STAGE1_VECTORS,
    STAGE1,
    Chunk,
    CorpusIndex,
    build_index,
    model_identity,
    stage1_arrays,
    write_index,
)
from trainables.retrieval.retriever import Ranking, Retriever, agreement  # noqa: E402
from trainables.training.config import TrainConfig  # noqa: E402

BACKBONES = ("mssl", "gmmformer", "gmmformer2", "amdnet")
DIMS = Dims(video_dim=3072, query_dim=768)  # tvr-like
FRAMES = (40, 100)
TOKENS = (10, 20)
BASE_VIDEOS = 2179
TOP_K = 10
DEFAULT_APPROX = "IVF256,Flat:nprobe=16"
DEFAULT_APPROX_100X = "IVF1024,SQfp16:nprobe=32"
TARGET_MS, TARGET_SCALE, TARGET_BACKBONES = 100.0, 10, ("mssl", "amdnet")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serving.json"
QUICK = {"videos": 48, "frames": (8, 16), "shard_videos": 16, "queries": 10, "batches": 2, "batch_size": 8,
         "approx": "IVF16,Flat:nprobe=4", "approx_100x": "IVF32,SQfp16:nprobe=8"}


# -- memory ---------------------------------------------------------------------------------------
class PeakMemory:
    """One phase's peak RSS (VmHWM after a clear_refs reset) and sampled peak RssAnon, in MB."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak_anon_kb = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_anon_kb = max(self.peak_anon_kb, status_kb("RssAnon"))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        gc.collect()
        trim_heap()
        self.baseline_kb = status_kb("VmRSS")
        self.baseline_anon_kb = status_kb("RssAnon")
        self.method = ("VmHWM after a /proc/self/clear_refs reset (includes mapped shard pages)" if reset_peak()
                       else "ru_maxrss (no reset possible: includes earlier peaks)")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_anon_kb = max(self.peak_anon_kb, status_kb("RssAnon"))
        self.peak_kb = status_kb("VmHWM")

    def report(self) -> dict[str, Any]:
        return {"peak_rss_mb": self.peak_kb / 1024, "peak_anon_mb": self.peak_anon_kb / 1024,
                "baseline_rss_mb": self.baseline_kb / 1024, "baseline_anon_mb": self.baseline_anon_kb / 1024,
                "memory_method": self.method + "; RssAnon sampled every 20 ms"}


# -- data and model -------------------------------------------------------------------------------
def random_raw(num_videos: int, frames: tuple[int, int], seed: int) -> RawSplit:
    """A raw split of random tvr-shaped video features (float16, standard normal) and one dummy query."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(frames[0], frames[1] + 1, num_videos)
    total = int(lengths.sum())
    data = np.empty((total, DIMS.video_dim), dtype=np.float16)
    for first in range(0, total, 8192):
        data[first:first + 8192] = rng.standard_normal((min(8192, total - first), DIMS.video_dim), dtype=np.float32)
    return RawSplit(name="serving", video_ids=[f"v{i:06d}" for i in range(num_videos)], frames=data,
                    frame_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                    query_ids=["q0"], query_text=[""], query_video=np.zeros(1, dtype=np.int64),
                    tokens=rng.standard_normal((TOKENS[0], DIMS.query_dim)).astype(np.float32),
                    token_offsets=np.array([0, TOKENS[0]], dtype=np.int64))


def random_queries(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(TOKENS[0], TOKENS[1] + 1)), DIMS.query_dim), dtype=np.float32)
            for _ in range(count)]


def exported_model(backbone: str, folder: Path, seed: int) -> LoadedModel:
    """``backbone``'s default config at tvr-like dims, random init (seeded), exported and loaded back."""
    config = TrainConfig.from_dict({"backbone": backbone, "seed": seed}).resolved()
    model = config.build_model(DIMS, seed=seed)
    export = Export(pin_dims(config.to_dict(), DIMS), dict(model.state_dict()), Protocol(), {},
                    {"benchmark": "benchmarks/serving.py", "seed": seed})
    return load_folder(write_export(export, folder / f"export-{backbone}"))


def hidden_size(loaded: LoadedModel) -> int:
    return int(loaded.config.backbone_config().hidden_size)


def replica_chunks(base: CorpusIndex, loaded: LoadedModel, factor: int, shard_videos: int,
                   seed: int) -> Iterator[Chunk]:
    """``factor`` replicas of ``base``'s encodings (see the module docstring), ``shard_videos`` per chunk."""
    n = base.num_videos
    encodings = base.encodings(np.arange(n))
    hidden = hidden_size(loaded)
    rng = np.random.default_rng(seed)
    for r in range(factor):
        rows = np.arange(n) if r == 0 else rng.permutation(n)
        dims = torch.from_numpy(np.arange(hidden) if r == 0 else rng.permutation(hidden))
        signs = torch.from_numpy(np.ones(hidden, np.float32) if r == 0
                                 else rng.choice(np.array([-1.0, 1.0], np.float32), hidden))
        for start in range(0, n, shard_videos):
            take = torch.from_numpy(rows[start:start + shard_videos])
            chunk = {}
            for key, value in encodings.items():
                part = value[take]
                chunk[key] = part[..., dims] * signs if part.shape[-1] == hidden else part.clone()
            vectors = stage1_arrays(loaded.model.retrieval_tokens(chunk), DEFAULT_STAGE1_VECTORS,
                                    loaded.model.retrieval_spans())
            yield [f"r{r:03d}_{base.video_ids[i]}" for i in take.tolist()], chunk, vectors


def faiss_bytes(factory: str, vectors: int, dim: int) -> int:
    """Memory of a faiss stage-1 index (computed: codes + ids; centroids and graphs left out but HNSW's)."""
    code = 2 * dim if "SQfp16" in factory else (dim if "SQ8" in factory else 4 * dim)
    if "PQ" in factory:
        code = int(factory.split("PQ")[1].split("x")[0].split(",")[0])
    ids = 8 if factory.startswith("IVF") else 0
    graph = 2 * 32 * 4 if factory.startswith("HNSW") else 0  # HNSW32: ~2M links of 4 bytes per vector
    return vectors * (code + ids + graph)


def parse_approx(text: str) -> tuple[str, str | None]:
    factory, _, params = text.partition(":")
    return factory, params or None


# -- timing ----------------------------------------------------------------------------------------
Method = Callable[[Sequence[np.ndarray], int], list[Ranking]]


def timed(method: Method, queries: Sequence[np.ndarray]) -> tuple[float, list[Ranking]]:
    start = time.perf_counter()
    answer = method(queries, TOP_K)
    return time.perf_counter() - start, answer


def latency(times: list[float], per_call: int) -> dict[str, Any]:
    if not times:
        return {"calls": 0}
    ms = np.asarray(times) * 1000
    return {"calls": len(times), "queries_per_call": per_call, "qps": per_call * len(times) / float(np.sum(times)),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


def measure(methods: dict[str, Method], counts: dict[str, int], batch_counts: dict[str, int], batch_size: int,
            queries: int, seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, list[Ranking]]]:
    """Single-query and batch latencies of every method in interleaved rounds; every method's batch answers."""
    names = list(methods)
    singles = random_queries(max(queries, *counts.values()), seed)
    batch_queries = random_queries(batch_size * max(batch_counts.values()), seed + 1)
    for name in names:  # warm-up: lazy initialisation, first page-ins of the shards
        timed(methods[name], singles[:1])
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds = max(counts.values())
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            share = range(r * counts[name] // rounds, (r + 1) * counts[name] // rounds)
            for i in share:
                times[name].append(timed(methods[name], singles[i:i + 1])[0])
    batch_times: dict[str, list[float]] = {n: [] for n in names}
    answers: dict[str, list[Ranking]] = {n: [] for n in names}
    for b in range(max(batch_counts.values())):
        for name in names if b % 2 == 0 else reversed(names):
            if b < batch_counts[name]:
                elapsed, answer = timed(methods[name], batch_queries[b * batch_size:(b + 1) * batch_size])
                batch_times[name].append(elapsed)
                answers[name].extend(answer)
    stats = {n: {"single": latency(times[n], 1), "batch": latency(batch_times[n], batch_size)} for n in names}
    return stats, answers


# -- one backbone ----------------------------------------------------------------------------------
def run_backbone(backbone: str, args: argparse.Namespace, raw: RawSplit, scratch: Path,
                 result: dict[str, Any]) -> None:
    folder = scratch / backbone
    folder.mkdir(parents=True)
    try:
        torch.manual_seed(args.seed)
        loaded = exported_model(backbone, folder, args.seed)
        identity = model_identity(loaded)
        split = prepare_split(raw, loaded.protocol)
        start = time.perf_counter()
        base_path = build_index(loaded, split, folder / "x1", identity, shard_videos=args.shard_videos)
        encode_s = time.perf_counter() - start
        del split
        base = CorpusIndex.open(base_path)
        print(f"[{backbone}] 1x index of {base.num_videos} videos: {encode_s:.1f} s", flush=True)
        for scale in args.scales:
            if scale == 100 and backbone not in args.backbones_100x:
                result["not_run"].append({"backbone": backbone, "scale": 100, "videos": base.num_videos * 100,
                                          "reason": "not in --backbones-100x",
                                          **needs(base.size_bytes(), base, 100, args)})
                continue
            if scale == 1:
                path, build_s, kind = base_path, encode_s, "build_index: encode + write + sha256"
            else:
                if scale == 100 and not (fits_disk(backbone, base, scale, args, result)
                                         and fits_memory(backbone, base, scale, args, result)):
                    continue
                start = time.perf_counter()
                path = write_index(replica_chunks(base, loaded, scale, args.shard_videos, args.seed + scale),
                                   folder / f"x{scale}", identity, loaded.protocol, DEFAULT_STAGE1_VECTORS)
                build_s, kind = time.perf_counter() - start, "write_index of synthetic encodings: write + sha256"
            run_scale(backbone, scale, loaded, CorpusIndex.open(path), build_s, kind, encode_s * scale, args, result)
            if scale != 1 and not args.keep:
                shutil.rmtree(path)
            write_json(args.out, result)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def fits_disk(backbone: str, base: CorpusIndex, scale: int, args: argparse.Namespace, result: dict[str, Any]) -> bool:
    size = base.size_bytes()
    need = size["total"] * scale
    free = shutil.disk_usage(args.scratch).free
    if need > free - args.disk_margin_gb * 2**30:
        result["not_run"].append({"backbone": backbone, "scale": scale, "videos": base.num_videos * scale,
                                  "reason": f"index needs {need / 2**30:.1f} GiB on disk, {free / 2**30:.1f} GiB free "
                                            f"(keeping {args.disk_margin_gb} GiB)", **needs(size, base, scale, args)})
        return False
    return True


def fits_memory(backbone: str, base: CorpusIndex, scale: int, args: argparse.Namespace,
                result: dict[str, Any]) -> bool:
    """Whether the 100x stage 1 (its approximate faiss index) leaves ``--memory-margin-gb`` of MemAvailable."""
    approx, _ = parse_approx(args.approx_100x)
    need = faiss_bytes(approx, base.num_videos * scale * base.vectors_per_video, hidden_size_of(base))
    with open("/proc/meminfo") as handle:
        available = 1024 * int(next(line for line in handle if line.startswith("MemAvailable:")).split()[1])
    if need > available - args.memory_margin_gb * 2**30:
        result["not_run"].append({"backbone": backbone, "scale": scale, "videos": base.num_videos * scale,
                                  "reason": f"stage 1 {approx} needs {need / 2**30:.1f} GiB, {available / 2**30:.1f} "
                                            f"GiB available (keeping {args.memory_margin_gb} GiB)",
                                  **needs(base.size_bytes(), base, scale, args)})
        return False
    return True


def hidden_size_of(index: CorpusIndex) -> int:
    return int(np.load(index.shards[0].folder / STAGE1, mmap_mode="r", allow_pickle=False).shape[-1])


def needs(size: dict[str, int], base: CorpusIndex, scale: int, args: argparse.Namespace) -> dict[str, Any]:
    """Computed disk and memory of ``base`` scaled ``scale`` times."""
    vectors = base.num_videos * scale * base.vectors_per_video
    stage1 = size["stage1"] * scale
    dim = hidden_size_of(base)
    approx, _ = parse_approx(args.approx_100x)
    return {"disk_total_gib": size["total"] * scale / 2**30, "disk_stage1_gib": stage1 / 2**30,
            "retriever_flat_gib": stage1 / 2**30,
            f"retriever_{approx}_gib": faiss_bytes(approx, vectors, dim) / 2**30,
            "note": "the exact stage 1 holds one float32 copy of the stage-1 vectors; an approximate one only its "
                    "faiss index (filled shard by shard from the memory maps)"}


def run_scale(backbone: str, scale: int, loaded: LoadedModel, index: CorpusIndex, build_s: float, kind: str,
              encode_estimate: float, args: argparse.Namespace, result: dict[str, Any]) -> None:
    size = index.size_bytes()
    lean = scale == 100
    approx, params = parse_approx(args.approx_100x if lean else args.approx)
    dim = hidden_size(loaded)
    vectors = index.num_videos * index.vectors_per_video
    entry: dict[str, Any] = {"backbone": backbone, "scale": scale, "videos": index.num_videos, "build_s": build_s,
                             "build": kind, "encode_s_estimate": encode_estimate,
                             "disk_total_bytes": size["total"], "disk_stage1_bytes": size["stage1"]}
    print(f"[{backbone} {scale}x] {index.num_videos} videos, {size['total'] / 2**30:.2f} GiB "
          f"(stage 1 {size['stage1'] / 2**30:.2f}), built in {build_s:.1f} s", flush=True)
    with PeakMemory() as memory:
        retrievers: dict[str, tuple[Retriever, str, str | None, float]] = {}
        stage1_options = [(approx, params)] if lean else [("Flat", None), (approx, params)]
        for factory, search_params in stage1_options:
            start = time.perf_counter()
            retriever = Retriever(loaded, index, stage1=factory, search_params=search_params)
            retrievers[f"two-stage {factory}" + (f" {search_params}" if search_params else "")] = (
                retriever, factory, search_params, time.perf_counter() - start)
        reference = next(iter(retrievers.values()))[0]
        methods: dict[str, Method] = {"exhaustive": reference.exhaustive}
        methods.update({name: r[0].search for name, r in retrievers.items()})
        ex_single = max(3, args.exhaustive_queries // scale) if args.exhaustive_queries else 0
        counts = {n: (ex_single if n == "exhaustive" else args.queries) for n in methods}
        batch_counts = {n: (args.exhaustive_batches if scale != 100 else 1) if n == "exhaustive" else args.batches
                        for n in methods}
        stats, answers = measure(methods, counts, batch_counts, args.batch_size, args.queries, args.seed + 7)
    entry.update(memory.report())
    result["indexes"].append(entry)
    for name, (retriever, *_rest) in retrievers.items():
        if args.breakdown_queries:
            breakdown(backbone, scale, name, retriever, args, result)
    approx_name = next(n for n in retrievers if retrievers[n][1] == approx)
    sweep_nprobe(backbone, scale, retrievers[approx_name][0], answers["exhaustive"], args, result)
    for name in methods:
        row: dict[str, Any] = {"backbone": backbone, "scale": scale, "videos": index.num_videos, "method": name,
                               **stats[name]}
        if name in retrievers:
            retriever, factory, search_params, built = retrievers[name]
            row.update(stage1=factory, search_params=search_params, stage1_build_s=built,
                       stage1_index_bytes=faiss_bytes(factory, vectors, dim), retriever=type(retriever).__name__)
            n = min(len(answers[name]), len(answers["exhaustive"]))
            if n:
                row.update({f"{k}_top{TOP_K}" if k != "queries" else "agreement_queries": v
                            for k, v in agreement(answers[name][:n], answers["exhaustive"][:n], TOP_K).items()})
        result["rows"].append(row)
        print(f"[{backbone} {scale}x] {format_row(row)}", flush=True)
    print(f"[{backbone} {scale}x] peak RSS {entry['peak_rss_mb']:.0f} MB, peak anon {entry['peak_anon_mb']:.0f} MB",
          flush=True)


def breakdown(backbone: str, scale: int, name: str, retriever: Retriever, args: argparse.Namespace,
              result: dict[str, Any]) -> None:
    """Where a single query's time goes: ``Retriever.search``'s steps timed one by one (encode the query,
    stage-1 candidates, gather their encodings from the shards, full score, rank)."""
    steps: dict[str, list[float]] = {"encode": [], "stage1": [], "gather": [], "score": [], "total": []}
    for query in random_queries(args.breakdown_queries, args.seed + 13):
        t0 = time.perf_counter()
        encoded = retriever.encode([query])
        t1 = time.perf_counter()
        candidates = retriever.stage1_candidates(encoded)[0]
        t2 = time.perf_counter()
        union = np.unique(candidates)
        videos = retriever.index.encodings(union)
        t3 = time.perf_counter()
        scores = retriever._full_scores(encoded, videos)
        retriever._ranking(candidates, scores[0, np.searchsorted(union, candidates)], TOP_K)
        t4 = time.perf_counter()
        for step, elapsed in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            steps[step].append(elapsed * 1000)
    row = {"backbone": backbone, "scale": scale, "method": name, "queries": args.breakdown_queries,
           **{f"{k}_p50_ms": float(np.percentile(v, 50)) for k, v in steps.items()},
           **{f"{k}_p99_ms": float(np.percentile(v, 99)) for k, v in steps.items()}}
    result["breakdown"].append(row)
    print(f"[{backbone} {scale}x] {name} steps p50/p99 ms: "
          + ", ".join(f"{k} {row[k + '_p50_ms']:.1f}/{row[k + '_p99_ms']:.1f}" for k in steps), flush=True)


def sweep_nprobe(backbone: str, scale: int, retriever: Retriever, exhaustive: list[Ranking],
                 args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Agreement and single-query latency of an IVF stage 1 at other ``nprobe`` (how it was chosen)."""
    import faiss

    if not hasattr(retriever.stage1, "nprobe") and "IVF" not in type(retriever.stage1).__name__:
        return
    queries = random_queries(len(exhaustive), args.seed + 7 + 1)  # measure()'s batch queries
    singles = random_queries(args.sweep_queries, args.seed + 11)
    before = faiss.extract_index_ivf(retriever.stage1).nprobe
    for nprobe in args.nprobe_sweep:
        faiss.ParameterSpace().set_index_parameters(retriever.stage1, f"nprobe={nprobe}")
        answers = [a for b in range(0, len(queries), args.batch_size)
                   for a in retriever.search(queries[b:b + args.batch_size], TOP_K)]
        times = [timed(retriever.search, singles[i:i + 1])[0] for i in range(len(singles))]
        row = {"backbone": backbone, "scale": scale, "nprobe": nprobe, "single": latency(times, 1),
               **agreement(answers, exhaustive, TOP_K)}
        result["nprobe_sweep"].append(row)
        print(f"[{backbone} {scale}x] nprobe {nprobe}: p50 {row['single']['p50_ms']:.1f} ms, identical "
              f"{row['identical_top_k']:.3f}, recall {row['recall_at_k']:.3f}", flush=True)
    faiss.ParameterSpace().set_index_parameters(retriever.stage1, f"nprobe={before}")


def format_row(r: dict[str, Any]) -> str:
    s, b = r["single"], r["batch"]
    single = f"{s['qps']:.1f} q/s, p50 {s['p50_ms']:.1f} p99 {s['p99_ms']:.1f} ms" if s["calls"] else "-"
    batch = f"{b['qps']:.1f} q/s, p50 {b['p50_ms']:.0f} p99 {b['p99_ms']:.0f} ms" if b["calls"] else "-"
    agree = (f"identical {r['identical_top_k_top10']:.3f} recall {r['recall_at_k_top10']:.3f}"
             if "identical_top_k_top10" in r else "")
    return f"{r['method']}: single {single}; batch {batch}; {agree}"


# -- report ---------------------------------------------------------------------------------------
def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in result["rows"]:
        if r["scale"] == TARGET_SCALE and r["backbone"] in TARGET_BACKBONES and r["method"] != "exhaustive":
            out.append({"backbone": r["backbone"], "method": r["method"], "p99_ms": r["single"]["p99_ms"],
                        "target": f"single-query p99 < {TARGET_MS:.0f} ms at {TARGET_SCALE}x",
                        "passed": r["single"]["p99_ms"] < TARGET_MS})
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| backbone | scale | videos | method | 1 query q/s | p50 ms | p99 ms | batch 64 q/s | batch p50 ms "
             "| batch p99 ms | identical top-10 | recall@10 | stage-1 build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s, b = r["single"], r["batch"]
        cells = [r["backbone"], f"{r['scale']}x", f"{r['videos']:,}", r["method"]]
        cells += ([f"{s['qps']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}"] if s["calls"] else ["-"] * 3)
        cells += ([f"{b['qps']:.1f}", f"{b['p50_ms']:.0f}", f"{b['p99_ms']:.0f}"] if b["calls"] else ["-"] * 3)
        cells += [f"{r['identical_top_k_top10']:.3f}" if "identical_top_k_top10" in r else "-",
                  f"{r['recall_at_k_top10']:.3f}" if "recall_at_k_top10" in r else "-",
                  f"{r['stage1_build_s']:.1f}" if "stage1_build_s" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| backbone | scale | videos | index build s | build | encode s (1x x scale) | disk GiB | "
              "stage 1 GiB | peak RSS MB | peak anon MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["indexes"]:
        lines.append(f"| {e['backbone']} | {e['scale']}x | {e['videos']:,} | {e['build_s']:.1f} | {e['build']} | "
                     f"{e['encode_s_estimate']:.0f} | {e['disk_total_bytes'] / 2**30:.2f} | "
                     f"{e['disk_stage1_bytes'] / 2**30:.2f} | {e['peak_rss_mb']:.0f} | {e['peak_anon_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--scales", default="1,10,100", help="corpus sizes as multiples of --videos")
    parser.add_argument("--backbones-100x", nargs="*", default=["amdnet"],
                        help="backbones run at 100x (default amdnet; the others' needs are computed)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--videos", type=int, default=None, help=f"videos at 1x (default {BASE_VIDEOS})")
    parser.add_argument("--queries", type=int, default=None, help="timed single queries per two-stage method (200)")
    parser.add_argument("--exhaustive-queries", type=int, default=20,
                        help="timed single exhaustive queries at 1x (divided by the scale, at least 3)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per two-stage method (4)")
    parser.add_argument("--exhaustive-batches", type=int, default=2, help="timed exhaustive batches (1 at 100x)")
    parser.add_argument("--batch-size", type=int, default=None, help="queries per batch (64)")
    parser.add_argument("--shard-videos", type=int, default=None, help="videos per index shard (1024)")
    parser.add_argument("--approx", default=None, help=f"approximate stage 1 at 1x, 10x (factory:params, "
                                                       f"default {DEFAULT_APPROX})")
    parser.add_argument("--approx-100x", default=None, help=f"stage 1 at 100x (default {DEFAULT_APPROX_100X})")
    parser.add_argument("--nprobe-sweep", type=lambda t: [int(x) for x in t.split(",") if x], default=[4, 16, 64],
                        help="IVF nprobe values whose agreement and latency are also measured (default 4,16,64)")
    parser.add_argument("--breakdown-queries", type=int, default=50,
                        help="single queries whose two-stage steps are timed one by one (0: none)")
    parser.add_argument("--sweep-queries", type=int, default=20, help="single queries timed per nprobe value")
    parser.add_argument("--scratch", default=None, help="where indexes are written (default a temp folder)")
    parser.add_argument("--disk-margin-gb", type=float, default=8.0, help="free disk a 100x index must leave")
    parser.add_argument("--memory-margin-gb", type=float, default=3.0,
                        help="MemAvailable a 100x stage 1 must leave free")
    parser.add_argument("--keep", action="store_true", help="keep the scratch indexes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    args.videos = args.videos or quick.get("videos", BASE_VIDEOS)
    args.queries = args.queries or quick.get("queries", 200)
    args.batches = args.batches or quick.get("batches", 4)
    args.batch_size = args.batch_size or quick.get("batch_size", 64)
    args.shard_videos = args.shard_videos or quick.get("shard_videos", 1024)
    args.approx = args.approx or quick.get("approx", DEFAULT_APPROX)
    args.approx_100x = args.approx_100x or quick.get("approx_100x", DEFAULT_APPROX_100X)
    frames = quick.get("frames", FRAMES)
    known = list_backbones()
    for name in args.backbones:
        if name not in known:
            raise InputError(f"unknown backbone {name!r}; known: {', '.join(known)}")
    try:
        args.scales = sorted({int(s) for s in args.scales.split(",")})
    except ValueError:
        raise InputError(f"--scales must be whole numbers separated by commas, got {args.scales!r}") from None
    for key in ("videos", "queries", "batches", "batch_size", "shard_videos"):
        if getattr(args, key) < 1:
            raise InputError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not args.scales or min(args.scales) < 1:
        raise InputError("--scales must be >= 1")
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    scratch_given = args.scratch is not None
    scratch_root = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="serving-"))
    scratch_root.mkdir(parents=True, exist_ok=True)
    args.scratch = str(scratch_root)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=scratch_root))
    result: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "frames": frames, "tokens": TOKENS,
        "dims": {"video_dim": DIMS.video_dim, "query_dim": DIMS.query_dim}, "top_k": TOP_K, "candidates": 100,
        "stage1_vectors_per_video": DEFAULT_STAGE1_VECTORS, "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": [], "indexes": [], "not_run": [], "nprobe_sweep": [], "breakdown": []}
    start = time.perf_counter()
    raw = random_raw(args.videos, frames, args.seed)
    try:
        for backbone in args.backbones:
            run_backbone(backbone, args, raw, scratch, result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not scratch_given:
            shutil.rmtree(scratch_root, ignore_errors=True)
    result["targets"] = targets(result)
    result["wall_total_s"] = time.perf_counter() - start
    print(markdown(result))
    for t in result["targets"]:
        print(f"target {t['target']}: {t['backbone']} {t['method']} p99 {t['p99_ms']:.1f} ms "
              f"{'PASS' if t['passed'] else 'FAIL'}")
    for n in result["not_run"]:
        print(f"not run: {json.dumps(n)}")
    out = write_json(args.out, result)
    print(f"wrote {out} ({result['wall_total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
