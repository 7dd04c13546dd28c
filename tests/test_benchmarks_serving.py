"""benchmarks/serving.py: its --quick run writes every row, and AMDNet's two-stage top-10 is its exhaustive one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serving.py"


def test_quick_run_writes_rows_and_amdnet_two_stage_is_exact(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--quick", "--backbones", "amdnet", "--scales", "1,10,100",
               "--videos", "24", "--queries", "6", "--exhaustive-queries", "6", "--nprobe-sweep", "4",
               "--sweep-queries", "2", "--scratch", str(tmp_path / "scratch"), "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["omp_num_threads"] == "1" and result["torch_threads"] == 1 and result["faiss_threads"] == 1
    rows = {(r["scale"], r["method"]): r for r in result["rows"]}
    approx, approx_100x = "two-stage IVF16,Flat nprobe=4", "two-stage IVF32,SQfp16 nprobe=8"
    assert sorted(rows) == sorted([(s, m) for s in (1, 10) for m in ("exhaustive", "two-stage Flat", approx)]
                                  + [(100, "exhaustive"), (100, approx_100x)])
    for (scale, method), row in rows.items():
        assert row["videos"] == 24 * scale and row["backbone"] == "amdnet"
        assert row["single"]["calls"] >= 3 and row["single"]["p99_ms"] >= row["single"]["p50_ms"] > 0
        assert row["batch"]["calls"] >= 1 and row["batch"]["qps"] > 0
        if method != "exhaustive":
            assert row["agreement_queries"] == (8 if scale == 100 else 16)  # exhaustive batches of 8: 1 at 100x
            assert 0 <= row["recall_at_k_top10"] <= 1
    # AMDNet's fused score is the max cosine over its 32 clip tokens: exactly its exact stage 1
    for scale in (1, 10):
        assert rows[scale, "two-stage Flat"]["identical_top_k_top10"] == 1.0
    indexes = {e["scale"]: e for e in result["indexes"]}
    assert sorted(indexes) == [1, 10, 100]
    for scale, entry in indexes.items():
        assert 0 < entry["disk_stage1_bytes"] < entry["disk_total_bytes"] and entry["peak_rss_mb"] > 50
        vectors = 24 * scale * 32 * 384 * 4  # float32, 32 vectors of 384 per video, plus an .npy header per shard
        assert vectors < entry["disk_stage1_bytes"] < vectors + 2 * scale * 1024
    assert {t["backbone"] for t in result["targets"]} == {"amdnet"}
    assert not (tmp_path / "scratch").exists() or not any((tmp_path / "scratch").iterdir())
    assert "| amdnet | 10x | 240 | two-stage Flat |" in done.stdout
