"""benchmarks/data_path.py, run small: its JSON has every figure, the figures are sane, and the second
trial on one node makes no GET (the node cache is trusted after one HEAD of the manifest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_data_path_benchmark_small_run(tmp_path):
    out = tmp_path / "data_path.json"
    done = subprocess.run([sys.executable, "benchmarks/data_path.py", "--quick", "--local-mb", "30", "--reps", "2",
                           "--out", str(out)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PASS" in done.stdout or "FAIL" in done.stdout
    result = json.loads(out.read_text())
    local, s3 = result["local"], result["s3"]
    assert local["warm"] and local["reps"] == 2 and len(local["raw_seconds"]) == len(local["loader_seconds"]) == 2
    assert local["bytes"] > 25e6 and local["raw_mb_s"] > 0 and local["loader_mb_s"] > 0
    assert 0 < local["fraction"] < 5 and local["pass"] == (local["fraction"] >= local["target"] == 0.8)
    first, second = s3["trials"]
    assert first["requests"]["GET"] == s3["shards"] + 1  # every shard and the manifest, once
    assert first["bytes"] >= s3["dataset_bytes"]
    assert second["requests"] == {"HEAD": 1} and second["get_paths"] == [] and s3["pass"] is True
    assert s3["same_data"] and first["folder"] == second["folder"]
    bad = subprocess.run([sys.executable, "benchmarks/data_path.py", "--reps", "0", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
