"""The data path: local read throughput of the feature store, and S3 requests of a first and a second trial.

    python benchmarks/data_path.py                  # ~1.1 GB local dataset, the `small` preset on S3 (~1-2 min)
    python benchmarks/data_path.py --quick          # smoke run (< 1 minute)
    python benchmarks/data_path.py --local-mb 600 --reps 7 --s3-preset tiny --out /tmp/data_path.json

1. Local read throughput. A trial starts by loading its splits from the shards into memory
   (``FeatureStore.load_split``: ids, offsets, then every feature matrix copied into one array). Its rate is
   compared with the plain read of the same shard files (``open(path, "rb").read()``), the ceiling of
   any loader. Both read warm (each is run once before timing, so the files are in the page cache:
   this measures the loader's own overhead, not the disk). The two are alternated over ``--reps``
   repetitions (the order flips each time); medians are reported, and the fraction is the median of the
   per-repetition ratios raw time / loader time. Target: the loader reaches >= 80% of the raw rate.
   The dataset is written by the project's ``DatasetWriter`` at TVR's dims (3072-d float16 frames, 40-100
   per video, 5 queries of 10-20 768-d tokens each) in one ``train`` split; the values are random rows
   (their content does not change read speed, and the synthetic generator would take minutes for 1 GB).

2. S3 requests per trial. A real moto server on 127.0.0.1 (its own process, free port, stopped by its
   PID) behind a small counting HTTP proxy. The synthetic preset is uploaded with ``upload_dataset``,
   then two fresh Python processes (like two Ray workers of one node, one after the other) each fetch
   the dataset into the same node cache and load it, as ``RemoteDataset.load`` does (``fetch_dataset``
   then ``load_data``). The proxy counts each process's requests by method and the bytes of the
   responses. Target: the second trial makes no GET (the node already holds the verified dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from trainables.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.local_servers import ForwardingProxy, start_moto, stop  # noqa: E402
from search.cli import run_main  # noqa: E402
from trainables.data.manifest import read_manifest  # noqa: E402
from trainables.data.store import FeatureStore  # noqa: E402
from trainables.data.writer import DatasetWriter  # noqa: E402

LOCAL_TARGET = 0.80
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "data_path.json"
#: only this benchmark's own moto server and proxy see these (never real credentials)
S3_ENV = {"AWS_ACCESS_KEY_ID": "AKIAPRVRBENCHKEY0000", "AWS_SECRET_ACCESS_KEY": "prvr-bench-secret-0000",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
BUCKET = "prvr-bench"


# -- 1. local read throughput --------------------------------------------------------------------
def write_local_dataset(out: Path, megabytes: float, seed: int = 0) -> Path:
    """A one-split dataset of about ``megabytes`` MB at TVR's dims (float16), in 500-video shards."""
    video_dim, query_dim = 3072, 768
    per_video = 70 * video_dim * 2 + 5 * 15 * query_dim * 2  # mean bytes of one video and its queries
    num_videos = max(10, int(megabytes * 1e6 / per_video))
    rng = np.random.default_rng(seed)
    frame_pool = rng.standard_normal((4096, video_dim), dtype=np.float32).astype(np.float16)
    token_pool = rng.standard_normal((4096, query_dim), dtype=np.float32).astype(np.float16)
    queries = []
    with DatasetWriter(out, name="read-bench", video_dim=video_dim, query_dim=query_dim, dtype="float16",
                       videos_per_shard=500, queries_per_shard=5000) as writer:
        for i in range(num_videos):
            frames, start = int(rng.integers(40, 101)), int(rng.integers(0, 4096 - 100))
            writer.add_video(f"v{i}", frame_pool[start : start + frames])
            for k in range(5):
                tokens, start = int(rng.integers(10, 21)), int(rng.integers(0, 4096 - 20))
                writer.add_query(f"v{i}#enc#{k}", f"v{i}", token_pool[start : start + tokens], text=f"query {k}")
                queries.append(f"v{i}#enc#{k}")
        writer.set_split("train", queries)
    return out


