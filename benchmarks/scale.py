"""Evaluation time and peak memory as the corpus grows: does full-corpus evaluation scale linearly?

    OMP_NUM_THREADS=1 python benchmarks/scale.py                  # default run, ~3-5 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/scale.py --quick          # smoke run, < 1 min
    OMP_NUM_THREADS=1 python benchmarks/scale.py --backbones mssl --reps 7 --out scale.json

What is measured: ``trainables.evaluation.evaluate.evaluate_ranks`` (what ``evaluate`` runs before its
metrics: every video encoded once, every query encoded and scored against every video in chunks of 100,
each chunk turned into ranks at once) on an untrained backbone built by name (``create_backbone``, hidden
size 64, the evaluator's default video batch of 256), with random unit features of the ``small`` synthetic
preset's shapes generated in memory (speed and memory do not depend on the values). Two sweeps per backbone:

* videos 1x, 2x, 4x at a fixed number of queries: time is video encoding + scoring (both linear in the
  videos) + query encoding (fixed), peak memory is the video encodings + one chunk's scores (linear) +
  the encoder's working set of one video batch (fixed);
* queries 1x, 2x, 4x at a fixed (small) number of videos: time is query encoding + scoring (linear in
  the queries) + video encoding (fixed, hence the small number of videos), and peak memory should not
  grow at all: that is evaluate.py's promise (one chunk of scores at a time, whatever the queries).

Sizes (default): videos 256, 512, 1024 x 512 queries; queries 4000, 8000, 16000 x 16 videos; the largest
points take a few seconds. The videos sweep starts at one whole video batch so that every size runs whole
batches of 256: below that the batch itself grows with the corpus, and so does the per-video cost (GMMFormer
encodes videos ~1.5x slower per video in batches of 256 than of 128 here, its attention maps leaving the
cache), which would measure the cache rather than the evaluator. ``--quick`` (32-128 videos, 1000-4000
queries) uses video batches of 16 for the same reason; it is a smoke run, its exponents are indicative.

Time: per size, the median wall time (and process CPU time, a check less sensitive to a busy machine)
of ``--reps`` evaluations, all sizes of both sweeps and all backbones taking turns in every repetition
(order reversed every other repetition) so the shared machine's drift hits every size alike.

Peak memory: each size in a fresh process (a forkserver child that has only imported torch and the
project) builds its data and model and runs a tiny warm-up evaluation; then, after ``gc.collect()`` and
glibc ``malloc_trim(0)`` (free heap pages back to the OS, so the evaluation cannot reuse them unseen),
the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` = 5, Linux) and the reported figure is
peak RSS (VmHWM) minus RSS at the reset: the memory the evaluation itself adds over the data and model.
Where the reset is impossible the fallback is ``ru_maxrss`` minus RSS before the evaluation, which also
counts earlier peaks (data generation); the JSON names the method. tracemalloc is not used: it does not
see torch's tensor memory, and torch keeps no allocator statistics on CPU.

Exponents: b of y ~ a * n^b by least squares on log-log (n = 1, 2, 4), for the median wall time and for
the peak-memory growth. Targets, with their reasons:

* time, both sweeps: 0.8 <= b <= 1.25. Linear work gives 1; the sizes are chosen so the swept dimension's
  work dominates, but the other dimension's fixed cost still pulls b below 1 (a fixed cost of 20% at 1x
  gives 0.88), hence 0.8; a quadratic step (e.g. an all-pairs pass over videos) taking 25% of the time
  at 1x already gives 1.4 (and 2 once it dominates), while 1.25 leaves room for a shared machine's noise.
* memory, videos sweep: b <= 1.25: at most linear (an all-pairs video matrix would give ~2). No lower
  bound: the per-video encodings (e.g. ~8 KB per video for GMMFormer at hidden 64) can be small next
  to the fixed working set of one video batch, which makes b well below 1 and is good, not bad.
* memory, queries sweep: b <= 0.25: flat as promised (a full queries x videos score matrix would give
  ~1); the margin covers page-granularity noise of a growth of a few MB.
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainables.errors import InputError

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one thread, as the rules ask
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/scale.py``
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.process_memory import reset_peak, status_kb, trim_heap  # noqa: E402
from benchmarks.runs import write_json  # noqa: E402
from search.cli import run_main  # noqa: E402
from trainables.data.loader import PreparedSplit  # noqa: E402
from trainables.data.protocol import Protocol  # noqa: E402
from trainables.evaluation.evaluate import evaluate_ranks  # noqa: E402
from trainables.models.base import Backbone, Dims, create_backbone, list_backbones  # noqa: E402

DIMS = Dims(video_dim=256, query_dim=128)  # the `small` synthetic preset's feature sizes
FRAMES = (32, 96)  # frames per video (min, max), as `small`
TOKENS = (8, 16)  # tokens per query (min, max), as `small`
FACTORS = (1, 2, 4)
TIME_TARGET = (0.8, 1.25)
MEMORY_TARGETS = {"videos": (None, 1.25), "queries": (None, 0.25)}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "scale.json"


@dataclass(frozen=True)
class Sizes:
    """Base sizes of the two sweeps (each scaled by 1, 2, 4)."""

    videos: int  # videos sweep: 1x videos
    fixed_queries: int  # videos sweep: queries at every size
    queries: int  # queries sweep: 1x queries
    fixed_videos: int  # queries sweep: videos at every size

    def points(self) -> list[tuple[str, int, int, int]]:
        """(sweep, factor, videos, queries) of every measured size."""
        return ([("videos", f, self.videos * f, self.fixed_queries) for f in FACTORS]
                + [("queries", f, self.fixed_videos, self.queries * f) for f in FACTORS])


DEFAULT_SIZES = Sizes(videos=256, fixed_queries=512, queries=4000, fixed_videos=16)
QUICK_SIZES = Sizes(videos=32, fixed_queries=128, queries=1000, fixed_videos=8)
QUICK_VIDEO_BATCH = 16  # --quick: 2-8 video batches, as the default run's 1-4 batches of 256


# -- data, model, one evaluation --------------------------------------------------------------------
def random_split(num_videos: int, num_queries: int, seed: int = 0, dims: Dims = DIMS) -> PreparedSplit:
    """A prepared split of random unit float32 features (32 clips, 32-96 frames, 8-16 tokens)."""
    if num_videos < 1 or num_queries < 1:
        raise ValueError(f"a split needs at least one video and one query, got {num_videos} and {num_queries}")
    rng = np.random.default_rng(seed)
    frames = rng.integers(FRAMES[0], FRAMES[1] + 1, num_videos)
    tokens = rng.integers(TOKENS[0], TOKENS[1] + 1, num_queries)

    def unit(rows: int, dim: int, chunk: int = 8192) -> np.ndarray:
        out = np.empty((rows, dim), dtype=np.float32)
        for first in range(0, rows, chunk):  # chunked: no second full-size copy
            x = rng.standard_normal((min(chunk, rows - first), dim), dtype=np.float32)
            out[first : first + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    map_size = Protocol().map_size
    return PreparedSplit(
        name="scale", video_ids=[f"v{i}" for i in range(num_videos)], query_ids=[f"q{i}" for i in range(num_queries)],
        query_text=[""] * num_queries, query_video=rng.integers(0, num_videos, num_queries),
        clips=unit(num_videos * map_size, dims.video_dim).reshape(num_videos, map_size, dims.video_dim),
        frames=unit(int(frames.sum()), dims.video_dim), frame_offsets=np.concatenate([[0], np.cumsum(frames)]),
        tokens=unit(int(tokens.sum()), dims.query_dim), token_offsets=np.concatenate([[0], np.cumsum(tokens)]),
        protocol=Protocol(),
    )


def build_model(name: str, hidden_size: int) -> Backbone:
    """Untrained backbone ``name`` (seeded) in eval mode."""
    torch.manual_seed(0)
    return create_backbone(name, DIMS, hidden_size=hidden_size).eval()


def timed_evaluation(model: Backbone, split: PreparedSplit, video_batch: int | None = None) -> tuple[float, float]:
    """(wall s, process CPU s) of one full-corpus evaluation."""
    wall, cpu = time.perf_counter(), time.process_time()
    ranks = evaluate_ranks(model, split, "cpu", video_batch=video_batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not ranks or any(r.shape != (split.num_queries,) for r in ranks.values()):
        raise RuntimeError("the evaluation returned no rank per query")
    return wall, cpu


# -- memory: one fresh process per size ----------------------------------------------------------
def measure_memory(backbone: str, hidden_size: int, num_videos: int, num_queries: int, seed: int,
                   video_batch: int | None = None) -> dict[str, Any]:
    """Peak memory one evaluation adds over data + model (MB), measured in the calling process (fresh)."""
    model = build_model(backbone, hidden_size)
    split = random_split(num_videos, num_queries, seed)
    # lazy initialisations happen here, not in the measured evaluation
    evaluate_ranks(model, random_split(8, 8, seed + 1), "cpu", video_batch=video_batch)
    gc.collect()
    trim_heap()
    baseline_kb = status_kb("VmRSS")
    if reset_peak():
        method = "VmHWM after /proc/self/clear_refs reset, minus VmRSS at the reset"
        evaluate_ranks(model, split, "cpu", video_batch=video_batch)
        peak_kb = status_kb("VmHWM")
    else:  # ru_maxrss cannot be reset: it also counts earlier peaks (data generation)
        method = "ru_maxrss minus VmRSS before the evaluation (fallback: includes earlier peaks)"
        evaluate_ranks(model, split, "cpu", video_batch=video_batch)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"baseline_mb": baseline_kb / 1024, "peak_mb": peak_kb / 1024,
            "growth_mb": (peak_kb - baseline_kb) / 1024, "memory_method": method}


def _memory_child(args: tuple[Any, ...], queue: Any) -> None:
    try:
        queue.put(("ok", measure_memory(*args)))
    except BaseException as exc:  # reported to the parent, which raises it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def memory_in_fresh_process(context: Any, *args: Any) -> dict[str, Any]:
    """``measure_memory(*args)`` in a new child of the forkserver (imports done, nothing else)."""
    queue = context.SimpleQueue()
    process = context.Process(target=_memory_child, args=(args, queue))
    process.start()
    process.join()
    if queue.empty():
        raise RuntimeError(f"memory measurement {args} died with exit code {process.exitcode}")
    status, value = queue.get()
    if status != "ok":
        raise RuntimeError(f"memory measurement {args} failed: {value}")
    return value


# -- fits -----------------------------------------------------------------------------------------
def fit_exponent(ns: list[float], ys: list[float]) -> float:
    """b of y ~ a * n^b by least squares on log-log; NaN when a y is not positive."""
    if len(ns) < 2 or min(ys) <= 0:
        return math.nan
    return float(np.polyfit(np.log(ns), np.log(ys), 1)[0])


def fit_line(ns: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of y ~ c + k * n by least squares: the fixed part and the cost per unit."""
    slope, intercept = np.polyfit(np.asarray(ns, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def verdict(b: float, target: tuple[float | None, float | None]) -> bool:
    low, high = target
    return math.isfinite(b) and (low is None or b >= low) and (high is None or b <= high)


def target_text(target: tuple[float | None, float | None]) -> str:
    low, high = target
    return f"{low} <= b <= {high}" if low is not None else f"b <= {high}"


# -- the benchmark --------------------------------------------------------------------------------
def run(backbones: list[str], sizes: Sizes, reps: int, hidden_size: int, seed: int = 0,
        video_batch: int | None = None) -> dict[str, Any]:
    """Every size's median times and peak memory, and the fitted exponents with their verdicts."""
    points = sizes.points()
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "trainables.models", "trainables.evaluation.evaluate",
                                    "trainables.data.loader", "search.cli"])
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for name in backbones:  # memory first, while the parent holds no corpus
        for sweep, factor, videos, queries in points:
            memory = memory_in_fresh_process(context, name, hidden_size, videos, queries, seed, video_batch)
            rows[name, sweep, factor] = {"backbone": name, "sweep": sweep, "factor": factor, "videos": videos,
                                         "queries": queries, **memory, "wall_s": [], "cpu_s": []}
    splits = {(v, q): random_split(v, q, seed) for _, _, v, q in points}
    models = {name: build_model(name, hidden_size) for name in backbones}
    for name in backbones:
        timed_evaluation(models[name], random_split(8, 8, seed + 1), video_batch)  # warm-up
    order = [(name, sweep, factor, v, q) for name in backbones for sweep, factor, v, q in points]
    for rep in range(reps):
        for name, sweep, factor, v, q in order if rep % 2 == 0 else reversed(order):
            wall, cpu = timed_evaluation(models[name], splits[v, q], video_batch)
            rows[name, sweep, factor]["wall_s"].append(wall)
            rows[name, sweep, factor]["cpu_s"].append(cpu)
    for row in rows.values():
        row["wall_median_s"] = statistics.median(row["wall_s"])
        row["cpu_median_s"] = statistics.median(row["cpu_s"])
    fits = []
    for name in backbones:
        for sweep in ("videos", "queries"):
            sweep_rows = [rows[name, sweep, f] for f in FACTORS]
            ns = [float(r["factor"]) for r in sweep_rows]
            for metric, key, target in (("time", "wall_median_s", TIME_TARGET),
                                        ("cpu time", "cpu_median_s", None),
                                        ("memory", "growth_mb", MEMORY_TARGETS[sweep])):
                ys = [r[key] for r in sweep_rows]
                b = fit_exponent(ns, ys)
                intercept, slope = fit_line(ns, ys)
                fit = {"backbone": name, "sweep": sweep, "metric": metric, "b": b,
                       "line_intercept": intercept, "line_slope_per_1x": slope}
                if target is not None:
                    fit.update(target=target_text(target), passed=verdict(b, target))
                fits.append(fit)
    return {"sizes": asdict(sizes), "factors": list(FACTORS), "reps": reps, "hidden_size": hidden_size,
            "video_batch": video_batch if video_batch is not None else "evaluator default",
            "dims": {"video_dim": DIMS.video_dim, "query_dim": DIMS.query_dim}, "frames": FRAMES, "tokens": TOKENS,
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "rows": list(rows.values()), "fits": fits,
            "passed": all(f["passed"] for f in fits if "passed" in f)}


