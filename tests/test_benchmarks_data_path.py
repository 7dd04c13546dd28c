"""benchmarks/data_path.py, run small: its JSON has every figure, the figures are sane, and the second
trial on one node makes no GET (the node cache is trusted after one HEAD of the manifest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_data_path_benchmark_small_run(tmp_path):
    out = tmp_path / "data_path.json"
    done = subprocess.run([sys.executable, "benchmarks/data_path.py", "--quick", "--local-mb", "30", "--reps", "2",
                           "--out", str(out)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    local, s3 = result["local"], result["s3"]
    # the verdicts, computed here from the figures: median of raw/loader time ratios >= 0.8; no GET in trial 2
    ratios = sorted(r / w for r, w in zip(local["raw_seconds"], local["loader_seconds"]))
    fraction = (ratios[0] + ratios[1]) / 2  # median of 2
    assert local["fraction"] == pytest.approx(fraction)
    local_verdict = "PASS" if fraction >= 0.8 else "FAIL"
    s3_verdict = "PASS" if s3["trials"][1]["requests"].get("GET", 0) == 0 else "FAIL"
    local_row = next(line for line in done.stdout.splitlines() if f"{fraction:.2f}" in line and ">=0.80" in line)
    assert local_row.split()[-1] == local_verdict, local_row
    assert f"-> {s3_verdict};" in done.stdout
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