def _read_raw(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total


def _read_loader(folder: Path) -> int:
    store = FeatureStore(folder)
    total = 0
    for split in store.splits:
        raw = store.load_split(split)
        total += raw.frames.nbytes + raw.tokens.nbytes
        del raw
    return total


def local_throughput(folder: Path, reps: int) -> dict[str, Any]:
    """Warm reads of the shard files: plain ``read()`` against ``FeatureStore.load_split``, alternated."""
    manifest = read_manifest(folder)
    paths = [folder / s.file for s in manifest.shards if s.kind in ("videos", "queries", "splits")]
    size = sum(p.stat().st_size for p in paths)
    _read_raw(paths), _read_loader(folder)  # warm: both read from the page cache from here on
    raw_s, loader_s = [], []
    for rep in range(reps):
        order = (("raw", raw_s), ("loader", loader_s))
        for name, times in order if rep % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            _read_raw(paths) if name == "raw" else _read_loader(folder)
            times.append(time.perf_counter() - start)
    fraction = statistics.median(r / w for r, w in zip(raw_s, loader_s))
    return {
        "bytes": size, "files": len(paths), "reps": reps, "warm": True,
        "raw_seconds": raw_s, "loader_seconds": loader_s,
        "raw_mb_s": size / 1e6 / statistics.median(raw_s),
        "loader_mb_s": size / 1e6 / statistics.median(loader_s),
        "fraction": fraction, "target": LOCAL_TARGET, "pass": fraction >= LOCAL_TARGET,
    }


# -- 2. S3 requests of two trials ----------------------------------------------------------------
class CountingProxy(ForwardingProxy):
    """A proxy to ``target`` (host:port) that counts requests by method and the bytes it answers."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.log: list[tuple[str, str, int]] = []  # (method, path, response body bytes)
        self._lock = threading.Lock()
        self.start()

    def observe(self, method: str, path: str, headers: dict[str, str], response_bytes: int) -> None:
        with self._lock:
            self.log.append((method, path, response_bytes))

    def take(self) -> dict[str, Any]:
        """Requests by method, bytes answered, and the GET paths since the last call (then forgets them)."""
        with self._lock:
            log, self.log = self.log, []
        return {"requests": dict(Counter(m for m, _, _ in log)), "bytes": sum(n for _, _, n in log),
                "get_paths": [p for m, p, _ in log if m == "GET"]}


def start_moto_in(workdir: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 in server mode on 127.0.0.1, its log in ``workdir``."""
    with open(workdir / "moto.log", "w") as log:
        return start_moto(S3_ENV, log)


#: one trial's data step in a fresh interpreter: the body of ``RemoteDataset.load`` (fetch, then load)
TRIAL_SCRIPT = """
import json, sys, time
from trainables.data.s3 import StorageSettings
from trainables.data.remote import fetch_dataset
from trainables.training.loop import load_data
uri, endpoint = sys.argv[1:]
start = time.perf_counter()
folder = fetch_dataset(uri, StorageSettings.from_env(endpoint=endpoint))
fetched = time.perf_counter()
data = load_data(folder)
loaded = time.perf_counter()
print(json.dumps({"folder": str(folder), "manifest_sha256": data.manifest_sha256,
                  "fetch_seconds": fetched - start, "load_seconds": loaded - fetched,
                  "train_queries": data.train.num_queries}))
"""


def s3_trials(workdir: Path, preset: str) -> dict[str, Any]:
    """Upload ``preset`` to a moto server, then count the S3 requests of two trials on one node."""
    import boto3

    from trainables.data.remote import upload_dataset
    from trainables.data.s3 import StorageSettings
    from trainables.data.synthetic import ensure_synthetic

    local = ensure_synthetic(preset, workdir / "local")
    manifest = read_manifest(local)
    moto, endpoint = start_moto_in(workdir)
    proxy = CountingProxy(endpoint.removeprefix("http://"))
    try:
        os.environ.update(S3_ENV)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        uri = upload_dataset(local, f"s3://{BUCKET}/data/{preset}", StorageSettings.from_env(endpoint=endpoint))
        env = {**os.environ, **S3_ENV, "OMP_NUM_THREADS": "1", "PRVR_DATA_DIR": str(workdir / "node")}
        env.pop("AWS_ENDPOINT_URL_S3", None)
        trials = []
        for number in (1, 2):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", TRIAL_SCRIPT, uri, proxy.endpoint], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=300)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"trial {number} failed: {done.stderr.strip().splitlines()[-1:]}")
            trials.append({"trial": number, "wall_seconds": wall, **proxy.take(),
                           **json.loads(done.stdout.strip().splitlines()[-1])})
    finally:
        proxy.close()
        stop(moto)
    second_gets = trials[1]["requests"].get("GET", 0)
    return {"preset": preset, "uri": uri, "dataset_bytes": sum(s.bytes for s in manifest.shards),
            "shards": len(manifest.shards), "trials": trials,
            "same_data": trials[0]["manifest_sha256"] == trials[1]["manifest_sha256"] == manifest.sha256(),
            "target": "trial 2 makes no GET", "pass": second_gets == 0}


# -- report --------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    local, s3 = result["local"], result["s3"]
    verdict = {True: "PASS", False: "FAIL"}
    lines = [f"local read, {local['bytes'] / 1e6:.0f} MB in {local['files']} files, warm, median of {local['reps']}",
             f"  {'raw MB/s':>10} {'loader MB/s':>12} {'fraction':>9} {'target':>7} {'result':>6}",
             f"  {local['raw_mb_s']:>10.0f} {local['loader_mb_s']:>12.0f} {local['fraction']:>9.2f} "
             f"{'>=' + format(local['target'], '.2f'):>7} {verdict[local['pass']]:>6}",
             f"S3 ({s3['preset']}, {s3['dataset_bytes'] / 1e6:.1f} MB in {s3['shards']} shards), one node cache",
             f"  {'trial':<6} {'GET':>4} {'HEAD':>5} {'other':>6} {'MB received':>12} {'fetch s':>8} {'load s':>7}"]
    for trial in s3["trials"]:
        requests = trial["requests"]
        other = sum(n for m, n in requests.items() if m not in ("GET", "HEAD"))
        lines.append(f"  {trial['trial']:<6} {requests.get('GET', 0):>4} {requests.get('HEAD', 0):>5} {other:>6} "
                     f"{trial['bytes'] / 1e6:>12.2f} {trial['fetch_seconds']:>8.2f} {trial['load_seconds']:>7.2f}")
    lines.append(f"  target: {s3['target']} -> {verdict[s3['pass']]}; both trials loaded the same data: "
                 f"{s3['same_data']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 120 MB locally, 3 reps, `tiny` on S3")
    parser.add_argument("--local-mb", type=float, default=None, help="size of the local dataset (default 1100)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions of each read (default 5)")
    parser.add_argument("--s3-preset", default=None, help="synthetic preset uploaded to S3 (default small)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    megabytes = args.local_mb if args.local_mb is not None else (120 if args.quick else 1100)
    reps = args.reps if args.reps is not None else (3 if args.quick else 5)
    preset = args.s3_preset or ("tiny" if args.quick else "small")
    if megabytes <= 0 or reps < 1:
        raise InputError("--local-mb must be > 0 and --reps >= 1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prvr-data-path-") as scratch:
        workdir = Path(scratch)
        folder = write_local_dataset(workdir / "local-read", megabytes)
        local = local_throughput(folder, reps)
        shutil.rmtree(folder)
        s3 = s3_trials(workdir, preset)
    result = {"benchmark": "data_path", "quick": args.quick, "local": local, "s3": s3,
              "wall_seconds": time.perf_counter() - started}
    print(table(result))
    print(f"wall time {result['wall_seconds']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