def print_report(result: dict[str, Any]) -> None:
    print(f"full-corpus evaluation (evaluate_ranks), hidden size {result['hidden_size']}, dims "
          f"{result['dims']['video_dim']}/{result['dims']['query_dim']}, video batch {result['video_batch']}, "
          f"medians of {result['reps']} reps, torch threads {result['torch_threads']}")
    print("peak MB = peak RSS the evaluation adds over data + model, in a fresh process per size")
    print(f"{'backbone':<11}{'sweep':<9}{'n':>3}{'videos':>8}{'queries':>9}{'wall s':>9}{'cpu s':>8}"
          f"{'peak MB':>9}{'base MB':>9}")
    for r in result["rows"]:
        print(f"{r['backbone']:<11}{r['sweep']:<9}{r['factor']:>2}x{r['videos']:>8}{r['queries']:>9}"
              f"{r['wall_median_s']:>9.3f}{r['cpu_median_s']:>8.3f}{r['growth_mb']:>9.1f}{r['baseline_mb']:>9.0f}")
    print()
    print(f"{'backbone':<11}{'sweep':<9}{'metric':<10}{'b':>6}  {'target':<17}{'result':<7}fixed part (line fit)")
    for f in result["fits"]:
        unit = "MB" if f["metric"] == "memory" else "s"
        result_text = ("PASS" if f["passed"] else "FAIL") if "passed" in f else "(info)"
        print(f"{f['backbone']:<11}{f['sweep']:<9}{f['metric']:<10}{f['b']:>6.2f}  {f.get('target', ''):<17}"
              f"{result_text:<7}{f['line_intercept']:.3g} {unit} + {f['line_slope_per_1x']:.3g} {unit} per 1x")
    print(f"\noverall: {'PASS' if result['passed'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["mssl", "gmmformer"])
    parser.add_argument("--quick", action="store_true", help="small sizes and 3 reps: a smoke run under a minute")
    parser.add_argument("--reps", type=int, default=None, help="timed evaluations per size (default 5, quick 3)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--videos", type=int, default=None, help="videos sweep: videos at 1x")
    parser.add_argument("--fixed-queries", type=int, default=None, help="videos sweep: queries at every size")
    parser.add_argument("--queries", type=int, default=None, help="queries sweep: queries at 1x")
    parser.add_argument("--fixed-videos", type=int, default=None, help="queries sweep: videos at every size")
    parser.add_argument("--video-batch", type=int, default=None,
                        help=f"videos encoded at once (default: the evaluator's, 256; quick {QUICK_VIDEO_BATCH})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    known = list_backbones()
    for name in args.backbones:
        if name not in known:
            raise InputError(f"unknown backbone {name!r}; known: {', '.join(known)}")
    base = QUICK_SIZES if args.quick else DEFAULT_SIZES
    sizes = Sizes(**{k: getattr(args, k) if getattr(args, k) is not None else v for k, v in asdict(base).items()})
    for key, value in asdict(sizes).items():
        if value < 1:
            raise InputError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    reps = args.reps if args.reps is not None else (3 if args.quick else 5)
    if reps < 1:
        raise InputError(f"--reps must be >= 1, got {reps}")
    if args.hidden_size < 4 or args.hidden_size % 4:
        raise InputError(f"--hidden-size must be a positive multiple of 4 (4 heads), got {args.hidden_size}")
    video_batch = args.video_batch if args.video_batch is not None else (QUICK_VIDEO_BATCH if args.quick else None)
    if video_batch is not None and video_batch < 1:
        raise InputError(f"--video-batch must be >= 1, got {video_batch}")
    start = time.perf_counter()
    result = run(args.backbones, sizes, reps, args.hidden_size, args.seed, video_batch)
    result["wall_total_s"] = time.perf_counter() - start
    result["quick"] = args.quick
    print_report(result)
    out = write_json(args.out, result)
    print(f"wrote {out} ({result['wall_total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
